"""1x1 convs on small images run on a flat, padded pixel row (targets/lowering/flat_pixels.py):
exact, taken by the pixel-vectorized rule, and applied only where it was measured to pay."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from tvm import relax  # noqa: E402

from targets.lowering import flat_pixels  # noqa: E402
from targets.lowering.schedules import conv1x1_int8  # noqa: E402
from tests.targets.test_schedules_int8 import (  # noqa: E402
    HOST_PIXEL_RULE_W7, HOST_VNNI, _emit_requant, _host_has_avx2, _requant_reference, build_prepared, compile_and_run, conv_case, conv_int64,
    host_target,
)

pytestmark = pytest.mark.tvm


def conv_requant_module(x_shape, w: np.ndarray, seed: int, residual: np.ndarray | None = None):
    """Relax module: a 1x1 conv of a uint8 input with ``w``, the int64 requantizer chain
    (zero point 3), and optionally an int32 add of the constant ``residual`` (not per-channel)."""
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x_shape, "uint8"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            acc = bb.emit(relax.op.nn.conv2d(xv, relax.const(w), out_dtype="int32"))
            y = _emit_requant(bb, acc, w.shape[0], [1, w.shape[0], 1, 1], 3, 0, 255, seed)
            if residual is not None:
                y = bb.emit(relax.op.add(relax.op.astype(y, "int32"), relax.const(residual)))
            gv = bb.emit_output(y)
        bb.emit_func_output(gv)
    return bb.get()


def _prepared_and_run(mod, x):
    """build_prepared (which applies the rewrite on AVX2 hosts) on this host, run on ``x``."""
    executable, report = build_prepared(mod, host_target())
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy(), report


@pytest.mark.parametrize("bound", [63, 127], ids=["w7", "w8"])
def test_expansion_on_14x14_is_rewritten_and_bit_exact(bound):
    mod, x, ref = conv_case(64, 14, 192, 1, 1, 0, True, weight_bound=bound)
    rewritten, count = flat_pixels.flatten_small_image_1x1(mod)
    assert count == 1
    script = rewritten.script()
    assert "R.nn.pad" in script and "R.strided_slice" in script
    y, _, _ = compile_and_run(rewritten, x, host_target())
    assert y.dtype == ref.dtype and np.array_equal(y, ref)


@pytest.mark.skipif(not _host_has_avx2(), reason="the rewrite and the pixel rules are for AVX2 hosts")
def test_rewritten_expansion_takes_the_pixel_rule():
    mod, x, ref = conv_case(64, 14, 192, 1, 1, 0, True, weight_bound=63)
    y, report = _prepared_and_run(mod, x)
    assert np.array_equal(y, ref)
    conv_rules = [rule for name, rule in report.scheduled.items() if "conv2d" in name]
    assert conv_rules == [HOST_PIXEL_RULE_W7], report.scheduled


@pytest.mark.parametrize(
    "c,h,f,k,stride,pad",
    [(64, 16, 192, 1, 1, 0), (64, 14, 192, 1, 2, 0), (64, 14, 192, 3, 1, 1), (64, 6, 192, 1, 1, 0),
     (66, 14, 192, 1, 1, 0)],
    ids=["whole-vectors", "stride-2", "3x3", "36-pixels", "c66"],
)
@pytest.mark.parametrize("lanes", [8, 16], ids=["avx2", "vnni"])
def test_rewrite_leaves_other_convs_alone(c, h, f, k, stride, pad, lanes):
    mod, _, _ = conv_case(c, h, f, k, stride, pad, True)
    rewritten, count = flat_pixels.flatten_small_image_1x1(mod, lanes=lanes)
    assert count == 0 and rewritten is mod


@pytest.mark.parametrize(
    "c,h,f", [(64, 7, 192), (192, 14, 64), (576, 14, 96), (960, 7, 320)],
    ids=["7x7-expansion", "projection", "projection-c576", "7x7-projection-c960"],
)
def test_avx2_policy_takes_7x7_images_and_projections(c, h, f):
    """On AVX2 (8-pixel vectors) every 1x1 conv with at least 49 pixels is rewritten, since the
    AVX2 pixel rule takes any C; with VNNI's 16-pixel vectors only the expansions with at least 64
    pixels and C <= MAX_CHANNELS are (measured, see flat_pixels.POLICIES)."""
    mod, _, _ = conv_case(c, h, f, 1, 1, 0, True)
    assert flat_pixels.flatten_small_image_1x1(mod, lanes=8)[1] == 1
    assert flat_pixels.flatten_small_image_1x1(mod, lanes=16)[1] == 0


@pytest.mark.skipif(not _host_has_avx2(), reason="the rewrite and the pixel rules are for AVX2 hosts")
@pytest.mark.parametrize("c,h,f", [(320, 7, 64), (64, 7, 96)], ids=["7x7-projection-c320", "7x7-expansion"])
def test_rewritten_7x7_conv_bit_exact(c, h, f):
    """A 7x7 image padded to 56 pixels through build.prepare on this host: bit-exact, and on an
    AVX2 host without VNNI the pixel rule takes the padded row."""
    mod, x, ref = conv_case(c, h, f, 1, 1, 0, True, seed=9)
    y, report = _prepared_and_run(mod, x)
    assert y.dtype == ref.dtype and np.array_equal(y, ref)
    if not HOST_VNNI:
        conv_rules = [rule for name, rule in report.scheduled.items() if "conv2d" in name]
        assert conv_rules == [conv1x1_int8.Conv1x1Int8PixelsAVX2.name], report.scheduled


def test_vnni_lanes_pad_to_whole_16_pixel_vectors():
    """With VNNI's 16-pixel vectors (build.prepare on VNNI targets) 196 pixels pad to 208, and a
    64-pixel image (whole 16-pixel vectors) is left alone, a 100-pixel one is padded; the padded
    module stays exact."""
    mod, x, ref = conv_case(64, 14, 192, 1, 1, 0, True)
    rewritten, count = flat_pixels.flatten_small_image_1x1(mod, lanes=16)
    assert count == 1 and "208" in rewritten.script()
    y, _, _ = compile_and_run(rewritten, x, host_target())
    assert np.array_equal(y, ref)
    assert flat_pixels.flatten_small_image_1x1(conv_case(64, 8, 192, 1, 1, 0, True)[0], lanes=16)[1] == 0
    assert flat_pixels.flatten_small_image_1x1(conv_case(64, 10, 192, 1, 1, 0, True)[0], lanes=16)[1] == 1


def test_epilogue_chain_stops_at_a_residual_add():
    """The chain covers only ops whose other operands are constants; the residual Add after it
    reads the cropped [N, F, H, W] result."""
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, size=(1, 32, 14, 14)).astype(np.uint8)
    r = rng.integers(0, 256, size=(1, 96, 14, 14)).astype(np.uint8)
    w = rng.integers(-127, 128, size=(96, 32, 1, 1)).astype(np.int8)
    mod = conv_requant_module(x.shape, w, 5, residual=r.astype(np.int32))
    rewritten, count = flat_pixels.flatten_small_image_1x1(mod)
    assert count == 1
    expected = _requant_reference(conv_int64(x, w), 1, 3, 0, 255, 5).astype(np.int32) + r
    y, _, _ = compile_and_run(rewritten, x, host_target())
    assert np.array_equal(y, expected)


def test_batched_expansion_is_bit_exact():
    rng = np.random.default_rng(6)
    x = rng.integers(0, 256, size=(2, 32, 14, 14)).astype(np.uint8)
    w = rng.integers(-63, 64, size=(64, 32, 1, 1)).astype(np.int8)
    mod = conv_requant_module(x.shape, w, 7)
    assert flat_pixels.flatten_small_image_1x1(mod)[1] == 1
    y, _ = _prepared_and_run(mod, x)
    assert np.array_equal(y, _requant_reference(conv_int64(x, w), 1, 3, 0, 255, 7))
