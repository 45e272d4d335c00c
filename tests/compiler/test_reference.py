"""compiler.reference: every op against ONNX Runtime, and the integer-only form end to end.

Integer ops and QuantizeLinear/DequantizeLinear must equal ORT bit for bit (EXACT); float-island
ops are compared with the FP32_REWRITE policy (the reference may round differently). Models are
built with onnx.helper at IR version 8 / opset 17 (ORT 1.31 rejects IR versions above 13).

The hand-built integer-only models (``integer_cnn_model``, ``residual_model``,
``conv_integer_model``) follow passes/quantize's docstring node for node; the TVM lowering tests
(tests/targets/test_integer_lowering.py) import them from here.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import pytest

from compiler.errors import UnsupportedModelError
from compiler.reference import SUPPORTED_OPS, ReferenceInterpreterError, run_reference
from compiler.verify import compare, run_onnxruntime
from tests.tolerances import EXACT, FP32_REWRITE
from tests.helpers import ort_exact_form

IR_VERSION = 8
OPSET = 17
I64 = onnx.TensorProto.INT64

# ---------------------------------------------------------------------------------------------
# Model builders (shared with tests/targets/test_integer_lowering.py)
# ---------------------------------------------------------------------------------------------


def _elem(dtype) -> int:
    return oh.np_dtype_to_tensor_dtype(np.dtype(dtype))


def build_model(nodes, inputs: dict, outputs: dict, initializers: dict | None = None,
                opset: int = OPSET, ir_version: int = IR_VERSION, check: bool = True) -> onnx.ModelProto:
    """A model, shape-inferred and checked with the full ONNX checker unless ``check`` is False.

    ``inputs``: name -> (dtype, shape); ``outputs``: name -> dtype (shapes come from inference);
    ``initializers``: name -> array."""
    graph = oh.make_graph(
        nodes, "g",
        [oh.make_tensor_value_info(n, _elem(d), s) for n, (d, s) in inputs.items()],
        [oh.make_tensor_value_info(n, _elem(d), None) for n, d in outputs.items()],
        [onnx.numpy_helper.from_array(np.asarray(a), n) for n, a in (initializers or {}).items()],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)], ir_version=ir_version)
    if check:
        # strict inference types-checks every node and fills in the output shapes the checker needs
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        onnx.checker.check_model(model, full_check=True)
    return model


def single_op(op: str, feeds: dict, out_dtypes, consts: dict | None = None, inputs: list | None = None,
              opset: int = OPSET, check: bool = True, **attrs) -> onnx.ModelProto:
    """One node ``op``; its inputs are ``inputs`` (default: feeds then consts, in that order; "" for
    an omitted optional input); outputs y0, y1, ... with dtypes ``out_dtypes``."""
    consts = consts or {}
    names = inputs if inputs is not None else [*feeds, *consts]
    out_dtypes = out_dtypes if isinstance(out_dtypes, (list, tuple)) else [out_dtypes]
    outs = {f"y{i}": d for i, d in enumerate(out_dtypes)}
    node = oh.make_node(op, names, list(outs), name=f"the_{op.lower()}", **attrs)
    return build_model([node], {n: (a.dtype, list(a.shape)) for n, a in feeds.items()}, outs, consts, opset,
                       check=check)


def dyadic(real_scale) -> tuple[np.ndarray, np.ndarray]:
    """real ~= M / 2^S with M in [2^29, 2^30), as the quantize pass chooses (int64 arrays)."""
    mant, exp = np.frexp(np.asarray(real_scale, dtype=np.float64))
    m = np.round(mant * 2.0**30).astype(np.int64)
    exp = np.where(m == 2**30, exp + 1, exp)
    m = np.where(m == 2**30, 2**29, m)
    s = (30 - exp).astype(np.int64)
    assert np.all((s >= 1) & (s <= 62))
    return m, s


def requant_tail(prefix: str, product: str, out: str, shift, zp_out: int, lo: int, hi: int,
                 shape) -> tuple[list, dict]:
    """The shared end of Requantize, from ``p = Add(p, R)`` to ``Cast(to=UINT8)`` (7 nodes)."""
    shift = np.asarray(shift, np.int64).reshape(shape)
    inits = {
        f"{prefix}_R": (np.left_shift(1, shift - 1) + 2**62).astype(np.int64),
        f"{prefix}_S": shift.astype(np.uint64),
        f"{prefix}_Z": (zp_out - np.left_shift(1, 62 - shift)).astype(np.int64),
        f"{prefix}_LO": np.array(lo, np.int64),
        f"{prefix}_HI": np.array(hi, np.int64),
    }
    p = prefix
    nodes = [
        oh.make_node("Add", [product, f"{p}_R"], [f"{p}_pr"], name=f"{p}/add_r"),
        oh.make_node("Cast", [f"{p}_pr"], [f"{p}_u"], to=onnx.TensorProto.UINT64, name=f"{p}/to_u64"),
        oh.make_node("BitShift", [f"{p}_u", f"{p}_S"], [f"{p}_us"], direction="RIGHT", name=f"{p}/shift"),
        oh.make_node("Cast", [f"{p}_us"], [f"{p}_q"], to=I64, name=f"{p}/to_i64"),
        oh.make_node("Add", [f"{p}_q", f"{p}_Z"], [f"{p}_qz"], name=f"{p}/add_zp"),
        oh.make_node("Clip", [f"{p}_qz", f"{p}_LO", f"{p}_HI"], [f"{p}_qc"], name=f"{p}/clip"),
        oh.make_node("Cast", [f"{p}_qc"], [out], to=onnx.TensorProto.UINT8, name=f"{p}/to_u8"),
    ]
    return nodes, inits


def requantize(prefix: str, acc: str, out: str, real_scale, zp_out: int, lo: int = 0, hi: int = 255,
               shape=(-1, 1, 1)) -> tuple[list, dict]:
    """The spec's 9-node Requantize of int32 ``acc`` by per-channel ``real_scale`` (shape ``shape``)."""
    m, s = dyadic(np.atleast_1d(real_scale))
    nodes = [
        oh.make_node("Cast", [acc], [f"{prefix}_a"], to=I64, name=f"{prefix}/to_i64_acc"),
        oh.make_node("Mul", [f"{prefix}_a", f"{prefix}_M"], [f"{prefix}_p"], name=f"{prefix}/mul_m"),
    ]
    tail, inits = requant_tail(prefix, f"{prefix}_p", out, s, zp_out, lo, hi, shape)
    inits[f"{prefix}_M"] = m.reshape(shape)
    return nodes + tail, inits


