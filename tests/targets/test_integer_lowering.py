"""Integer-only models through TVM: bit-exact to ONNX Runtime and to compiler.reference.

The models are the hand-built integer-only graphs of tests/compiler/test_reference.py (the exact
node patterns of the passes/quantize docstring), lowered with ``targets.lowering.lower_model`` for
the ``cpu`` target after ``install_converters()``. Every comparison is EXACT (np.array_equal, same
dtype and shape): integer graphs are bit-exact between reference, ORT and TVM (DESIGN.md).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("tvm")

from compiler.reference import run_reference  # noqa: E402
from compiler.verify import run_onnxruntime  # noqa: E402
from tests.helpers import ort_exact_form  # noqa: E402
from targets import get_target  # noqa: E402
from targets.lowering import importer, integer_ops, load_library, lower_model  # noqa: E402
from tests.compiler.test_reference import (  # noqa: E402
    conv_integer_model,
    integer_cnn_model,
    random_integer_input,
    residual_model,
    single_op,
)

pytestmark = pytest.mark.tvm

RNG = np.random.default_rng


@pytest.fixture(scope="module", autouse=True)
def _converters():
    integer_ops.install_converters()


def _assert_equal(actual: list[np.ndarray], expected: list[np.ndarray], what: str) -> None:
    assert len(actual) == len(expected), what
    for a, e in zip(actual, expected):
        assert a.dtype == e.dtype and a.shape == e.shape, (what, a.dtype, a.shape, e.dtype, e.shape)
        differ = a != e
        assert not differ.any(), f"{what}: {int(differ.sum())} of {a.size} differ, e.g. {a[differ][:5]} vs {e[differ][:5]}"


def assert_tvm_exact(model: onnx.ModelProto, feeds_list: list[dict], out_dir: Path, ort: bool = True) -> None:
    """Lower once, then for every feed: TVM == reference, and (``ort``) reference == ORT."""
    result = lower_model(model, get_target("cpu"), {}, out_dir)
    library = load_library(out_dir / result.library_file, result.input_names)
    for feeds in feeds_list:
        expected = run_reference(model, feeds)
        _assert_equal(library.run(feeds), expected, "TVM vs reference")
        if ort:
            _assert_equal(run_onnxruntime(ort_exact_form(model), feeds), expected, "ORT vs reference")


def _feeds_for(model: onnx.ModelProto, seeds=(0, 1)) -> list[dict]:
    value = model.graph.input[0]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
    shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
    return [{value.name: random_integer_input(dtype, shape, RNG(seed))} for seed in seeds]


# ---------------------------------------------------------------------------------------------
# Installation
# ---------------------------------------------------------------------------------------------


def test_frontend_itself_lacks_conv_integer():
    """Why the converter exists: TVM 0.27's own table has no ConvInteger. If this fails, TVM added
    one: compare it with ours before dropping ours."""
    from tvm.relax.frontend.onnx import onnx_frontend

    original = getattr(onnx_frontend._get_convert_map, "__wrapped__", onnx_frontend._get_convert_map)
    assert "ConvInteger" not in original()
    assert "MatMulInteger" in original() and "BitShift" in original()


def test_install_is_idempotent_and_seen_by_the_support_check():
    from tvm.relax.frontend.onnx import onnx_frontend

    integer_ops.install_converters()
    wrapped = onnx_frontend._get_convert_map
    integer_ops.install_converters()
    assert onnx_frontend._get_convert_map is wrapped  # no nesting
    assert integer_ops.installed()
    assert integer_ops.SUPPORTED_EXTRA_OPS == {"ConvInteger", "MatMulInteger"}
    assert onnx_frontend._get_convert_map()["ConvInteger"] is integer_ops.ConvInteger
    importer.check_supported(integer_cnn_model())  # raises UnsupportedModelError if not seen


def test_integer_only_conv_keeps_int8_operands():
    """The spec's ConvInteger (constant x zero point, no weight zero point) lowers to a uint8 x int8
    conv2d (what an int8 dot-product schedule needs), with the zero point as an explicit pad value
    and a per-channel correction, not an int32 x int32 conv."""
    text = importer.import_onnx(conv_integer_model(np.uint8, pads=(1, 1, 1, 1)), {}).script()
    assert 'R.nn.pad(x, pad_width=[0, 0, 0, 0, 1, 1, 1, 1], pad_value=3.0' in text
    assert 'R.astype(x, dtype="int32")' not in text
    assert "R.nn.conv2d(" in text and 'out_dtype="int32"' in text


def test_offset_binary_weights_fold_back_to_int8(tmp_path):
    """The integer-only form stores weights next to uint8 activations as uint8 w_q + 128 with
    zero point 128 (so ONNX Runtime uses its exact u8 x u8 kernels): the converters fold the zero
    point back into an int8 weight, so the lowered conv / matmul are the same u8 x i8 ops the
    int8 dot-product schedules take, and the result stays exact."""
    from tests.compiler.test_reference import offset_binary

    model = conv_integer_model(np.uint8, pads=(1, 1, 1, 1))
    w = onnx.numpy_helper.to_array(model.graph.initializer[0])
    model.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(offset_binary(w), "W"))
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.uint8(128), "wzp"))
    model.graph.node[0].input.append("wzp")
    text = importer.import_onnx(model, {}).script()
    assert 'R.astype(x, dtype="int32")' not in text and "R.nn.conv2d(" in text
    assert_tvm_exact(model, _feeds_for(model), tmp_path / "conv")

    rng = RNG(3)
    a = random_integer_input(np.uint8, (3, 64), rng)
    b = random_integer_input(np.int8, (64, 32), rng)
    b[b == -128] = -127
    matmul = single_op("MatMulInteger", {"a": a}, np.int32,
                       {"b": offset_binary(b), "az": np.array(7, np.uint8), "bz": np.array(128, np.uint8)})
    text = importer.import_onnx(matmul, {}).script()
    assert re.search(r'R\.matmul\(a, metadata\["[\w.]+"\]\[0\], out_dtype="int32"\)', text), text
    assert_tvm_exact(matmul, [{"a": a}], tmp_path / "matmul")


# ---------------------------------------------------------------------------------------------
# ConvInteger
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x_dtype, kwargs",
    [
        (np.uint8, {"pads": (1, 1, 1, 1)}),
        (np.int8, {"x_zero_point": -4, "pads": (1, 1, 1, 1)}),
        (np.uint8, {"x_zero_point": 0}),
        (np.uint8, {"strides": (2, 2), "pads": (1, 1, 1, 1)}),
        (np.uint8, {"pads": (1, 0, 2, 1), "dilations": (2, 1)}),
        (np.uint8, {"channels": 6, "out_channels": 6, "group": 6, "pads": (1, 1, 1, 1)}),
        (np.uint8, {"channels": 8, "out_channels": 8, "group": 8, "strides": (2, 2), "pads": (1, 1, 1, 1),
                    "x_zero_point": 255}),
        (np.int8, {"channels": 4, "out_channels": 6, "group": 2, "strides": (2, 1), "x_zero_point": None}),
        (np.uint8, {"w_zero_point": 5, "size": 7, "pads": (1, 1, 1, 1)}),
        (np.uint8, {"kernel": (1, 1), "channels": 16, "out_channels": 8}),
    ],
    ids=["u8-pad", "i8-pad", "u8-zp0", "stride2-pad", "asym-pad-dilation", "depthwise",
         "depthwise-stride2-zp255", "grouped-i8-nozp", "w-zp", "1x1"],
)
def test_conv_integer(tmp_path, x_dtype, kwargs):
    model = conv_integer_model(x_dtype, **kwargs)
    assert_tvm_exact(model, _feeds_for(model), tmp_path)


def test_conv_integer_per_channel_weight_zero_point(tmp_path):
    # ORT supports only a scalar w_zero_point; the reference is checked against ORT channel by
    # channel in tests/compiler/test_reference.py
    rng = RNG(3)
    x = random_integer_input(np.uint8, (1, 3, 6, 6), rng)
    consts = {"w": random_integer_input(np.int8, (4, 3, 3, 3), rng), "xz": np.uint8(9),
              "wz": np.array([0, -128, 127, 7], np.int8)}
    model = single_op("ConvInteger", {"x": x}, np.int32, consts, pads=[1, 1, 1, 1])
    assert_tvm_exact(model, [{"x": x}], tmp_path, ort=False)


def test_conv_integer_auto_pad_same(tmp_path):
    rng = RNG(4)
    x = random_integer_input(np.uint8, (1, 3, 7, 7), rng)
    consts = {"w": random_integer_input(np.int8, (4, 3, 2, 2), rng), "xz": np.uint8(100)}
    model = single_op("ConvInteger", {"x": x}, np.int32, consts, auto_pad="SAME_LOWER", strides=[2, 2])
    assert_tvm_exact(model, [{"x": x}], tmp_path)


# ---------------------------------------------------------------------------------------------
# The frontend's own converters, for the dtypes of the integer-only form
# ---------------------------------------------------------------------------------------------


def _spec_op_cases() -> dict[str, tuple[onnx.ModelProto, list[dict]]]:
    rng = RNG(5)
    i64 = random_integer_input(np.int64, (2, 3, 4), rng)
    u64 = random_integer_input(np.uint64, (2, 4, 3, 3), rng)
    big = np.array([2**40 + 3, -5, 2**61], np.int64).reshape(3, 1)
    u8 = random_integer_input(np.uint8, (2, 3, 8, 8), rng)
    acc = rng.integers(0, 255 * 64, (2, 8, 4, 4)).astype(np.int32)
    # QuantizeLinear: many values right at and next to ties of x / scale, and saturating ones
    ties = (np.arange(-300, 300) + 0.5).astype(np.float32)
    xf = np.concatenate([ties * np.float32(0.0173), np.nextafter(ties, 0) * np.float32(0.0173),
                         ties * np.float32(0.25), [1e6, -1e6, np.inf, -np.inf]]).astype(np.float32).reshape(1, -1)
    per_axis = rng.normal(0, 2, (2, 3, 4)).astype(np.float32)
    t = onnx.TensorProto
    cases = {
        "bitshift-u64-per-channel": (single_op("BitShift", {"x": u64}, np.uint64, {
            "s": np.array([1, 17, 40, 63], np.uint64).reshape(4, 1, 1)}, direction="RIGHT"), {"x": u64}),
        "mul-i64-const-2^61": (single_op("Mul", {"x": i64}, np.int64, {"c": big}), {"x": i64}),
        "add-i64-const-2^62": (single_op("Add", {"x": i64}, np.int64, {"c": big + 2**62 - 2**61}), {"x": i64}),
        "sub-i64": (single_op("Sub", {"x": i64}, np.int64, {"c": big}), {"x": i64}),
        "cast-i64-u64": (single_op("Cast", {"x": i64}, np.uint64, to=t.UINT64), {"x": i64}),
        "cast-u64-i64": (single_op("Cast", {"x": u64}, np.int64, to=t.INT64), {"x": u64}),
        "cast-i64-u8": (single_op("Cast", {"x": i64}, np.uint8, to=t.UINT8), {"x": i64}),
        "cast-i32-i64": (single_op("Cast", {"x": acc}, np.int64, to=t.INT64), {"x": acc}),
        "clip-i64": (single_op("Clip", {"x": i64}, np.int64, {"lo": np.int64(-2**40), "hi": np.int64(255)}),
                     {"x": i64}),
        "maxpool-u8-ceil-pad": (single_op("MaxPool", {"x": u8}, np.uint8, kernel_shape=[3, 3], strides=[2, 2],
                                          pads=[1, 1, 1, 1], ceil_mode=1), {"x": u8}),
        "reducesum-i32": (single_op("ReduceSum", {"x": acc}, np.int32, {"axes": np.array([2, 3], np.int64)},
                                    keepdims=1), {"x": acc}),
        "quantize-u8-ties": (single_op("QuantizeLinear", {"x": xf}, np.uint8, {"s": np.float32(0.0173),
                                                                              "zp": np.uint8(128)}), {"x": xf}),
        "quantize-i8-ties": (single_op("QuantizeLinear", {"x": xf}, np.int8, {"s": np.float32(0.25),
                                                                             "zp": np.int8(-3)}), {"x": xf}),
        "quantize-per-axis": (single_op("QuantizeLinear", {"x": per_axis}, np.uint8, {
            "s": np.array([0.01, 0.05, 0.2], np.float32), "zp": np.array([0, 100, 255], np.uint8)}),
            {"x": per_axis}),
        "dequantize-u8": (single_op("DequantizeLinear", {"x": u8}, np.float32, {"s": np.float32(0.037),
                                                                               "zp": np.uint8(7)}), {"x": u8}),
    }
    for a_dtype in (np.uint8, np.int8):
        for b_dtype in (np.uint8, np.int8):
            a = random_integer_input(a_dtype, (2, 5, 16), rng)
            consts = {"b": random_integer_input(b_dtype, (16, 7), rng), "az": np.array(9, a_dtype),
                      "bz": np.array(np.arange(7) - 3 * (b_dtype == np.int8), b_dtype)}
            name = f"matmulinteger-{np.dtype(a_dtype).name}x{np.dtype(b_dtype).name}"
            cases[name] = (single_op("MatMulInteger", {"a": a}, np.int32, consts), {"a": a})
    return cases


def _weight_matmul_cases() -> dict[str, tuple[onnx.ModelProto, dict]]:
    """The integer-only form's MatMulInteger: constant int8 weight, no weight zero point (our
    converter keeps it u8 x i8 for VNNI), with a zero or non-zero activation zero point."""
    rng = RNG(11)
    cases = {}
    for a_dtype, zero in ((np.uint8, 131), (np.uint8, 0), (np.int8, -5)):
        a = random_integer_input(a_dtype, (3, 64), rng)
        consts = {"b": random_integer_input(np.int8, (64, 32), rng), "az": np.array(zero, a_dtype)}
        cases[f"matmulinteger-weight-{np.dtype(a_dtype).name}-zp{zero}"] = (
            single_op("MatMulInteger", {"a": a}, np.int32, consts), {"a": a})
    return cases


_SPEC_OP_CASES = {**_spec_op_cases(), **_weight_matmul_cases()}


def test_weight_matmul_integer_keeps_int8_operands():
    """A constant int8 weight without zero point lowers to a u8 x i8 -> i32 matmul (what the VNNI
    matmul rule claims), with the activation zero point moved to a constant correction."""
    model, _ = _weight_matmul_cases()["matmulinteger-weight-uint8-zp131"]
    text = importer.import_onnx(model, {}).script()
    assert re.search(r'R\.matmul\(a, metadata\["[\w.]+"\]\[0\], out_dtype="int32"\)', text)
    assert "R.astype(" not in text and "R.subtract(" in text


@pytest.mark.parametrize("case", sorted(_SPEC_OP_CASES))
def test_frontend_converter_is_exact(tmp_path, case):
    model, feeds = _SPEC_OP_CASES[case]
    assert_tvm_exact(model, [feeds], tmp_path)


# ---------------------------------------------------------------------------------------------
# Whole integer-only models
# ---------------------------------------------------------------------------------------------


def _float_inputs(shape, seeds) -> list[dict]:
    # beyond the input quantizer's range (about +-2.5), so it saturates too
    return [{"x": RNG(seed).uniform(-3.5, 3.5, shape).astype(np.float32)} for seed in seeds]


def test_integer_cnn_model(tmp_path):
    """QuantizeLinear -> ConvInteger -> 9-node per-channel requant (Relu folded) -> MaxPool ->
    ReduceSum average pool + requant -> MatMulInteger -> requant -> DequantizeLinear."""
    assert_tvm_exact(integer_cnn_model(), _float_inputs((2, 3, 8, 8), range(3)), tmp_path)


def test_residual_model(tmp_path):
    """ConvInteger + requant, then the integer residual Add with per-branch multipliers."""
    assert_tvm_exact(residual_model(), _float_inputs((2, 4, 6, 6), range(3)), tmp_path)


# ---------------------------------------------------------------------------------------------
# ConvInteger: input channels padded to a multiple of 4 (the RGB stem conv gets the VNNI rule)
# ---------------------------------------------------------------------------------------------


def _host_has_vnni() -> bool:
    try:
        return "avx512_vnni" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def test_conv_integer_channels_padded_to_multiple_of_4():
    """C = 3 (RGB): x is padded with its zero point to 4 channels, w with a zero channel, in the
    same pad op as the spatial padding; groups > 1 and C % 4 == 0 are left alone."""
    text = importer.import_onnx(conv_integer_model(np.uint8, channels=3, out_channels=16,
                                                   pads=(1, 1, 1, 1)), {}).script()
    assert 'R.nn.pad(x, pad_width=[0, 0, 0, 1, 1, 1, 1, 1], pad_value=3.0' in text
    assert "R.Tensor((1, 4, 11, 11), dtype=\"uint8\")" in text  # 3 channels + 1 padded
    assert integer_ops.channel_pad(3, 1, np.zeros((16, 3, 3, 3), np.int8)) == 1
    assert integer_ops.channel_pad(6, 1, np.zeros((16, 6, 1, 1), np.int8)) == 2
    assert integer_ops.channel_pad(8, 1, np.zeros((16, 8, 1, 1), np.int8)) == 0
    assert integer_ops.channel_pad(6, 6, np.zeros((6, 1, 3, 3), np.int8)) == 0
    assert integer_ops.channel_pad(3, 1, None) == 0  # a runtime weight: not padded


@pytest.mark.parametrize(
    "kwargs",
    [
        {"channels": 3, "out_channels": 16, "pads": (1, 1, 1, 1), "size": 12},
        {"channels": 3, "out_channels": 32, "kernel": (7, 7), "strides": (2, 2), "pads": (3, 3, 3, 3),
         "size": 20, "x_zero_point": 128},
        {"channels": 6, "out_channels": 16, "kernel": (1, 1), "x_zero_point": 0, "size": 8},
        {"channels": 3, "out_channels": 6, "x_zero_point": None},
    ],
    ids=["rgb-3x3", "rgb-7x7s2-stem", "c6-1x1-zp0", "rgb-f6-nozp"],
)
def test_conv_integer_padded_channels_exact_and_vnni(tmp_path, kwargs):
    model = conv_integer_model(np.uint8, **kwargs)
    assert_tvm_exact(model, _feeds_for(model), tmp_path)
    if _host_has_vnni() and kwargs["out_channels"] % 16 == 0:
        result = lower_model(model, get_target("cpu"), {}, tmp_path / "again")
        # the channel-vectorized VNNI rule, or for the 1x1 expansion the pixel-vectorized one
        assert {"conv2d-int8-vnni", "conv1x1-int8-vnni"} & set(result.scheduled.values()), result.scheduled


@pytest.mark.parametrize("n, zero", [(1000, 131), (40, 0), (7, 17)], ids=["n1000-zp131", "n40-zp0", "n7-zp17"])
def test_weight_matmul_integer_pads_columns_to_16(tmp_path, n, zero):
    """N % 16 != 0 (a classifier's 1000 classes): the weight gets zero columns up to a multiple of
    16 and the result is sliced back; exact, and the matmul is claimed by the VNNI rule."""
    rng = RNG(5)
    a = random_integer_input(np.uint8, (1, 96), rng)
    consts = {"b": random_integer_input(np.int8, (96, n), rng), "az": np.array(zero, np.uint8)}
    model = single_op("MatMulInteger", {"a": a}, np.int32, consts)
    text = importer.import_onnx(model, {}).script()
    assert "R.strided_slice(" in text
    assert_tvm_exact(model, [{"a": a}, {"a": random_integer_input(np.uint8, (1, 96), rng)}], tmp_path)
    if _host_has_vnni():
        result = lower_model(model, get_target("cpu"), {}, tmp_path / "again")
        assert "matmul-int8-vnni" in set(result.scheduled.values()), result.scheduled
