"""The pixel-vectorized int8 1x1 conv rules (conv1x1_int8): Conv1x1Int8PixelsAVX2 on AVX2 without VNNI,
Conv1x1Int8PixelsVNNI on AVX-512 VNNI (its numeric cases need a VNNI host).

Numeric cases compile for this host's CPU when it is an AVX2 CPU without VNNI, else for ``haswell``,
and compare bit for bit with a numpy int64 reference (or ONNX Runtime's exact u8 x u8
ConvInteger); claim tests only analyse functions.
"""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm


from targets.lowering.schedules import conv1x1_int8, conv2d_int8  # noqa: E402
from tests.targets.test_schedules_int8 import (  # noqa: E402
    HOST_VNNI,
    needs_vnni,
    _host_has_avx2,
    bare_conv_module,
    compile_and_run,
    conv_case,
    conv_int64,
    host_target,
    only_rule,
)
from tests.targets.test_schedules_int8_avx2 import _check_kernel, _first_claim, avx2_target  # noqa: E402

if not _host_has_avx2():
    pytest.skip("host CPU has no AVX2", allow_module_level=True)

PIXELS = conv1x1_int8.Conv1x1Int8PixelsAVX2.name


@pytest.mark.parametrize(
    "c,h,f,requant",
    [(16, 16, 96, True), (24, 8, 48, False), (2, 4, 8, True), (160, 8, 16, True), (64, 32, 24, True)],
    ids=["16to96-requant", "24to48", "c2", "160to16-requant", "64to24-chunked"],
)
def test_conv1x1_pixels_bit_exact(c, h, f, requant):
    mod, x, ref = conv_case(c, h, f, 1, 1, 0, requant, seed=11)
    y, report, asm = compile_and_run(mod, x, target=avx2_target())
    assert y.dtype == ref.dtype and y.shape == ref.shape
    assert np.array_equal(y, ref), f"{np.count_nonzero(y != ref)} mismatches"
    assert only_rule(report) == PIXELS
    _check_kernel(asm)
    assert "vpbroadcastd" in asm  # the int16 weight pair: one 32-bit broadcast


@pytest.mark.parametrize("weight_bound,rule,depth", [(127, PIXELS, 2), (63, conv1x1_int8.Conv1x1Int8PixelsAVX2Maddubs.name, 4)],
                         ids=["vpmaddwd", "vpmaddubsw"])
def test_conv1x1_pixels_data_pack_is_a_byte_transpose(weight_bound, rule, depth):
    """The [N, C/depth, H*W, depth] data pack interleaves `depth` channel rows of P pixels per
    transpose intrinsic (P = 16 on a 16-wide image) instead of scattering bytes; bit-exact."""
    from tests.targets.test_schedules_int8 import schedule

    mod, x, ref = conv_case(24, 16, 48, 1, 1, 0, True, seed=4, weight_bound=weight_bound)
    y, report, _ = compile_and_run(mod, x, target=avx2_target())
    assert np.array_equal(y, ref), f"{np.count_nonzero(y != ref)} mismatches"
    assert only_rule(report) == rule
    scheduled, _ = schedule(mod, avx2_target())
    script = "\n".join(f.script() for _, f in scheduled.functions_items() if isinstance(f, tvm.tirx.PrimFunc))
    assert "T.Shuffle" in script
    assert f"(T.int64({depth}), T.int64(1), T.int64(16)), \"uint8\"" in script  # the intrinsic's source rows


def test_conv1x1_pixels_batch_exact():
    """Batch 3: each image's data pack is made right before its tiles; bit-exact per image."""
    rng = np.random.default_rng(8)
    x = rng.integers(0, 256, size=(3, 24, 8, 8)).astype(np.uint8)
    w = rng.integers(-127, 128, size=(40, 24, 1, 1)).astype(np.int8)
    y, report, _ = compile_and_run(bare_conv_module(x.shape, w), x, target=avx2_target())
    assert np.array_equal(y, conv_int64(x, w).astype(np.int32))
    assert only_rule(report) == PIXELS


def test_conv1x1_pixels_extreme_values_exact():
    """All-255 activations times +-127 weights: vpmaddubsw would saturate every pair sum."""
    rng = np.random.default_rng(3)
    x = np.full((1, 64, 8, 8), 255, np.uint8)
    w = np.where(rng.integers(0, 2, size=(32, 64, 1, 1)) == 1, 127, -127).astype(np.int8)
    w[:4] = -127  # channels whose every product is the most negative one
    y, report, _ = compile_and_run(bare_conv_module(x.shape, w), x, target=avx2_target())
    expect = conv_int64(x, w)
    assert np.array_equal(y, expect.astype(np.int32))
    assert expect.min() == -64 * 255 * 127
    assert only_rule(report) == PIXELS