def offset_binary(w_q: np.ndarray) -> np.ndarray:
    """The integer-only form's weight storage next to uint8 activations: uint8 ``w_q + 128``
    (zero point 128; passes/quantize/__init__.py)."""
    return (np.asarray(w_q).astype(np.int16) + 128).astype(np.uint8)


def integer_cnn_model(batch: int = 2, seed: int = 0) -> onnx.ModelProto:
    """x -> QuantizeLinear -> ConvInteger(3->8, 3x3, pad 1) + int32 bias -> Requantize (per-channel,
    Relu folded: LO = zp) -> MaxPool 2x2/2 -> GlobalAveragePool as Cast/ReduceSum/Sub(N*zp) +
    Requantize -> Flatten -> MatMulInteger(8->10) + bias -> Requantize ([N]) -> DequantizeLinear."""
    rng = np.random.default_rng(seed)
    s_x, zp_x = 0.02, 128
    w = rng.integers(-127, 128, (8, 3, 3, 3)).astype(np.int8)
    s_w = rng.uniform(0.005, 0.02, 8)
    s_c, zp_c = 0.05, 10  # conv output: Relu folded into LO = zp_c
    n_pool = 16  # 4x4 after the 2x2 max pool of 8x8
    s_g, zp_g = 0.03, 3
    wf = rng.integers(-127, 128, (8, 10)).astype(np.int8)
    s_wf = rng.uniform(0.003, 0.01, 10)
    s_o, zp_o = 0.1, 128
    inits = {
        "s_x": np.float32(s_x), "zp_x": np.uint8(zp_x), "W": offset_binary(w), "zp_w": np.uint8(128),
        "B": rng.integers(-3000, 3000, (8, 1, 1)).astype(np.int32),
        "npool_zp": np.int32(n_pool * zp_c), "pool_axes": np.array([2, 3], np.int64),
        "zp_g": np.uint8(zp_g), "Wf": offset_binary(wf), "Bf": rng.integers(-2000, 2000, 10).astype(np.int32),
        "s_o": np.float32(s_o), "zp_o": np.uint8(zp_o),
    }
    nodes = [
        oh.make_node("QuantizeLinear", ["x", "s_x", "zp_x"], ["xq"], name="quant_in"),
        oh.make_node("ConvInteger", ["xq", "W", "zp_x", "zp_w"], ["acc"], pads=[1, 1, 1, 1], name="conv"),
        oh.make_node("Add", ["acc", "B"], ["accb"], name="conv/bias"),
    ]
    rq, ri = requantize("rq1", "accb", "c_q", s_x * s_w / s_c, zp_c, lo=zp_c, hi=255)
    nodes += rq
    inits |= ri
    nodes += [
        oh.make_node("MaxPool", ["c_q"], ["mp"], kernel_shape=[2, 2], strides=[2, 2], name="maxpool"),
        oh.make_node("Cast", ["mp"], ["mp32"], to=onnx.TensorProto.INT32, name="gap/cast"),
        oh.make_node("ReduceSum", ["mp32", "pool_axes"], ["gsum"], keepdims=1, name="gap/sum"),
        oh.make_node("Sub", ["gsum", "npool_zp"], ["gsum0"], name="gap/sub_zp"),
    ]
    rq, ri = requantize("rq2", "gsum0", "g_q", s_c / (n_pool * s_g), zp_g, shape=(1, 1, 1, 1))
    nodes += rq
    inits |= ri
    nodes += [
        oh.make_node("Flatten", ["g_q"], ["flat"], name="flatten"),
        oh.make_node("MatMulInteger", ["flat", "Wf", "zp_g", "zp_w"], ["facc"], name="fc"),
        oh.make_node("Add", ["facc", "Bf"], ["faccb"], name="fc/bias"),
    ]
    rq, ri = requantize("rq3", "faccb", "o_q", s_g * s_wf / s_o, zp_o, shape=(-1,))
    nodes += rq
    inits |= ri
    nodes.append(oh.make_node("DequantizeLinear", ["o_q", "s_o", "zp_o"], ["y"], name="dequant_out"))
    return build_model(nodes, {"x": (np.float32, [batch, 3, 8, 8])}, {"y": np.float32}, inits)


