"""Accuracy budgets: the bundled digits CNN at int8 (integer-only and QDQ), and bias correction.

Quantized vs float is an accuracy budget, reported, not an equivalence (DESIGN.md); the budget is
``tests.tolerances.QUANT_TOP1_DROP_POINTS``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from compiler.accuracy import evaluate_classification, load_npz_feeds, split_batches
from compiler.context import CompileContext
from compiler.ir import copy_model, load_model
from compiler.pipeline import Pipeline
from compiler.verify import ort_session, run_onnxruntime
from tests.helpers import OPSET, check_integer_only, check_qdq_form, model_from_text
from tests.tolerances import QUANT_TOP1_DROP_POINTS

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


@functools.lru_cache(maxsize=1)
def _digits():
    calib, _ = load_npz_feeds(EXAMPLES / "digits_cnn.calib.npz", ["x"])
    data, labels = load_npz_feeds(EXAMPLES / "digits_cnn.eval.npz", ["x"])
    model = load_model(EXAMPLES / "digits_cnn.onnx")
    session = ort_session(copy_model(model))
    fp32 = evaluate_classification(lambda f: session.run(None, f), data, labels, 1, ["x"])["top1"]
    return model, split_batches(calib, 1), data, labels, fp32


@pytest.mark.parametrize("spec", ["quantize", "quantize{observer=percentile}", "quantize{activations=int8}", "export-qdq"])
def test_digits_int8_top1_within_budget(spec: str) -> None:
    original, calibration, data, labels, fp32 = _digits()
    model = copy_model(original)
    Pipeline.parse(f"canonicalize,{spec}").run(model, CompileContext(calibration=calibration))
    check = check_qdq_form if spec.startswith("export-qdq") else check_integer_only
    assert check(model) == []
    session = ort_session(model)
    int8 = evaluate_classification(lambda f: session.run(None, f), data, labels, 1, ["x"])["top1"]
    print(f"digits top-1 fp32 {fp32:.4f}, {spec} {int8:.4f}")  # shown with -s: the reported numbers
    assert (fp32 - int8) * 100 <= QUANT_TOP1_DROP_POINTS


def test_bias_correction_removes_the_mean_output_shift() -> None:
    """4-bit weights on inputs with a large mean: (W - W_dq) E[x] shifts every output channel."""
    rng = np.random.default_rng(0)
    model = model_from_text(OPSET + "g (float[64,32] x) => (float[64,16] y) { y = Gemm <transB=1> (x, w, b) }", w=(16, 32), b=(16,))
    calibration = [{"x": rng.uniform(1.0, 3.0, (64, 32)).astype(np.float32)} for _ in range(4)]
    (reference,) = run_onnxruntime(model, calibration[0])

    def mean_shift(spec: str) -> float:
        quantized = copy_model(model)
        Pipeline.parse(f"canonicalize,{spec}").run(quantized, CompileContext(calibration=calibration))
        (got,) = run_onnxruntime(quantized, calibration[0])
        return float(np.abs((got - reference).mean(axis=0)).mean())

    for form in ("quantize", "export-qdq"):
        plain = mean_shift(f"{form}{{bits=4}}")
        corrected = mean_shift(f"{form}{{bits=4,bias_correction=true}}")
        assert corrected < 0.5 * plain, (form, plain, corrected)
