"""The low-rank passes on the bundled trained digits CNN: accuracy budget and cost-model decisions."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

import passes.lowrank  # noqa: F401  (registers the passes; passes/__init__ does not import it yet)
from compiler.accuracy import evaluate_classification, load_npz_feeds, split_batches
from compiler.context import CompileContext
from compiler.ir import copy_model, load_model
from compiler.pipeline import Pipeline
from compiler.verify import ort_session
from targets.cost_model import RooflineCostModel
from targets.registry import get_target
from tests.helpers import FACT_CHECKS, facts_holding
from tests.tolerances import LOWRANK_TOP1_DROP_POINTS

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


@functools.lru_cache(maxsize=1)
def _canonical():
    model = load_model(EXAMPLES / "digits_cnn.onnx")
    Pipeline.parse("canonicalize").run(model, CompileContext())
    return model


def _context() -> CompileContext:
    calib, _ = load_npz_feeds(EXAMPLES / "digits_cnn.calib.npz", ["x"])
    target = get_target("cpu")
    # The model has a static batch of 1: calibration comes as batch-1 feeds, like `compile` makes.
    return CompileContext(target=target, cost_model=RooflineCostModel(target), calibration=split_batches(calib, 1))


def _top1(model) -> float:
    data, labels = load_npz_feeds(EXAMPLES / "digits_cnn.eval.npz", ["x"])
    session = ort_session(model)
    return evaluate_classification(lambda f: session.run(None, f), data, labels, 1, ["x"])["top1"]


def _run(spec: str):
    model = copy_model(_canonical())
    facts = facts_holding(model)
    _, records = Pipeline.parse(spec).run(model, _context(), initial_facts=facts)
    for fact in facts:
        assert FACT_CHECKS[fact](model) == [], fact
    return model, records


def test_auto_keeps_the_small_digits_cnn_dense_with_a_reason_per_layer() -> None:
    """Every layer of this ~10k-weight CNN costs less than one extra kernel launch (5 us) saves."""
    model, records = _run("factorize-conv,factorize-gemm")
    notes = [n for r in records for n in r.notes]
    assert not any(r.modified for r in records)
    assert len(notes) == 3 and all("left dense" in n for n in notes), notes


def test_fixed_ranks_stay_within_the_top1_budget(capsys: pytest.CaptureFixture[str]) -> None:
    before = _top1(_canonical())
    model, records = _run("factorize-conv{rank=16,form=tucker2},factorize-gemm{rank=9,data_aware=true}")
    after = _top1(model)
    with capsys.disabled():
        print(f"\ndigits CNN top-1: {before:.4f} -> {after:.4f}; " + "; ".join(n for r in records for n in r.notes))
    assert all(r.modified for r in records)
    assert (before - after) * 100 <= LOWRANK_TOP1_DROP_POINTS
