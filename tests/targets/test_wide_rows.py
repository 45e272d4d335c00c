"""Stride-1 8-bit depthwise convs with rows that are not whole vectors run on widened rows
(targets/lowering/wide_rows.py): exact, still taken by DepthwiseInt8 with the crop kept as a copy,
and applied only to the convs it was measured on."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from tvm import relax  # noqa: E402

from targets.lowering import wide_rows  # noqa: E402
from targets.lowering.schedules import common, depthwise_int8  # noqa: E402
from tests.targets.test_schedules_int8 import (  # noqa: E402
    _host_has_avx2, build_prepared, compile_and_run, conv_case, depthwise_case, host_target,
)

pytestmark = pytest.mark.tvm


@pytest.mark.parametrize(
    "c,h,batch,requant,lanes",
    [(16, 14, 1, True, 8), (8, 28, 2, True, 8), (24, 14, 1, False, 8), (8, 10, 1, True, 8),
     (16, 56, 1, True, 16), (16, 28, 2, True, 16)],
    ids=["w14", "w28-batch2", "w14-int32", "w10", "w56-avx512", "w28-batch2-avx512"],
)
def test_widened_depthwise_is_bit_exact(c, h, batch, requant, lanes):
    """The conv runs on rows padded to a multiple of ``lanes`` columns (8 on AVX2, 16 with
    AVX-512; one extra zero-padding column block on the right), its epilogue on the wide rows,
    then a crop: bit-exact, also without an epilogue (the crop right after the int32 conv) and
    batched."""
    mod, x, ref = depthwise_case(c, h, 3, 1, 1, requant, seed=3, batch=batch)
    rewritten, count = wide_rows.widen_depthwise_rows(mod, lanes)
    assert count == 1
    script = rewritten.script()
    wide = -(-h // lanes) * lanes
    assert "R.strided_slice" in script and f"R.Tensor(({batch}, {c}, {h}, {wide}), dtype=" in script
    y, _, _ = compile_and_run(rewritten, x, host_target())
    assert y.dtype == ref.dtype and y.shape == ref.shape
    assert np.array_equal(y, ref), f"{np.count_nonzero(y != ref)} mismatches"


@pytest.mark.skipif(not _host_has_avx2(), reason="build.prepare widens the rows on AVX2 hosts")
def test_prepared_widened_depthwise_stays_on_the_depthwise_rule():
    """Through build.prepare (which applies the rewrite on x86 hosts with AVX2: 14 columns widened
    to 16 without VNNI, 28 to 32 with AVX-512 VNNI) the conv is still DepthwiseInt8's, with the
    crop fused into the same function; bit-exact."""
    width = 28 if common.has_avx512_vnni(host_target()) else 14
    mod, x, ref = depthwise_case(16, width, 3, 1, 1, True, seed=9)
    executable, report = build_prepared(mod, host_target())
    y = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    assert np.array_equal(y, ref)
    assert report.unscheduled == []
    rules = {name: rule for name, rule in report.scheduled.items() if "conv2d" in name}
    assert list(rules.values()) == [depthwise_int8.DepthwiseInt8.name], report.scheduled
    if common.has_avx2_int8(host_target()) or common.has_avx512_vnni(host_target()):
        assert all("strided_slice" in name for name in rules), rules


@pytest.mark.parametrize(
    "case",
    ["w7", "w16", "stride-2", "grouped", "regular-conv"],
)
def test_rewrite_leaves_other_convs_alone(case):
    """Rows of one vector or less (7), whole vectors (16), strided and non-depthwise convs."""
    if case == "w7":
        mod = depthwise_case(16, 7, 3, 1, 1, True)[0]
    elif case == "w16":
        mod = depthwise_case(16, 16, 3, 1, 1, True)[0]
    elif case == "stride-2":
        mod = depthwise_case(16, 28, 3, 2, 1, True)[0]
    elif case == "regular-conv":
        mod = conv_case(16, 14, 16, 3, 1, 1, True)[0]
    else:  # 2 channels per group
        bb = relax.BlockBuilder()
        xv = relax.Var("x", relax.TensorType((1, 16, 14, 14), "uint8"))
        w = np.ones((16, 2, 3, 3), np.int8)
        with bb.function("main", [xv]):
            with bb.dataflow():
                gv = bb.emit_output(relax.op.nn.conv2d(xv, relax.const(w), padding=1, groups=8, out_dtype="int32"))
            bb.emit_func_output(gv)
        mod = bb.get()
    rewritten, count = wide_rows.widen_depthwise_rows(mod)
    assert count == 0 and rewritten is mod


def test_avx512_rows_of_one_partial_vector_are_left_alone():
    """With 16 lanes a 14-wide row (one partial vector, measured no faster widened) is kept."""
    mod = depthwise_case(16, 14, 3, 1, 1, True)[0]
    rewritten, count = wide_rows.widen_depthwise_rows(mod, common.VNNI_LANES)
    assert count == 0 and rewritten is mod