def residual_model(batch: int = 2, seed: int = 1) -> onnx.ModelProto:
    """x_q -> ConvInteger(4->4, 3x3, pad 1) + bias -> Requantize = a_q; then the integer residual
    Add of a_q and x_q with per-branch multipliers M_a, M_b and one shared shift -> DequantizeLinear."""
    rng = np.random.default_rng(seed)
    s_x, zp_x = 0.03, 120
    s_w = rng.uniform(0.004, 0.012, 4)
    s_a, zp_a = 0.06, 7
    s_out, zp_out = 0.08, 100
    # one shared S: the larger of the two shifts, both multipliers then stay below 2^30
    _, s_each = dyadic([s_a / s_out, s_x / s_out])
    shift = int(s_each.max())
    m_a, m_b = (np.round(np.array([s_a, s_x]) / s_out * 2.0**shift)).astype(np.int64)
    inits = {
        "s_x": np.float32(s_x), "zp_x": np.uint8(zp_x),
        "W": offset_binary(rng.integers(-127, 128, (4, 4, 3, 3))), "zp_w": np.uint8(128),
        "B": rng.integers(-2000, 2000, (4, 1, 1)).astype(np.int32),
        "zp_a64": np.int64(zp_a), "zp_x64": np.int64(zp_x), "M_a": m_a, "M_b": m_b,
        "s_out": np.float32(s_out), "zp_out": np.uint8(zp_out),
    }
    nodes = [
        oh.make_node("QuantizeLinear", ["x", "s_x", "zp_x"], ["xq"], name="quant_in"),
        oh.make_node("ConvInteger", ["xq", "W", "zp_x", "zp_w"], ["acc"], pads=[1, 1, 1, 1], name="conv"),
        oh.make_node("Add", ["acc", "B"], ["accb"], name="conv/bias"),
    ]
    rq, ri = requantize("rq1", "accb", "a_q", s_x * s_w / s_a, zp_a)
    nodes += rq
    inits |= ri
    nodes += [
        oh.make_node("Cast", ["a_q"], ["a64"], to=I64, name="res/cast_a"),
        oh.make_node("Sub", ["a64", "zp_a64"], ["a0"], name="res/sub_a"),
        oh.make_node("Cast", ["xq"], ["b64"], to=I64, name="res/cast_b"),
        oh.make_node("Sub", ["b64", "zp_x64"], ["b0"], name="res/sub_b"),
        oh.make_node("Mul", ["a0", "M_a"], ["am"], name="res/mul_a"),
        oh.make_node("Mul", ["b0", "M_b"], ["bm"], name="res/mul_b"),
        oh.make_node("Add", ["am", "bm"], ["p"], name="res/add"),
    ]
    tail, ti = requant_tail("res", "p", "y_q", shift, zp_out, 0, 255, ())
    nodes += tail
    inits |= ti
    nodes.append(oh.make_node("DequantizeLinear", ["y_q", "s_out", "zp_out"], ["y"], name="dequant_out"))
    return build_model(nodes, {"x": (np.float32, [batch, 4, 6, 6])}, {"y": np.float32}, inits)


def conv_integer_model(x_dtype, channels: int = 4, out_channels: int = 6, group: int = 1,
                       strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), kernel=(3, 3),
                       x_zero_point: int | None = 3, w_zero_point: int | None = None, size: int = 9,
                       seed: int = 2) -> onnx.ModelProto:
    """One ConvInteger (x fed as ``x_dtype``, int8 weights in [-127, 127]) -> int32 output "y"."""
    rng = np.random.default_rng(seed)
    x_dtype = np.dtype(x_dtype)
    w = rng.integers(-127, 128, (out_channels, channels // group, *kernel)).astype(np.int8)
    inits = {"W": w}
    names = ["x", "W"]
    if x_zero_point is not None or w_zero_point is not None:
        inits["xzp"] = np.array(x_zero_point or 0, x_dtype)
        names.append("xzp")
    if w_zero_point is not None:
        inits["wzp"] = np.array(w_zero_point, np.int8)
        names.append("wzp")
    node = oh.make_node("ConvInteger", names, ["y"], group=group, strides=list(strides), pads=list(pads),
                        dilations=list(dilations), name="conv_integer")
    return build_model([node], {"x": (x_dtype, [1, channels, size, size])}, {"y": np.int32}, inits)


def random_integer_input(dtype, shape, rng: np.random.Generator) -> np.ndarray:
    """Random values over the dtype's whole range, with the extremes present."""
    info = np.iinfo(dtype)
    x = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    flat = x.reshape(-1)
    flat[:2] = [info.min, info.max]
    return x


# ---------------------------------------------------------------------------------------------
# Checking
# ---------------------------------------------------------------------------------------------


def assert_exact(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    """reference == ORT bit for bit: same dtypes, shapes and values."""
    ours = run_reference(model, feeds)
    theirs = run_onnxruntime(ort_exact_form(model), feeds)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, a.shape, b.dtype, b.shape)
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), compare([a], [b], EXACT)
    return ours


def assert_close(model: onnx.ModelProto, feeds: dict) -> None:
    """Float islands: reference vs ORT within FP32_REWRITE (they may round differently)."""
    ours = run_reference(model, feeds)
    theirs = run_onnxruntime(model, feeds)
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype and a.shape == b.shape
    result = compare(ours, theirs, FP32_REWRITE)
    assert result["passed"], result


RNG = np.random.default_rng


# ---------------------------------------------------------------------------------------------
# Quantization ops
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_quantize_linear_rounds_half_to_even_and_saturates(dtype):
    scale = np.float32(0.25)  # a power of two: x / scale is exact, so the ties really are ties
    ties = (np.arange(-12, 12) + 0.5).astype(np.float32) * scale
    extremes = np.array([1e6, -1e6, np.inf, -np.inf, 63.87, -64.1, 0.0, -0.0], np.float32)
    x = np.concatenate([ties, extremes, RNG(0).normal(0, 30, 40).astype(np.float32)]).reshape(1, -1)
    zp = np.array(3 if dtype == np.uint8 else -5, dtype)
    out = assert_exact(single_op("QuantizeLinear", {"x": x}, dtype, {"s": scale, "zp": zp}), {"x": x})[0]
    info = np.iinfo(dtype)
    assert out.min() == info.min and out.max() == info.max  # saturation was exercised
    # a scale that is not a power of two: x / scale rounds in float32 first, exactly as in ORT
    assert_exact(single_op("QuantizeLinear", {"x": x}, dtype, {"s": np.float32(0.1), "zp": zp}), {"x": x})


def test_quantize_linear_per_axis_and_default_zero_point():
    x = RNG(1).normal(0, 2, (2, 3, 4)).astype(np.float32)
    scales = np.array([0.01, 0.05, 0.2], np.float32)
    zps = np.array([0, 100, 255], np.uint8)
    assert_exact(single_op("QuantizeLinear", {"x": x}, np.uint8, {"s": scales, "zp": zps}, axis=1), {"x": x})
    assert_exact(single_op("QuantizeLinear", {"x": x}, np.uint8, {"s": np.float32(0.02)}), {"x": x})


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int32])
def test_dequantize_linear(dtype):
    x = random_integer_input(dtype, (2, 3, 5), RNG(2))
    # ONNX requires zero point 0 for int32 input (ORT computes x - zp in int32)
    zp = 0 if dtype == np.int32 else 7
    consts = {"s": np.float32(0.037), "zp": np.array(zp, dtype)}
    assert_exact(single_op("DequantizeLinear", {"x": x}, np.float32, consts), {"x": x})
    per_axis = {"s": np.array([0.1, 0.02, 3.0], np.float32), "zp": np.array([1, 0, 2], dtype) * (zp != 0)}
    assert_exact(single_op("DequantizeLinear", {"x": x}, np.float32, per_axis, axis=1), {"x": x})


