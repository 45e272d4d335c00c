"""The transformer patterns of the integer-only form: pass-throughs, activation x activation MatMul,
constant scale / constant Add, the embedding Gather, and the I-BERT kernels (i-GELU, i-exp Softmax,
integer LayerNorm), each on a small ONNX-text model, then the zoo transformer end to end.

For each pattern: structure (the pattern's integer nodes are there, no float op between the input
QuantizeLinear and the output DequantizeLinear, no island), reference == ONNX Runtime bit for bit,
and accuracy against the fp32 model within the budgets of ``tests.tolerances``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from compiler.context import CompileContext
from compiler.ir import copy_model, load_model, to_proto
from compiler.pipeline import Pipeline
from compiler.reference import run_reference
from compiler.verify import run_onnxruntime
from passes.quantize import ibert
from tests.helpers import OPSET, check_integer_only, count, model_from_text
from tests.tolerances import (
    QUANT_KERNEL_MAX_ERROR_OF_RANGE,
    QUANT_TRANSFORMER_MIN_COSINE,
    QUANT_TRANSFORMER_MIN_TOP1_AGREEMENT,
)


def _calibration(shapes: dict, batches: int = 4, seed: int = 0, scale: float = 1.0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{n: (scale * rng.standard_normal(s)).astype(np.float32) for n, s in shapes.items()} for _ in range(batches)]


def _quantize(model, calibration):
    """Quantize ``model`` in place; returns (fp32 copy, the quantize record)."""
    fp32 = copy_model(model)
    _, records = Pipeline.parse("canonicalize,quantize").run(model, CompileContext(calibration=calibration))
    return fp32, records[-1]


def _float_ops(model) -> list[str]:
    """Ops other than Q/DQ that compute a float tensor (an island would show up here)."""
    return [n.op_type for n in model.graph
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and any(o.dtype.name == "FLOAT" for o in n.outputs)]


def _check(model, fp32, record, calibration, budget: float = QUANT_KERNEL_MAX_ERROR_OF_RANGE) -> float:
    """Integer-only structure, reference == ORT exactly, and the error vs fp32 (as a fraction of the
    fp32 output's range) within ``budget``; returns the worst error fraction."""
    assert record.stats["islands"] == 0, record.notes
    assert check_integer_only(model) == [] and _float_ops(model) == []
    proto = to_proto(model)
    worst = 0.0
    for feeds in calibration:
        ours, theirs = run_reference(proto, feeds), run_onnxruntime(model, feeds)
        for a, b in zip(ours, theirs):
            assert a.dtype == b.dtype and np.array_equal(a, b), f"reference != ORT in {int((a != b).sum())} elements"
        for got, want in zip(theirs, run_onnxruntime(fp32, feeds)):
            span = float(want.max() - want.min()) or 1.0
            worst = max(worst, float(np.abs(got - want).max()) / span)
    assert worst <= budget, worst
    return worst


# -- 1. pass-throughs on 8 bits ---------------------------------------------------------------------
def test_split_slice_gather_pass_through_keep_scale_and_zero_point() -> None:
    model = model_from_text(
        OPSET
        + """g (float[4,12] x) => (float[4,4] a, float[4,4] b, float[4,2] c, float[4,3] d) {
            h = Gemm (x, w, bias)
            a, b, r = Split <axis=1> (h, sizes)
            c = Slice (r, starts, ends, axes)
            d = Gather <axis=1> (h, idx)
        }""",
        w=(12, 12), bias=(12,), sizes=np.array([4, 4, 4], np.int64), starts=np.array([1], np.int64),
        ends=np.array([3], np.int64), axes=np.array([1], np.int64), idx=np.array([0, 5, 11], np.int64),
    )
    calibration = _calibration({"x": (4, 12)})
    fp32, record = _quantize(model, calibration)
    split = next(n for n in model.graph if n.op_type == "Split")
    assert all(v.dtype.name == "UINT8" for v in (*split.inputs[:1], *split.outputs))
    assert count(model, "Slice") == 1 and count(model, "Gather") == 1 and record.stats["pass_through"] == 3
    # scale and zero point pass through: every output's dequantizer uses the Gemm output's qparams
    dqs = [n for n in model.graph if n.op_type == "DequantizeLinear"]
    assert len(dqs) == 4 and len({(id(n.inputs[1]), id(n.inputs[2])) for n in dqs}) == 1
    # pure data movement of the 8-bit codes: no error beyond the Gemm's own quantization
    _check(model, fp32, record, calibration)


# -- 2. activation x activation MatMul (+ folded scalar Mul) ----------------------------------------
def test_attention_scores_matmul_of_activations_with_folded_scale() -> None:
    model = model_from_text(
        OPSET
        + """g (float[2,8,16] x) => (float[2,8,8] y) {
            q = MatMul (x, wq)
            k = MatMul (x, wk)
            kt = Transpose <perm=[0,2,1]> (k)
            s = MatMul (q, kt)
            y = Mul (s, inv_sqrt_d)
        }""",
        wq=(16, 16), wk=(16, 16), inv_sqrt_d=np.array(0.25, np.float32),
    )
    calibration = _calibration({"x": (2, 8, 16)})
    fp32, record = _quantize(model, calibration)
    scores = [n for n in model.graph if n.op_type == "MatMulInteger" and n.inputs[1].producer() is not None
              and n.inputs[1].producer().op_type == "Transpose"]
    assert len(scores) == 1 and len(scores[0].inputs) == 4  # both zero points given
    assert all(v.dtype.name == "UINT8" for v in scores[0].inputs[:2])
    assert count(model, "Mul") == count(model, "BitShift")  # the 0.25 is inside a requantizer, not a node
    assert record.stats["integer_matmuls"] == 1 and any("Mul 0.25" in n for n in record.notes)
    _check(model, fp32, record, calibration)


# -- 3. constant scalar Mul / Div and constant-tensor Add -------------------------------------------
def test_constant_scale_and_constant_add_are_integer() -> None:
    model = model_from_text(
        OPSET
        + """g (float[2,6,8] x) => (float[2,6,8] y, float[2,6,8] z) {
            h = MatMul (x, w)
            p = Add (h, pos)
            y = Div (p, two)
            z = Mul (minus_three, p)
        }""",
        w=(8, 8), pos=(1, 6, 8), two=np.array(2.0, np.float32), minus_three=np.array(-3.0, np.float32),
    )
    calibration = _calibration({"x": (2, 6, 8)})
    fp32, record = _quantize(model, calibration)
    assert record.stats["integer_scales"] == 2 and record.stats["integer_adds"] == 1
    _check(model, fp32, record, calibration)


def test_embedding_gather_and_position_add() -> None:
    model = model_from_text(
        OPSET + "g (int64[2,10] tokens) => (float[2,10,8] y) { e = Gather (table, tokens)\n y = Add (e, pos) }",
        table=(50, 8), pos=(1, 10, 8),
    )
    rng = np.random.default_rng(0)
    calibration = [{"tokens": rng.integers(0, 50, (2, 10)).astype(np.int64)} for _ in range(3)]
    fp32, record = _quantize(model, calibration)
    gather = next(n for n in model.graph if n.op_type == "Gather")
    assert gather.inputs[0].dtype.name == "UINT8" and gather.inputs[0].const_value is not None
    assert count(model, "QuantizeLinear") == 0  # the table is quantized at compile time
    assert record.stats["integer_embeddings"] == 1
    _check(model, fp32, record, calibration)


# -- 4. I-BERT kernels -------------------------------------------------------------------------------
def test_exact_gelu_decomposition_becomes_integer_gelu() -> None:
    model = model_from_text(
        OPSET
        + """g (float[4,16] x) => (float[4,32] y) {
            h = MatMul (x, w)
            d = Div (h, sqrt2)
            e = Erf (d)
            a = Add (e, one)
            m = Mul (h, a)
            y = Mul (m, half)
        }""",
        w=(16, 32), sqrt2=np.array(math.sqrt(2), np.float32), one=np.array(1.0, np.float32), half=np.array(0.5, np.float32),
    )
    calibration = _calibration({"x": (4, 16)})
    fp32, record = _quantize(model, calibration)
    assert record.stats["integer_gelus"] == 1 and count(model, "Erf") == 0
    assert count(model, "Abs") == 1 and count(model, "Min") == 1
    _check(model, fp32, record, calibration)


@pytest.mark.parametrize("scale", [0.5, 4.0])
def test_softmax_becomes_integer_i_exp(scale: float) -> None:
    model = model_from_text(OPSET + "g (float[2,4,8,16] x) => (float[2,4,8,16] y) { y = Softmax <axis=-1> (x) }")
    calibration = _calibration({"x": (2, 4, 8, 16)}, scale=scale)
    fp32, record = _quantize(model, calibration)
    assert record.stats["integer_softmaxes"] == 1
    assert count(model, "ReduceMax") == 1 and count(model, "BitShift") == 1 and count(model, "Div") == 2
    _check(model, fp32, record, calibration)


def test_layer_norm_becomes_integer() -> None:
    model = model_from_text(
        OPSET + "g (float[2,8,32] x) => (float[2,8,32] y) { y = LayerNormalization <axis=-1, epsilon=1e-5> (x, gamma, beta) }",
        gamma=np.random.default_rng(1).uniform(0.5, 1.5, 32).astype(np.float32), beta=(32,),
    )
    calibration = _calibration({"x": (2, 8, 32)}, scale=3.0)
    fp32, record = _quantize(model, calibration)
    assert record.stats["integer_layer_norms"] == 1 and count(model, "LayerNormalization") == 0
    _check(model, fp32, record, calibration)


def test_layer_norm_of_a_constant_row_is_beta() -> None:
    """All-equal rows: variance 0, the epsilon term keeps the square root >= 1 (no division by 0)."""
    model = model_from_text(
        OPSET + "g (float[3,16] x) => (float[3,16] y) { y = LayerNormalization <axis=-1> (x, gamma, beta) }",
        gamma=(16,), beta=(16,),
    )
    calibration = _calibration({"x": (3, 16)})
    fp32, record = _quantize(model, calibration)
    flat = {"x": np.full((3, 16), 0.7, np.float32)}
    (got,), (want,) = run_onnxruntime(model, flat), run_onnxruntime(fp32, flat)
    assert np.array_equal(run_reference(to_proto(model), flat)[0], got)
    assert np.abs(got - want).max() <= QUANT_KERNEL_MAX_ERROR_OF_RANGE * float(want.max() - want.min())


def test_newton_isqrt_iteration_count_reaches_floor_sqrt() -> None:
    """The unrolled Newton recurrence of the integer LayerNorm, run exactly in Python from the
    starting point the pass uses, gives floor(sqrt(n)) for the extreme and random n."""
    consts = ibert.layer_norm_constants(0.05, 0.02, 64, 1e-5, np.ones(64), None)
    v_max = (consts.start - 1) ** 2
    rng = np.random.default_rng(0)
    for n in [1, 2, 3, consts.eps, consts.eps + 1, v_max - 1, v_max, *rng.integers(1, v_max, 200).tolist()]:
        x = consts.start
        for _ in range(consts.iterations):
            x = min(x, (x + n // x) // 2)
        assert x == math.isqrt(n), n


def test_out_of_range_kernel_scales_become_islands() -> None:
    """A LayerNorm whose epsilon dwarfs the input's scale would overflow int64: named island."""
    with pytest.raises(ibert.KernelRangeError):
        ibert.layer_norm_constants(1e-6, 0.02, 64, 1e6, np.ones(64), None)
    model = model_from_text(
        OPSET + "g (float[2,16] x) => (float[2,16] y) { y = LayerNormalization <axis=-1, epsilon=1e9> (x, gamma, beta) }",
        gamma=(16,), beta=(16,),
    )
    _, record = _quantize(model, _calibration({"x": (2, 16)}, scale=1e-3))
    assert record.stats["islands"] == 1 and count(model, "LayerNormalization") == 1
    assert any("LayerNorm" in n and "int64" in n for n in record.notes)


# -- the zoo transformer ----------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _zoo_transformer():
    from tests.data.make_models import model_path

    original = load_model(model_path("transformer"))
    rng = np.random.default_rng(0)
    calibration = [{"tokens": rng.integers(0, 256, (1, 32)).astype(np.int64)} for _ in range(8)]
    model = copy_model(original)
    _, records = Pipeline.parse("canonicalize,quantize").run(model, CompileContext(calibration=calibration))
    return original, model, records[-1], calibration


def test_zoo_transformer_is_integer_only_and_bit_exact() -> None:
    original, model, record, calibration = _zoo_transformer()
    assert record.stats["islands"] == 0, [n for n in record.notes if "island" in n]
    assert check_integer_only(model) == [] and _float_ops(model) == []
    assert record.stats["integer_softmaxes"] == 2 and record.stats["integer_gelus"] == 2
    assert record.stats["integer_layer_norms"] == 5 and record.stats["integer_matmuls"] == 4
    proto = to_proto(model)
    cosines, agreement = [], []
    for feeds in calibration:
        (ours,), (theirs,), (want,) = run_reference(proto, feeds), run_onnxruntime(model, feeds), run_onnxruntime(original, feeds)
        assert np.array_equal(ours, theirs)
        cosines.append(float((theirs * want).sum() / (np.linalg.norm(theirs) * np.linalg.norm(want))))
        agreement.append(float((theirs.argmax(-1) == want.argmax(-1)).mean()))
    print(f"int8 transformer vs fp32: cosine min {min(cosines):.5f}, top-1 agreement {np.mean(agreement):.4f}")
    assert min(cosines) >= QUANT_TRANSFORMER_MIN_COSINE
    assert np.mean(agreement) >= QUANT_TRANSFORMER_MIN_TOP1_AGREEMENT


@pytest.mark.tvm
def test_zoo_transformer_tvm_equals_onnxruntime(tmp_path) -> None:
    pytest.importorskip("tvm")
    from targets import get_target
    from targets.lowering import integer_ops, load_library, lower_model

    integer_ops.install_converters()
    _, model, _, calibration = _zoo_transformer()
    proto = to_proto(model)
    result = lower_model(proto, get_target("cpu"), {}, tmp_path)
    library = load_library(tmp_path / result.library_file, result.input_names)
    for feeds in calibration[:3]:
        (got,), (want,) = library.run(feeds), run_onnxruntime(model, feeds)
        assert got.dtype == want.dtype and np.array_equal(got, want)
