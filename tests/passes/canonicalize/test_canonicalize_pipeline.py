"""The ``canonicalize`` alias: spec round trip, fail-fast facts, user passes, and the real model."""

from __future__ import annotations

import dataclasses

import pytest

from compiler.context import CompileContext
from compiler.errors import OptionError
from compiler.ir import Model, copy_model
from compiler.pass_base import Fact, Pass, PassResult, register_pass
from compiler.pipeline import Pipeline
from passes.canonicalize import CANONICALIZE
from tests.helpers import FACT_CHECKS, assert_same_outputs, count, digits_feeds, op_types, torch_cnn_model
from tests.tolerances import FP32_REWRITE


@register_pass
@dataclasses.dataclass(frozen=True)
class RenameGraphPass(Pass):
    """A user-defined pass living in a test module: sets the graph name."""

    name = "rename-graph"
    preserves = frozenset(Fact)

    graph_name: str = "renamed"

    def run(self, model: Model, ctx: CompileContext) -> PassResult:
        changed = model.graph.name != self.graph_name
        model.graph.name = self.graph_name
        return PassResult(model, changed, {"renamed": int(changed)}, [])


def test_alias_expands_and_round_trips() -> None:
    pipeline = Pipeline.parse("canonicalize")
    assert [p.name for p in pipeline] == CANONICALIZE
    assert Pipeline.parse(str(pipeline)) == pipeline
    with_options = Pipeline.parse("canonicalize,fold-constants{max_rounds=2},infer-shapes{data_prop=false}")
    assert str(with_options).endswith("fold-constants{max_rounds=2},infer-shapes{data_prop=false}")
    assert Pipeline.parse(str(with_options)) == with_options


def test_missing_fact_fails_fast_naming_the_provider() -> None:
    with pytest.raises(OptionError, match="constants-lifted.*lift-constants"):
        Pipeline.parse("fold-batchnorm").check_facts()


def test_user_pass_runs_in_a_pipeline() -> None:
    model = torch_cnn_model()
    pipeline = Pipeline.parse("canonicalize,rename-graph{graph_name=cnn}")
    assert str(pipeline).endswith("rename-graph{graph_name=cnn}")
    _, records = pipeline.run(model, CompileContext())
    assert model.graph.name == "cnn"
    assert records[-1].name == "rename-graph" and records[-1].stats == {"renamed": 1}


def test_real_cnn_canonicalizes_to_its_core_ops_with_all_facts() -> None:
    model = torch_cnn_model()
    before = copy_model(model)
    _, records = Pipeline.parse("canonicalize").run(model, CompileContext())
    assert op_types(model) == ["Conv", "Relu", "Reshape", "Gemm"]
    assert count(model, "BatchNormalization") == 0
    assert {fact: check(model) for fact, check in FACT_CHECKS.items() if check(model)} == {}
    assert_same_outputs(before, model, digits_feeds(), FP32_REWRITE)
    _, again = Pipeline.parse("canonicalize").run(model, CompileContext())
    assert not any(r.modified for r in again)
    assert any(r.name == "fold-batchnorm" and r.stats["folded"] == 1 for r in records)
