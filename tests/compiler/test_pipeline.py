"""Pipeline spec parsing/round-trip, fact checking, error naming, and user-defined passes."""

from __future__ import annotations

import dataclasses

import onnx_ir as ir
import pytest

from compiler.context import CompileContext
from compiler.errors import OptionError, PassFailedError
from compiler.pass_base import Fact, Pass, PassResult, register_pass
from compiler.pipeline import Pipeline

MODEL_TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2,4] x) => (float[2,4] y) {
   c = Constant <value: tensor = float[1] {2.0}> ()
   t = Mul (x, c)
   y = Identity (t)
}
"""


def _model() -> ir.Model:
    return ir.from_onnx_text(MODEL_TEXT)


# A user-defined pass, as a user would write it in their own module.
@register_pass
@dataclasses.dataclass(frozen=True)
class RenameNodesPass(Pass):
    """Prefix every node name (a toy user pass used to test the plugin path)."""

    name = "test-rename-nodes"
    prefix: str = "user_"
    repeat: int = 1
    provides = frozenset()

    def run(self, model, ctx):
        changed = 0
        for node in model.graph:
            new = self.prefix * self.repeat + (node.name or node.op_type)
            if node.name != new:
                node.name = new
                changed += 1
        return PassResult(model, modified=changed > 0, stats={"renamed": changed})


@register_pass
@dataclasses.dataclass(frozen=True)
class NeedsFoldedPass(Pass):
    """Needs constants folded; does nothing."""

    name = "test-needs-folded"
    needs = frozenset({Fact.CONSTANTS_FOLDED})

    def run(self, model, ctx):
        return PassResult(model, modified=False)


@register_pass
@dataclasses.dataclass(frozen=True)
class LyingPass(Pass):
    """Changes the model but says it did not (contract violation)."""

    name = "test-lying"

    def run(self, model, ctx):
        next(iter(model.graph)).name = "changed"
        return PassResult(model, modified=False)


@register_pass
@dataclasses.dataclass(frozen=True)
class CrashingPass(Pass):
    name = "test-crashing"

    def run(self, model, ctx):
        raise RuntimeError("boom")


def test_spec_round_trip_with_options():
    spec = "test-rename-nodes{prefix=a,repeat=3},test-rename-nodes"
    pipeline = Pipeline.parse(spec)
    assert [p.name for p in pipeline] == ["test-rename-nodes", "test-rename-nodes"]
    assert pipeline.passes[0] == RenameNodesPass(prefix="a", repeat=3)
    assert str(pipeline) == spec
    assert Pipeline.parse(str(pipeline)) == pipeline


def test_spec_whitespace_is_ignored():
    assert Pipeline.parse(" test-rename-nodes { prefix = b } ") == Pipeline([RenameNodesPass(prefix="b")])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no-such-pass", "unknown pass 'no-such-pass'"),
        ("test-rename-nodes{bogus=1}", "has no option 'bogus'"),
        ("test-rename-nodes{repeat=x}", "expected int"),
        ("test-rename-nodes{repeat}", "needs the form key=value"),
        ("test-rename-nodes{repeat=1", "missing '}'"),
        ("test-rename-nodes,,test-rename-nodes", "empty item"),
    ],
)
def test_bad_specs_name_the_problem(spec, message):
    with pytest.raises(OptionError, match=message):
        Pipeline.parse(spec)


def test_user_pass_runs_in_pipeline_and_records_stats():
    model = _model()
    out, records = Pipeline.parse("test-rename-nodes{prefix=u_}").run(model, CompileContext())
    assert out is model
    assert all(node.name.startswith("u_") for node in model.graph)
    assert records[0].modified and records[0].stats == {"renamed": 3}
    # A pass that changes nothing must say so: prefix "" with repeat=1 keeps every name.
    _, records = Pipeline.parse("test-rename-nodes{prefix=}").run(model, CompileContext())
    assert records[0].modified is False and records[0].stats == {"renamed": 0}


def test_missing_fact_fails_fast_naming_fact_and_provider():
    with pytest.raises(OptionError, match=r"needs fact 'constants-folded'.*provided by: fold-constants"):
        Pipeline.parse("test-rename-nodes,test-needs-folded").run(_model(), CompileContext())


def test_fact_provided_by_earlier_pass_is_accepted():
    Pipeline.parse("fold-constants,test-needs-folded").check_facts()


def test_modified_flag_must_be_exact():
    with pytest.raises(PassFailedError, match="test-lying.*reported modified=False"):
        Pipeline.parse("test-lying").run(_model(), CompileContext())


def test_crash_names_pass_and_predecessors():
    with pytest.raises(PassFailedError, match=r"pass 'test-crashing' failed: RuntimeError: boom \(passes before it: test-rename-nodes\)"):
        Pipeline.parse("test-rename-nodes,test-crashing").run(_model(), CompileContext())


def test_after_pass_hook_receives_each_pass():
    seen = []
    Pipeline.parse("test-rename-nodes,test-rename-nodes{prefix=z}").run(
        _model(), CompileContext(), after_pass=lambda p, r, m: seen.append(p.name) or {"ok": True}
    )
    assert seen == ["test-rename-nodes", "test-rename-nodes"]


def test_pipeline_rejects_non_pass():
    with pytest.raises(TypeError):
        Pipeline([object()])  # type: ignore[list-item]


def test_options_default_omitted_from_spec():
    assert RenameNodesPass().spec() == "test-rename-nodes"
    assert RenameNodesPass(prefix="q").spec() == "test-rename-nodes{prefix=q}"
