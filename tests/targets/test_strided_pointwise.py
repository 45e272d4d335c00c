"""Strided 1x1 convs become a subsampling slice + a stride-1 conv (targets/lowering/strided_pointwise.py):
exact for int8 and float, taken by the pointwise kernels, and only for 1x1 unpadded convs."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from tvm import relax  # noqa: E402

from targets.lowering import strided_pointwise  # noqa: E402
from tests.targets.test_schedules_int8 import (  # noqa: E402
    HOST_PIXEL_RULE_W7, _host_has_avx2, build_prepared, compile_and_run, conv_case, host_target,
)

pytestmark = pytest.mark.tvm


@pytest.mark.parametrize("c,h,f,stride", [(64, 56, 128, 2), (128, 28, 256, 2), (64, 15, 64, 2), (32, 12, 64, 3)],
                         ids=["56-s2", "28-s2-flat", "odd-15", "s3"])
def test_int8_strided_1x1_is_rewritten_and_bit_exact(c, h, f, stride):
    mod, x, ref = conv_case(c, h, f, 1, stride, 0, True)
    rewritten, count = strided_pointwise.subsample_strided_pointwise(mod)
    assert count == 1
    script = rewritten.script()
    assert "R.strided_slice" in script and f"strides=[{stride}, {stride}]" not in script.split("R.nn.conv2d")[1]
    y, _, _ = compile_and_run(rewritten, x, host_target())
    assert y.shape == ref.shape and np.array_equal(y, ref)


@pytest.mark.skipif(not _host_has_avx2(), reason="the int8 pointwise rules are for AVX2 hosts")
def test_rewritten_int8_downsample_takes_the_pixel_rule():
    """In build.prepare on x86: ResNet-18's 64->128 @56 stride-2 shortcut runs on the
    pixel-vectorized 1x1 rule (28*28 pixels are whole vectors), bit-exact."""
    mod, x, ref = conv_case(64, 56, 128, 1, 2, 0, True, weight_bound=63)
    executable, report = build_prepared(mod, host_target())
    y = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    assert np.array_equal(y, ref)
    conv_rules = [rule for name, rule in report.scheduled.items() if "conv2d" in name]
    assert conv_rules == [HOST_PIXEL_RULE_W7], report.scheduled


def test_float_strided_1x1_matches_the_strided_conv():
    """fp32: the rewritten module computes the same values as the strided conv (numpy reference)."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 32, 14, 14)).astype(np.float32)
    w = rng.standard_normal((48, 32, 1, 1)).astype(np.float32)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "float32"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            gv = bb.emit_output(relax.op.nn.relu(relax.op.nn.conv2d(xv, relax.const(w), strides=2)))
        bb.emit_func_output(gv)
    rewritten, count = strided_pointwise.subsample_strided_pointwise(bb.get())
    assert count == 1
    y, report, _ = compile_and_run(rewritten, x, host_target())
    ref = np.maximum(np.einsum("nchw,fc->nfhw", x[:, :, ::2, ::2], w[:, :, 0, 0]), 0)
    assert y.dtype == np.float32 and y.shape == (1, 48, 7, 7)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "c,h,f,k,stride,pad",
    [(64, 14, 64, 1, 1, 0), (64, 14, 64, 3, 2, 1), (64, 14, 64, 1, 2, 1)],
    ids=["stride-1", "3x3-s2", "padded-1x1"],
)
def test_rewrite_leaves_other_convs_alone(c, h, f, k, stride, pad):
    mod, _, _ = conv_case(c, h, f, k, stride, pad, True)
    rewritten, count = strided_pointwise.subsample_strided_pointwise(mod)
    assert count == 0 and rewritten is mod