# ---------------------------------------------------------------------------------------------
# ConvInteger / MatMulInteger
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x_dtype, kwargs",
    [
        (np.uint8, {}),
        (np.int8, {"x_zero_point": -4}),
        (np.uint8, {"strides": (2, 2), "pads": (1, 1, 1, 1)}),
        (np.uint8, {"pads": (1, 0, 2, 1), "dilations": (2, 1)}),
        (np.uint8, {"channels": 6, "out_channels": 6, "group": 6, "pads": (1, 1, 1, 1)}),  # depthwise
        (np.int8, {"channels": 4, "out_channels": 6, "group": 2, "strides": (2, 1), "x_zero_point": None}),
        (np.uint8, {"w_zero_point": 5, "size": 7}),
    ],
    ids=["u8", "i8", "stride2-pad", "asym-pad-dilation", "depthwise", "grouped-i8-nozp", "w-zp"],
)
def test_conv_integer(x_dtype, kwargs):
    model = conv_integer_model(x_dtype, **kwargs)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = random_integer_input(x_dtype, shape, RNG(3))
    assert_exact(model, {"x": x})


def test_conv_integer_uint8_weights_and_weight_zero_point():
    rng = RNG(4)
    x = random_integer_input(np.uint8, (1, 3, 6, 6), rng)
    consts = {"w": random_integer_input(np.uint8, (4, 3, 2, 2), rng), "xz": np.uint8(128), "wz": np.uint8(200)}
    assert_exact(single_op("ConvInteger", {"x": x}, np.int32, consts, strides=[2, 2]), {"x": x})
    assert_exact(single_op("ConvInteger", {"x": x}, np.int32, consts, auto_pad="SAME_UPPER"), {"x": x})
    assert_exact(single_op("ConvInteger", {"x": x}, np.int32, consts, auto_pad="SAME_LOWER", strides=[2, 2]),
                 {"x": x})


def test_conv_integer_per_channel_weight_zero_point():
    """ONNX allows one w_zero_point per output channel; ORT only a scalar, so the expected output
    is ORT's, one output channel at a time."""
    rng = RNG(4)
    x = random_integer_input(np.uint8, (1, 3, 6, 6), rng)
    w = random_integer_input(np.int8, (4, 3, 3, 3), rng)
    wz = np.array([0, -128, 127, 7], np.int8)
    ours = run_reference(single_op("ConvInteger", {"x": x}, np.int32, {"w": w, "xz": np.uint8(9), "wz": wz},
                                   pads=[1, 1, 1, 1]), {"x": x})[0]
    per_channel = [
        run_onnxruntime(single_op("ConvInteger", {"x": x}, np.int32,
                                  {"w": w[c:c + 1], "xz": np.uint8(9), "wz": wz[c]}, pads=[1, 1, 1, 1]), {"x": x})[0]
        for c in range(4)
    ]
    assert np.array_equal(ours, np.concatenate(per_channel, axis=1))


def test_integer_accumulator_is_float64_only_below_two_to_the_53():
    """The exact-accumulator choice: float64 while K * max|x| * max|w| < 2^53, else int64."""
    from compiler.reference import _exact_accumulator

    x, w = np.array([-255, 3]), np.array([255, -7])
    assert _exact_accumulator(4608, x, w) is np.float64  # ResNet-18's deepest conv, worst values
    k_limit = (1 << 53) // (255 * 255)
    assert _exact_accumulator(k_limit, x, w) is np.float64
    assert _exact_accumulator(k_limit + 1, x, w) is np.int64
    assert _exact_accumulator(10, np.zeros(0, np.int64), w) is np.float64  # empty operand: bound 0