def test_convinteger_with_activation_zero_point_exact(tmp_path):
    """MobileNetV2's expansion form: ONNX ConvInteger with an activation zero point (the input of
    a linear projection) and offset-binary weights, lowered by the integer converters (zero-point
    pad + correction) and claimed by the pixel rule; equal to ONNX Runtime bit for bit."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from targets import get_target
    from targets.lowering import integer_ops, load_library, lower_model

    rng = np.random.default_rng(4)
    w = (rng.integers(-127, 128, size=(48, 16, 1, 1)) + 128).astype(np.uint8)
    graph = helper.make_graph(
        [helper.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["y"])],
        "expansion",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 16, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 48, 16, 16])],
        [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(np.array(131, np.uint8), "xz"),
         onnx.numpy_helper.from_array(np.array(128, np.uint8), "wz")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=9)
    integer_ops.install_converters()
    result = lower_model(model, get_target("cpu"), {}, tmp_path)
    library = load_library(tmp_path / result.library_file, result.input_names)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for seed in range(2):
        x = np.random.default_rng(seed).integers(0, 256, size=(1, 16, 16, 16)).astype(np.uint8)
        (got,) = library.run({"x": x})
        assert np.array_equal(got, session.run(None, {"x": x})[0])
    if not HOST_VNNI:  # the cpu target is this host: an AVX2 CPU without VNNI
        assert PIXELS in result.scheduled.values(), result.scheduled


@pytest.mark.parametrize(
    "c,h,f,k,stride,pad",
    [(16, 8, 32, 3, 1, 1), (16, 16, 32, 1, 2, 0), (16, 10, 32, 1, 1, 0)],
    ids=["3x3", "1x1s2", "100px"],
)
def test_pixel_rule_declines(c, h, f, k, stride, pad):
    """Not a 1x1 stride-1 conv, or pixels not a multiple of 8: the channel-vectorized AVX2 rule
    takes it."""
    assert _first_claim(conv_case(c, h, f, k, stride, pad, False)[0], host_target("znver3")) == conv2d_int8.Conv2dInt8AVX2.name


def test_pixel_rule_takes_any_number_of_input_channels():
    """On AVX2 the pixel rule has no channel bound (MobileNetV2's 576->96 and 960->320 layers run
    faster on it, see conv1x1_int8), unlike the VNNI rule's MAX_CHANNELS."""
    for c in (264, 960):
        assert _first_claim(conv_case(c, 8, 16, 1, 1, 0, False)[0], host_target("znver3")) == PIXELS


def test_pixel_rule_many_input_channels_bit_exact():
    """A 400-channel projection (the reduction longer than MAX_CHANNELS) on the AVX2 pixel rule."""
    mod, x, ref = conv_case(400, 8, 24, 1, 1, 0, True, seed=13)
    y, report, _ = compile_and_run(mod, x, target=avx2_target())
    assert np.array_equal(y, ref), f"{np.count_nonzero(y != ref)} mismatches"
    assert only_rule(report) == PIXELS


VNNI_PIXELS = conv1x1_int8.Conv1x1Int8PixelsVNNI.name


@pytest.mark.parametrize(
    "c,h,f,expected",
    [(16, 16, 32, VNNI_PIXELS), (24, 8, 24, VNNI_PIXELS), (144, 8, 24, VNNI_PIXELS),
     (64, 8, 32, VNNI_PIXELS), (16, 14, 96, conv2d_int8.Conv2dInt8VNNI.name),
     (320, 8, 32, conv2d_int8.Conv2dInt8VNNI.name), (16, 16, 32, None)],
    ids=["expansion", "f24", "projection-f24", "projection-f32", "196px", "c320", "avx2-target"],
)
def test_vnni_pixel_rule_claims(c, h, f, expected):
    """On VNNI targets the pixel rule takes every 1x1 stride-1 conv with H*W % 16 == 0 and
    C <= MAX_CHANNELS, expansions and projections; 14x14 images (unless flat_pixels padded them)
    and more input channels stay with the channel-vectorized rule; the VNNI pixel rule never
    claims on an AVX2 target."""
    mcpu = "haswell" if expected is None else "znver4"
    claimed = _first_claim(conv_case(c, h, f, 1, 1, 0, False)[0], host_target(mcpu))
    if expected is None:
        assert claimed == PIXELS
    else:
        assert claimed == expected


@needs_vnni
@pytest.mark.parametrize(
    "c,h,f,requant",
    [(16, 16, 96, True), (24, 8, 48, False), (144, 8, 24, True), (64, 32, 24, True), (192, 8, 32, True)],
    ids=["16to96-requant", "24to48", "144to24-requant", "64to24-chunked", "192to32-requant"],
)
def test_vnni_pixel_rule_bit_exact(c, h, f, requant):
    mod, x, ref = conv_case(c, h, f, 1, 1, 0, requant, seed=12)
    y, report, asm = compile_and_run(mod, x, target=host_target())
    assert np.array_equal(y, ref), f"{np.count_nonzero(y != ref)} mismatches"
    assert only_rule(report) == VNNI_PIXELS
    assert "vpdpbusd" in asm and "zmm" in asm


@needs_vnni
def test_vnni_pixel_rule_extreme_values_and_batch_exact():
    """Batch 2, all-255 activations times +-127 weights (every product at its extreme)."""
    rng = np.random.default_rng(5)
    x = np.full((2, 32, 8, 8), 255, np.uint8)
    x[1] = rng.integers(0, 256, size=(32, 8, 8))
    w = np.where(rng.integers(0, 2, size=(80, 32, 1, 1)) == 1, 127, -128).astype(np.int8)
    w[:16] = -128
    y, report, _ = compile_and_run(bare_conv_module(x.shape, w), x, target=host_target())
    expect = conv_int64(x, w)
    assert expect.min() == -32 * 255 * 128
    assert np.array_equal(y, expect.astype(np.int32))
    assert only_rule(report) == VNNI_PIXELS


def test_pixel_tile_choice():
    assert conv1x1_int8.choose_tile(1568, 96) == (2, 4)  # 16->96 @112: 8 accumulators
    assert conv1x1_int8.choose_tile(2, 8) == (2, 4)
    for vectors, f in ((1568, 24), (8, 16), (3, 8), (98, 144)):
        nb, t = conv1x1_int8.choose_tile(vectors, f)
        assert vectors % nb == 0 and f % t == 0 and nb * t <= 8
