"""The pass contract, checked for every registered pass on every contract model.

For each pass: the ONNX checker accepts the result, the graph signature is unchanged, nodes stay
topologically sorted, ``modified`` matches the serialized model, declared ``provides`` facts hold,
facts in ``preserves`` that held before still hold, outputs agree with the input model under the
pass's tolerance, and a cleanup pass run twice reports ``modified=False`` the second time.
"""

from __future__ import annotations

import onnx
import pytest

from compiler.context import CompileContext
from compiler.ir import copy_model, structural_fingerprint, to_proto
from compiler.pass_base import registered_passes
from compiler.pipeline import Pipeline
from compiler.verify import compare, policy_for, random_feeds, run_onnxruntime
from passes.canonicalize import CANONICALIZE
from tests.helpers import ALL_FACT_CHECKS, CONTRACT_MODELS, FACT_CHECKS, check_topo_sorted, facts_holding, signature

# Built-in passes only: test modules register throw-away passes (some break the contract on purpose).
PASSES = {name: cls for name, cls in registered_passes().items() if cls.__module__.startswith("passes.")}
CLEANUP_PASSES = set(CANONICALIZE)  # idempotent by design: a second run finds nothing to do


def _prepared(pass_name: str, model_name: str):
    """The contract model with the facts the pass needs established by the canonicalize passes."""
    cls = PASSES[pass_name]
    model = CONTRACT_MODELS[model_name]()
    providers = [name for name in CANONICALIZE if PASSES[name].provides & cls.needs]
    missing = cls.needs - {fact for name in providers for fact in PASSES[name].provides}
    if missing:
        pytest.skip(f"{pass_name} needs {sorted(f.value for f in missing)}, which canonicalize does not provide")
    Pipeline([PASSES[name]() for name in providers]).run(model, CompileContext())
    return model


@pytest.mark.parametrize("model_name", sorted(CONTRACT_MODELS))
@pytest.mark.parametrize("pass_name", sorted(PASSES))
def test_pass_contract(pass_name: str, model_name: str) -> None:
    model = _prepared(pass_name, model_name)
    feeds = random_feeds(model, seed=1)
    before_model = copy_model(model)
    before_facts = facts_holding(model)
    fingerprint = structural_fingerprint(model)
    the_pass = PASSES[pass_name]()
    ctx = CompileContext(calibration=[feeds])

    result = the_pass(model, ctx)

    assert result.model is model
    onnx.checker.check_model(to_proto(model), full_check=True)
    assert signature(model) == signature(before_model)
    assert check_topo_sorted(model) == []
    assert result.modified == (structural_fingerprint(model) != fingerprint)
    for fact in the_pass.provides:
        assert ALL_FACT_CHECKS[fact](model) == [], f"{pass_name} provides {fact.value}"
    for fact in (before_facts & the_pass.preserves) if result.modified else before_facts:
        assert FACT_CHECKS[fact](model) == [], f"{pass_name} should preserve {fact.value}"
    check = compare(run_onnxruntime(model, feeds), run_onnxruntime(before_model, feeds), policy_for(the_pass.tolerance))
    assert check["passed"], check
    if pass_name in CLEANUP_PASSES:
        assert the_pass(model, ctx).modified is False


def test_contract_models_exercise_every_canonicalize_pass() -> None:
    """Guard against a vacuous contract test: each pass changes at least one contract model."""
    changed = set()
    for model_name in CONTRACT_MODELS:
        model = CONTRACT_MODELS[model_name]()
        _, records = Pipeline.parse("canonicalize").run(model, CompileContext())
        changed |= {r.name for r in records if r.modified}
    assert changed >= set(CANONICALIZE) - {"topological-sort"}  # sorting is exercised in its own test