def test_conv_and_matmul_integer_extremes_deep_reduction():
    """Deep reductions at the operand extremes (x = 255 with zero point 0, w = -128 / 255): the
    float64 accumulation equals ONNX Runtime's int32 result bit for bit."""
    x = np.full((1, 64, 5, 5), 255, np.uint8)
    w = np.full((3, 64, 3, 3), -128, np.int8)
    w[1] = 127
    assert_exact(single_op("ConvInteger", {"x": x}, np.int32, {"w": w}, pads=[1, 1, 1, 1]), {"x": x})
    a = np.full((3, 512), 255, np.uint8)
    b = np.full((512, 4), 255, np.uint8)
    out = assert_exact(single_op("MatMulInteger", {"a": a}, np.int32, {"b": b}), {"a": a})[0]
    assert int(out[0, 0]) == 512 * 255 * 255


@pytest.mark.parametrize("a_dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("b_dtype", [np.uint8, np.int8])
def test_matmul_integer(a_dtype, b_dtype):
    rng = RNG(5)
    a = random_integer_input(a_dtype, (2, 5, 16), rng)
    consts = {"b": random_integer_input(b_dtype, (16, 7), rng), "az": np.array(9, a_dtype),
              "bz": np.array(np.arange(7) - (3 if b_dtype == np.int8 else 0), b_dtype)}
    out = assert_exact(single_op("MatMulInteger", {"a": a}, np.int32, consts), {"a": a})[0]
    assert out.shape == (2, 5, 7)
    assert_exact(single_op("MatMulInteger", {"a": a}, np.int32, {"b": consts["b"]}), {"a": a})


# ---------------------------------------------------------------------------------------------
# Integer arithmetic, Cast, BitShift, Clip, Relu
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul"])
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.uint64, np.float32])
def test_binary_arithmetic_wraps_and_broadcasts(op, dtype):
    rng = RNG(6)
    if np.dtype(dtype).kind == "f":
        a, b = rng.normal(0, 10, (2, 3, 4)).astype(dtype), rng.normal(0, 10, (3, 1)).astype(dtype)
    else:
        a, b = random_integer_input(dtype, (2, 3, 4), rng), random_integer_input(dtype, (3, 1), rng)
    assert_exact(single_op(op, {"a": a}, dtype, {"b": b}), {"a": a})


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32])
def test_div_truncates_integers_toward_zero(dtype):
    a = np.array([7, -7, 7, -7, 0, 9, -9, 100], dtype)
    b = np.array([2, 2, -2, -2, 3, 3, 4, -7], dtype)
    out = assert_exact(single_op("Div", {"a": a}, dtype, {"b": b}), {"a": a})[0]
    if np.dtype(dtype).kind == "i":
        assert out[1] == -3  # not floor (-4)


@pytest.mark.parametrize(
    "src, dst",
    [(np.int64, np.uint64), (np.uint64, np.int64), (np.int64, np.uint8), (np.int64, np.int32),
     (np.int32, np.int64), (np.uint8, np.int32), (np.int32, np.int8), (np.uint8, np.int64),
     (np.int32, np.float32), (np.float32, np.int32), (np.float32, np.uint8)],
)
def test_cast(src, dst):
    rng = RNG(7)
    if np.dtype(src).kind == "f":
        # float -> int is defined by ONNX only in range: truncation toward zero
        hi = 255 if dst == np.uint8 else 1e6
        x = np.concatenate([rng.uniform(0 if dst == np.uint8 else -hi, hi, 30), [0.5, 2.999, 254.9]]).astype(src)
    else:
        x = random_integer_input(src, (40,), rng)
    out = assert_exact(single_op("Cast", {"x": x}, dst, to=_elem(dst)), {"x": x})[0]
    if src == np.int64 and dst == np.uint64:
        assert out[0] == 2**63  # int64 min reinterpreted


def test_bit_shift_uint64_per_channel_right():
    rng = RNG(8)
    x = random_integer_input(np.uint64, (2, 4, 3, 3), rng)
    shifts = np.array([1, 17, 40, 63], np.uint64).reshape(4, 1, 1)
    assert_exact(single_op("BitShift", {"x": x}, np.uint64, {"s": shifts}, direction="RIGHT"), {"x": x})


@pytest.mark.parametrize("dtype", [np.uint8, np.uint32])
def test_bit_shift_left_drops_high_bits(dtype):
    x = random_integer_input(dtype, (3, 5), RNG(9))
    s = np.array([0, 1, 3, 5, 7], dtype)
    assert_exact(single_op("BitShift", {"x": x}, dtype, {"s": s}, direction="LEFT"), {"x": x})


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.int8, np.uint8, np.float32])
def test_clip(dtype):
    if np.dtype(dtype).kind == "f":
        x = RNG(10).normal(0, 100, (4, 6)).astype(dtype)
    else:
        x = random_integer_input(dtype, (4, 6), RNG(10))
    lo, hi = np.array(5, dtype), np.array(100, dtype)
    assert_exact(single_op("Clip", {"x": x}, dtype, {"lo": lo, "hi": hi}), {"x": x})
    assert_exact(single_op("Clip", {"x": x}, dtype, {"hi": hi}, inputs=["x", "", "hi"]), {"x": x})
    # lo > hi: every element becomes hi
    out = assert_exact(single_op("Clip", {"x": x}, dtype, {"lo": hi, "hi": lo}), {"x": x})[0]
    assert np.all(out == lo)


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.float32])
def test_relu(dtype):
    x = (random_integer_input(dtype, (3, 7), RNG(11)) if np.dtype(dtype).kind == "i"
         else RNG(11).normal(size=(3, 7)).astype(dtype))
    assert_exact(single_op("Relu", {"x": x}, dtype), {"x": x})


