"""GPTQ weight rounding (passes/quantize/gptq.py): the algebra, and the quantize pass with
``rounding=gptq`` on the bundled digits CNN (integer-only, bit-exact, better than nearest)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compiler.accuracy import load_npz_feeds, split_batches
from compiler.context import CompileContext
from compiler.ir import copy_model, load_model, to_proto
from compiler.pipeline import Pipeline
from compiler.reference import run_reference
from compiler.verify import ort_session
from passes.quantize.gptq import gptq_codes, gptq_layer_codes, output_error
from passes.quantize.layers import Layer
from passes.quantize.qparams import quantize_weight
from targets.registry import get_target
from tests.helpers import check_integer_only, weight_codes

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
RNG = np.random.default_rng


def _correlated_inputs(rows: int, k: int, seed: int) -> np.ndarray:
    rng = RNG(seed)
    mixing = rng.standard_normal((k, k)) / np.sqrt(k)
    return rng.standard_normal((rows, k)) @ (np.eye(k) + 2.0 * mixing)


def _error(w, codes, scales, x):
    return float(np.sum((x @ (w - codes * scales[:, None]).T) ** 2))


@pytest.mark.parametrize("qmax", [127, 7])
def test_gptq_lowers_the_output_error_on_correlated_inputs(qmax):
    """On correlated inputs the output error of GPTQ codes is well below nearest rounding, with the
    same scales and codes in range."""
    rng = RNG(0)
    w = rng.standard_normal((16, 64))
    scales = np.abs(w).max(axis=1) / qmax
    x = _correlated_inputs(512, 64, 1)
    nearest = np.clip(np.rint(w / scales[:, None]), -qmax, qmax)
    codes = gptq_codes(w, x.T @ x, scales, qmax)
    assert codes.dtype == np.int8 and np.abs(codes.astype(int)).max() <= qmax
    assert _error(w, codes, scales, x) < 0.8 * _error(w, nearest, scales, x)


def test_gptq_with_white_inputs_is_nearest_rounding():
    """With a diagonal Gram there is nothing to compensate (U is diagonal): GPTQ == nearest."""
    rng = RNG(2)
    w = rng.standard_normal((8, 40))
    scales = np.abs(w).max(axis=1) / 127
    gram = np.diag(rng.uniform(0.5, 2.0, 40))
    assert np.array_equal(gptq_codes(w, gram, scales, 127), np.clip(np.rint(w / scales[:, None]), -127, 127))


def test_dead_inputs_keep_their_nearest_codes():
    """An input that is always 0 on the calibration data has no error to spread: its weights are
    rounded to nearest, not zeroed (they matter on other inputs)."""
    rng = RNG(3)
    w = rng.standard_normal((4, 10))
    scales = np.abs(w).max(axis=1) / 127
    x = _correlated_inputs(200, 10, 4)
    x[:, 3] = 0.0
    codes = gptq_codes(w, x.T @ x, scales, 127)
    assert np.array_equal(codes[:, 3], np.rint(w[:, 3] / scales).astype(np.int8))


def test_grouped_conv_uses_one_gram_per_group():
    """Depthwise conv: each channel is its own GPTQ problem; the layer's output error (per-group
    Grams) goes down and the codes keep the layer's layout."""
    rng = RNG(5)
    weight = rng.standard_normal((6, 1, 3, 3))
    layer = Layer(node=None, kind="conv", x=None, weight=weight, bias=None, output=None, groups=6)
    nearest, scales = quantize_weight(weight, 0, 4)
    grams = np.stack([(lambda x: x.T @ x)(_correlated_inputs(300, 9, 10 + g)) for g in range(6)])
    codes = gptq_layer_codes(layer, scales, grams, 7)
    assert codes.shape == weight.shape
    assert output_error(layer, codes, scales, grams) < output_error(layer, nearest, scales, grams)


@pytest.fixture(scope="module")
def digits():
    model = load_model(EXAMPLES / "digits_cnn.onnx")
    calib, _ = load_npz_feeds(EXAMPLES / "digits_cnn.calib.npz", ["x"])
    data, labels = load_npz_feeds(EXAMPLES / "digits_cnn.eval.npz", ["x"])
    return model, split_batches(calib, 1)[:64], data, labels


def _quantized(digits, spec):
    model, calibration, _, _ = digits
    ctx = CompileContext(target=get_target("cpu"), calibration=calibration)
    quantized, records = Pipeline.parse(f"canonicalize,{spec}").run(copy_model(model), ctx)
    return quantized, records[-1]


def _sqnr_db(quantized, reference, data) -> float:
    ours, theirs = ort_session(quantized), ort_session(reference)
    batches = split_batches({"x": data["x"]}, 1)
    q = np.concatenate([ours.run(None, b)[0] for b in batches])
    f = np.concatenate([theirs.run(None, b)[0] for b in batches])
    return float(10 * np.log10(np.sum(f ** 2) / np.sum((q - f) ** 2)))


def test_quantize_with_gptq_rounding_is_integer_only_exact_and_more_accurate_at_4_bits(digits):
    model, _, data, _ = digits
    nearest, _ = _quantized(digits, "quantize{bits=4}")
    tuned, record = _quantized(digits, "quantize{bits=4,rounding=gptq}")
    assert check_integer_only(tuned) == []
    codes = weight_codes(tuned)
    assert codes and all(np.abs(c).max() <= 7 for c in codes.values())
    assert any(not np.array_equal(codes[name], c) for name, c in weight_codes(nearest).items())
    notes = [n for n in record.notes if "GPTQ rounding" in n]
    assert len(notes) == 3 and all("x of nearest" in n for n in notes)
    # held-out digits: the output error vs fp32 drops (measured 25.4 -> 28.5 dB)
    assert _sqnr_db(tuned, model, data) > _sqnr_db(nearest, model, data) + 1.0
    feeds = {"x": data["x"][:1]}
    assert all(np.array_equal(a, b) for a, b in zip(run_reference(to_proto(tuned), feeds), ort_session(tuned).run(None, feeds)))


def test_rounding_option_is_checked(digits):
    with pytest.raises(Exception, match="rounding=best: must be one of nearest, gptq"):
        _quantized(digits, "quantize{rounding=best}")
