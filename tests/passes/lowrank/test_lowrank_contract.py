"""The pass contract for the low-rank passes in their *modifying* configuration (a fixed rank).

tests/passes/test_contract.py runs every registered pass with default options; the default ``auto``
mode needs a cost model, which the contract context lacks, so there they leave the models unchanged.
Here each pass runs with ``rank=2`` so the rewrite itself is held to the contract.
"""

from __future__ import annotations

import onnx
import pytest

import passes.lowrank  # noqa: F401  (registers the passes; passes/__init__ does not import it yet)
from compiler.context import CompileContext
from compiler.ir import copy_model, structural_fingerprint, to_proto
from compiler.pipeline import Pipeline
from compiler.verify import random_feeds, run_onnxruntime
from passes.lowrank.conv import FactorizeConvPass
from passes.lowrank.gemm import FactorizeGemmPass
from tests.helpers import CONTRACT_MODELS, FACT_CHECKS, check_topo_sorted, facts_holding, signature

EXPECTED_CHANGES = {  # (pass, model) pairs that must rewrite something: guards against a vacuous test
    ("factorize-gemm", "conv_bn"),
    ("factorize-conv", "conv_bn"),
}


@pytest.mark.parametrize("model_name", sorted(CONTRACT_MODELS))
@pytest.mark.parametrize("pass_cls", [FactorizeGemmPass, FactorizeConvPass], ids=lambda c: c.name)
def test_fixed_rank_rewrite_keeps_the_contract(pass_cls, model_name: str) -> None:
    model = CONTRACT_MODELS[model_name]()
    Pipeline.parse("canonicalize").run(model, CompileContext())
    feeds = random_feeds(model, seed=1)
    before_model, before_facts = copy_model(model), facts_holding(model)
    fingerprint = structural_fingerprint(model)
    the_pass = pass_cls(rank=2)
    result = the_pass(model, CompileContext(calibration=[feeds]))

    assert result.model is model
    onnx.checker.check_model(to_proto(model), full_check=True)
    assert signature(model) == signature(before_model)
    assert check_topo_sorted(model) == []
    assert result.modified == (structural_fingerprint(model) != fingerprint)
    assert result.modified == ((pass_cls.name, model_name) in EXPECTED_CHANGES), result.notes
    for fact in before_facts & pass_cls.preserves:
        assert FACT_CHECKS[fact](model) == [], f"{pass_cls.name} should preserve {fact.value}"
    outputs = run_onnxruntime(model, feeds)  # still runs, same output shapes (LOSSY: no equivalence)
    assert [o.shape for o in outputs] == [o.shape for o in run_onnxruntime(before_model, feeds)]