# ---------------------------------------------------------------------------------------------
# Pooling and reductions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.float32])
@pytest.mark.parametrize(
    "attrs",
    [
        {"kernel_shape": [2, 2], "strides": [2, 2]},
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
        {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1},
        {"kernel_shape": [2, 2], "strides": [3, 3], "pads": [1, 1, 1, 1], "ceil_mode": 1},
        {"kernel_shape": [2, 3], "dilations": [2, 1], "pads": [0, 1, 1, 0]},
        {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"},
    ],
    ids=["2x2s2", "pad", "ceil", "ceil-pad", "dilated", "same-upper"],
)
def test_max_pool(dtype, attrs):
    shape = (2, 3, 8, 8)
    x = (random_integer_input(dtype, shape, RNG(12)) if np.dtype(dtype).kind in "iu"
         else RNG(12).normal(size=shape).astype(dtype))
    assert_exact(single_op("MaxPool", {"x": x}, dtype, **attrs), {"x": x})


@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_sum_integer(keepdims):
    # |x| < 2^24 so no sum of 120 values overflows int32 (an overflow is an error, next test)
    x = RNG(13).integers(-2**24, 2**24, (2, 3, 4, 5)).astype(np.int32)
    axes = np.array([2, -1], np.int64)
    assert_exact(single_op("ReduceSum", {"x": x}, np.int32, {"axes": axes}, keepdims=keepdims), {"x": x})
    assert_exact(single_op("ReduceSum", {"x": x}, np.int32, keepdims=keepdims), {"x": x})
    model = single_op("ReduceSum", {"x": x}, np.int32, {"axes": np.zeros(0, np.int64)}, noop_with_empty_axes=1)
    assert_exact(model, {"x": x})


def test_reduce_mean_integer_truncates_toward_zero():
    x = np.array([[-7, 2, 0], [5, 5, 1], [-8, 0, 0], [2**30, 2**30, 2**30]], np.int32)
    out = assert_exact(single_op("ReduceMean", {"x": x}, np.int32, axes=[1], keepdims=0), {"x": x})[0]
    assert list(out[:3]) == [-1, 3, -2]


def test_reduce_sum_int32_overflow_is_an_error():
    x = np.array([[2**31 - 1, 2**31 - 1, -5]], np.int32)
    model = single_op("ReduceSum", {"x": x}, np.int32, {"axes": np.array([1], np.int64)})
    # ORT saturates (TVM would wrap): the reference refuses instead of picking one
    assert run_onnxruntime(model, {"x": x})[0].item() == 2**31 - 1
    with pytest.raises(ReferenceInterpreterError, match="ReduceSum node 'the_reducesum'.*overflows"):
        run_reference(model, {"x": x})


# ---------------------------------------------------------------------------------------------
# Shape ops (run on uint8 in the integer-only form)
# ---------------------------------------------------------------------------------------------


def test_shape_ops_on_uint8():
    x = random_integer_input(np.uint8, (2, 1, 3, 4), RNG(14))
    cases = [
        single_op("Reshape", {"x": x}, np.uint8, {"shape": np.array([0, -1, 2], np.int64)}),
        single_op("Flatten", {"x": x}, np.uint8, axis=2),
        single_op("Flatten", {"x": x}, np.uint8, axis=-1),
        single_op("Transpose", {"x": x}, np.uint8, perm=[0, 3, 1, 2]),
        single_op("Transpose", {"x": x}, np.uint8),
        single_op("Squeeze", {"x": x}, np.uint8, {"axes": np.array([1], np.int64)}),
        single_op("Squeeze", {"x": x}, np.uint8),
        single_op("Unsqueeze", {"x": x}, np.uint8, {"axes": np.array([0, -1], np.int64)}),
        single_op("Concat", {"x": x}, np.uint8, inputs=["x", "x"], axis=-2),
        single_op("Identity", {"x": x}, np.uint8),
        single_op("Shape", {"x": x}, np.int64, start=1, end=-1),
        single_op("Gather", {"x": x}, np.uint8, {"i": np.array([[2, -1]], np.int64)}, axis=3),
    ]
    for model in cases:
        assert_exact(model, {"x": x})


def test_constant():
    x = np.ones((2, 3), np.int64)
    for attrs in ({"value": onnx.numpy_helper.from_array(np.arange(6, dtype=np.int64).reshape(2, 3), "c")},
                  {"value_int": 7}, {"value_ints": [1, 2, 3]}):
        nodes = [oh.make_node("Constant", [], ["c"], **attrs), oh.make_node("Add", ["x", "c"], ["y"])]
        assert_exact(build_model(nodes, {"x": (np.int64, [2, 3])}, {"y": np.int64}), {"x": x})


# ---------------------------------------------------------------------------------------------
# Float islands (close to ORT, not bit-exact)
# ---------------------------------------------------------------------------------------------


def test_float_island_ops():
    rng = RNG(15)
    x = rng.normal(size=(2, 3, 6, 6)).astype(np.float32)
    m = rng.normal(size=(4, 6)).astype(np.float32)
    cases = [
        single_op("Softmax", {"x": x}, np.float32, axis=1),
        single_op("Softmax", {"x": x}, np.float32, opset=11, axis=2),  # legacy 2-D coercion
        single_op("LayerNormalization", {"x": x}, np.float32,
                  {"g": rng.normal(size=(6, 6)).astype(np.float32), "b": rng.normal(size=(6, 6)).astype(np.float32)},
                  axis=2, epsilon=1e-3),
        single_op("Erf", {"x": x}, np.float32),
        single_op("Sigmoid", {"x": x * 30}, np.float32),
        single_op("Tanh", {"x": x}, np.float32),
        single_op("Sqrt", {"x": np.abs(x)}, np.float32),
        single_op("Pow", {"x": np.abs(x)}, np.float32, {"e": np.float32(1.7)}),
        single_op("Div", {"x": x}, np.float32, {"d": np.float32(3.0)}),
        single_op("ReduceMean", {"x": x}, np.float32, axes=[2, 3], keepdims=1),
        single_op("MatMul", {"x": x}, np.float32, {"w": rng.normal(size=(6, 5)).astype(np.float32)}),
        single_op("Gemm", {"m": m}, np.float32, {"w": rng.normal(size=(5, 6)).astype(np.float32),
                                                 "c": rng.normal(size=(5,)).astype(np.float32)},
                  transB=1, alpha=0.5, beta=2.0),
        single_op("Conv", {"x": x}, np.float32, {"w": rng.normal(size=(6, 1, 3, 3)).astype(np.float32),
                                                 "b": rng.normal(size=(6,)).astype(np.float32)},
                  group=3, pads=[1, 1, 1, 1], strides=[2, 1], dilations=[1, 2]),
        single_op("GlobalAveragePool", {"x": x}, np.float32),
    ]
    for model in cases:
        feeds = {model.graph.input[0].name: {"x": x, "m": m}[model.graph.input[0].name]}
        if model.graph.node[0].op_type in ("Sqrt", "Pow"):
            feeds = {"x": np.abs(x)}
        elif model.graph.node[0].op_type == "Sigmoid":
            feeds = {"x": x * 30}
        assert_close(model, feeds)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_opset20(approximate):
    x = RNG(16).normal(0, 3, (4, 8)).astype(np.float32)
    model = single_op("Gelu", {"x": x}, np.float32, opset=20, approximate=approximate)
    assert_close(model, {"x": x})


# ---------------------------------------------------------------------------------------------
# The integer-only form end to end
# ---------------------------------------------------------------------------------------------


def _float_input(shape, seed: int) -> np.ndarray:
    # beyond the quantized input range (+-2.5), so the input quantizer saturates too
    return RNG(seed).uniform(-3.5, 3.5, shape).astype(np.float32)


def test_requantize_is_the_spec_pattern():
    nodes, inits = requantize("rq", "acc", "y", [0.01, 0.3], 5, shape=(-1,))
    assert [n.op_type for n in nodes] == ["Cast", "Mul", "Add", "Cast", "BitShift", "Cast", "Add", "Clip", "Cast"]
    m, s = inits["rq_M"], inits["rq_S"].astype(np.int64)
    assert np.all((m >= 2**29) & (m < 2**30))
    np.testing.assert_allclose(m / 2.0**s, [0.01, 0.3], rtol=2**-29)
    assert inits["rq_R"].dtype == np.int64 and inits["rq_S"].dtype == np.uint64


def test_requantize_rounds_half_up_exactly():
    """The 9-node pattern computes clip(floor((acc*M + 2^(S-1)) / 2^S) + zp) for every int32 acc,
    including +-2^31 extremes and exact ties (checked against Python big integers)."""
    rng = RNG(17)
    real = np.array([0.25, 0.003, 0.9999, 1.0 / 3.0], np.float64)
    m, s = dyadic(real)
    acc = np.concatenate([rng.integers(-2**31, 2**31, (4, 60)),
                          [[-2**31, 2**31 - 1, 2, -2, 6, -6, 1, -1]] * 4], axis=1).astype(np.int32)
    zp = 100  # so that negative results stay visible after the clip
    nodes, inits = requantize("rq", "acc", "y", real, zp, lo=0, hi=255, shape=(-1, 1))
    model = build_model(nodes, {"acc": (np.int32, list(acc.shape))}, {"y": np.uint8}, inits)
    out = assert_exact(model, {"acc": acc})[0]
    expected = [[min(255, max(0, ((int(a) * int(m[c]) + (1 << (int(s[c]) - 1))) >> int(s[c])) + zp)) for a in row]
                for c, row in enumerate(acc)]
    assert np.array_equal(out, np.array(expected, np.uint8))
    # ties round half up (toward +inf), M/2^S = 1/4 in row 0: 2 -> 0.5 -> 1, 6 -> 1.5 -> 2,
    # -2 -> -0.5 -> 0, -6 -> -1.5 -> -1
    assert list(out[0, -6:-2].astype(int) - zp) == [1, 0, 2, -1]


def test_integer_cnn_model_bit_exact():
    model = integer_cnn_model()
    assert {n.op_type for n in model.graph.node} <= SUPPORTED_OPS
    for seed in range(3):
        x = _float_input((2, 3, 8, 8), seed)
        y = assert_exact(model, {"x": x})[0]
        assert len(np.unique(y)) > 5  # the requant chain did not collapse everything to one value


def test_residual_model_bit_exact():
    model = residual_model()
    for seed in range(3):
        y = assert_exact(model, {"x": _float_input((2, 4, 6, 6), seed)})[0]
        assert len(np.unique(y)) > 20


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def test_unknown_op_names_the_node():
    x = np.ones((2, 2), np.float32)
    model = single_op("HardSwish", {"x": x}, np.float32, opset=14)
    with pytest.raises(UnsupportedModelError, match="HardSwish node 'the_hardswish'.*not supported"):
        run_reference(model, {"x": x})


def test_dtype_mismatch_is_an_error_not_a_promotion():
    # an invalid model (the checker would reject it): what a buggy pass could produce
    model = single_op("Add", {"a": np.ones(2, np.int32)}, np.int32, {"b": np.ones(2, np.int64)}, check=False)
    with pytest.raises(ReferenceInterpreterError, match="Add node 'the_add'.*one dtype"):
        run_reference(model, {"a": np.ones(2, np.int32)})


def test_missing_feed_and_wrong_feed_dtype():
    model = single_op("Relu", {"x": np.ones(2, np.float32)}, np.float32)
    with pytest.raises(ReferenceInterpreterError, match="no feed for graph input 'x'"):
        run_reference(model, {})
    with pytest.raises(ReferenceInterpreterError, match="dtype int32"):
        run_reference(model, {"x": np.ones(2, np.int32)})


def test_accepts_onnx_ir_model():
    from compiler.ir import from_proto

    model = residual_model(batch=1)
    x = _float_input((1, 4, 6, 6), 5)
    assert np.array_equal(run_reference(from_proto(model), {"x": x})[0], run_reference(model, {"x": x})[0])


def test_supported_ops_cover_the_spec():
    spec_ops = {"QuantizeLinear", "DequantizeLinear", "ConvInteger", "MatMulInteger", "Add", "Sub", "Mul",
                "Cast", "BitShift", "Clip", "Relu", "MaxPool", "ReduceSum", "Reshape", "Flatten", "Transpose",
                "Squeeze", "Unsqueeze", "Concat", "Identity"}
    assert spec_ops <= SUPPORTED_OPS


# ---------------------------------------------------------------------------------------------
# Ops of the I-BERT integer kernels and the transformer pass-throughs (passes/quantize docstring)
# ---------------------------------------------------------------------------------------------


def test_split_and_slice_on_uint8():
    x = random_integer_input(np.uint8, (2, 6, 5), RNG(20))
    cases = [
        single_op("Split", {"x": x}, [np.uint8] * 3, {"s": np.array([1, 2, 3], np.int64)}, axis=1),
        single_op("Split", {"x": x}, [np.uint8] * 2, {"s": np.array([1, 1], np.int64)}, axis=0),
        single_op("Split", {"x": x}, [np.uint8] * 3, axis=1),  # equal parts
        single_op("Slice", {"x": x}, np.uint8, {"b": np.array([1, -1], np.int64), "e": np.array([5, -6], np.int64),
                                               "a": np.array([1, 2], np.int64), "st": np.array([2, -2], np.int64)}),
        single_op("Slice", {"x": x}, np.uint8, {"b": np.array([0], np.int64), "e": np.array([2**62], np.int64)}),
    ]
    for model in cases:
        assert_exact(model, {"x": x})


@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_max_int64_and_uint8(keepdims):
    for dtype in (np.int64, np.uint8):
        x = random_integer_input(dtype, (3, 4, 5), RNG(21))
        assert_exact(single_op("ReduceMax", {"x": x}, dtype, axes=[-1], keepdims=keepdims), {"x": x})


def test_min_max_abs_neg_where_less_int64():
    rng = RNG(22)
    # below 2^31: ORT 1.31 mis-orders int64 Min/Max/Clip values in [2^31, 2^32), which the
    # integer kernels never produce
    a = rng.integers(-(2**30), 2**30, (3, 4), dtype=np.int64)
    b = rng.integers(-(2**30), 2**30, (4,), dtype=np.int64)
    for op in ("Min", "Max"):
        out = assert_exact(single_op(op, {"a": a}, np.int64, {"b": b}), {"a": a})[0]
        assert np.array_equal(out, (np.minimum if op == "Min" else np.maximum)(a, b))
    for op in ("Abs", "Neg"):
        assert_exact(single_op(op, {"a": a}, np.int64), {"a": a})
    assert_exact(single_op("Less", {"a": a}, np.bool_, {"b": b}), {"a": a})
    assert_exact(single_op("Greater", {"a": a}, np.bool_, {"b": b}), {"a": a})
    c = a > 0
    assert_exact(single_op("Where", {"c": c, "a": a}, np.int64, {"b": b}), {"c": c, "a": a})


def test_bit_shift_by_a_tensor_of_shifts():
    """i-exp's 2^-z: every element shifted by its own amount (0..63)."""
    x = RNG(23).integers(0, 2**62, (4, 16), dtype=np.uint64)
    s = np.tile(np.arange(0, 64, 4, dtype=np.uint64), (4, 1))
    out = assert_exact(single_op("BitShift", {"x": x, "s": s}, np.uint64, direction="RIGHT"), {"x": x, "s": s})[0]
    assert np.array_equal(out, x >> s)


def test_new_kernel_ops_are_supported():
    assert {"Split", "Slice", "ReduceMax", "Min", "Max", "Abs", "Neg", "Less", "Greater", "Where"} <= SUPPORTED_OPS
