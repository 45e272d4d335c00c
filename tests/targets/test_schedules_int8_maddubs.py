"""The vpmaddubsw int8 conv rule (conv2d_int8.Conv2dInt8AVX2Maddubs) and the constant ranges it
reads (schedules.constant_ranges / attach_constant_ranges), on AVX2 without VNNI.

The rule may claim a conv only when its constant weight lies within +-64, where vpmaddubsw's
saturating int16 pair sums are exact for any uint8 activations. Numeric cases compile for this
host's CPU when it is an AVX2 CPU without VNNI, else for ``haswell``, and compare bit for bit with
a numpy int64 reference, including the worst case (all-255 activations x weights of +-64, every
pair sum at 255 * 128 = 32640, 127 below saturation).
"""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm

from tvm import relax  # noqa: E402

from targets.lowering.schedules import common, constant_ranges, conv1x1_int8, conv2d_int8, matmul_int8  # noqa: E402
from tests.targets.test_schedules_int8 import (  # noqa: E402
    _host_has_avx2,
    bare_conv_module,
    bare_matmul_module,
    compile_and_run,
    conv_case,
    conv_int64,
    dense_case,
    only_rule,
)
from tests.targets.test_schedules_int8_avx2 import avx2_target  # noqa: E402

if not _host_has_avx2():
    pytest.skip("host CPU has no AVX2", allow_module_level=True)

MADDUBS = conv2d_int8.Conv2dInt8AVX2Maddubs.name
WIDE = conv2d_int8.Conv2dInt8AVX2.name
PIXELS = conv1x1_int8.Conv1x1Int8PixelsAVX2.name
PIXELS_MADDUBS = conv1x1_int8.Conv1x1Int8PixelsAVX2Maddubs.name
MATMUL_MADDUBS = matmul_int8.MatmulInt8AVX2Maddubs.name
MATMUL = matmul_int8.MatmulInt8AVX2.name


@pytest.mark.parametrize(
    "c,h,f,k,stride,pad,rule",
    [(16, 12, 32, 3, 1, 1, MADDUBS), (4, 22, 64, 7, 2, 3, MADDUBS), (16, 13, 32, 3, 2, 1, MADDUBS),
     (64, 7, 16, 1, 1, 0, MADDUBS), (96, 8, 24, 1, 1, 0, PIXELS_MADDUBS), (320, 8, 64, 1, 1, 0, PIXELS_MADDUBS)],
    ids=["3x3s1p1", "7x7s2p3-stem", "3x3s2p1", "1x1-7x7-image", "1x1-projection", "1x1-over-256-channels"],
)
def test_maddubs_conv_bit_exact_for_seven_bit_weights(c, h, f, k, stride, pad, rule):
    """1x1 convs on whole 8-pixel vectors go to the pixel-vectorized vpmaddubsw rule (projections
    and any number of input channels included); the rest to the channel-vectorized one. All
    exact."""
    mod, x, ref = conv_case(c, h, f, k, stride, pad, True, seed=5, weight_bound=63)
    y, report, asm = compile_and_run(mod, x, target=avx2_target())
    assert np.array_equal(y, ref), f"{np.count_nonzero(y != ref)} mismatches"
    assert only_rule(report) == rule
    assert "vpmaddubsw" in asm and "vpdpbusd" not in asm


@pytest.mark.parametrize("bound,rule", [(64, MADDUBS), (65, WIDE)])
def test_worst_case_pair_sums_and_the_bound(bound, rule):
    """All-255 activations with same-sign weight pairs of +-``bound``: at 64 every vpmaddubsw pair
    sum is 255 * 128 = 32640 (exact, the rule claims); at 65 it would be 33150 > 32767, so the
    rule declines and the int16 vpmaddwd rule computes it, exact as well."""
    rng = np.random.default_rng(3)
    x = np.full((1, 16, 8, 8), 255, np.uint8)
    w = np.where(rng.integers(0, 2, size=(16, 16, 3, 3)) == 1, bound, -bound).astype(np.int8)
    w[:, 0:2] = bound  # channel pair (0, 1): both positive in every filter, the saturating case
    w[:4] = -bound
    y, report, asm = compile_and_run(bare_conv_module(x.shape, w, 1), x, target=avx2_target())
    expect = conv_int64(x, w, 1)
    assert np.array_equal(y, expect.astype(np.int32))
    assert only_rule(report) == rule
    assert ("vpmaddubsw" in asm) == (rule == MADDUBS)


@pytest.mark.parametrize(
    "c,h,f,bound,rule",
    [(16, 16, 96, 63, PIXELS_MADDUBS), (24, 8, 48, 64, PIXELS_MADDUBS), (64, 16, 32, 63, PIXELS_MADDUBS),
     (16, 16, 96, 65, PIXELS), (6, 8, 16, 63, PIXELS), (288, 8, 32, 63, PIXELS_MADDUBS), (64, 7, 32, 63, MADDUBS)],
    ids=["16to96-pixels", "24to48-bound64", "64to32-pixels", "bound65-vpmaddwd", "c6-not-multiple-of-4",
         "288to32-channels", "7x7-image-channels"],
)
def test_1x1_convs_split_between_the_pixel_and_channel_rules(c, h, f, bound, rule):
    """1x1 convs on whole 8-pixel vectors, expansions and projections, any C, are
    pixel-vectorized (with vpmaddubsw when the weights allow it and C % 4 == 0); a partial pixel
    vector goes to the channel-vectorized vpmaddubsw rule (build.prepare's flat_pixels pads such
    images first; compile_and_run does not)."""
    mod, x, ref = conv_case(c, h, f, 1, 1, 0, True, seed=2, weight_bound=bound)
    y, report, asm = compile_and_run(mod, x, target=avx2_target())
    assert np.array_equal(y, ref), f"{np.count_nonzero(y != ref)} mismatches"
    assert only_rule(report) == rule
    assert ("vpmaddubsw" in asm) == (rule in (MADDUBS, PIXELS_MADDUBS))


def test_1x1_pixels_worst_case_pair_sums_exact():
    """All-255 activations x +-64 weights with same-sign pairs on the pixel-vectorized kernel."""
    x = np.full((1, 32, 8, 8), 255, np.uint8)
    rng = np.random.default_rng(6)
    w = np.where(rng.integers(0, 2, size=(48, 32, 1, 1)) == 1, 64, -64).astype(np.int8)
    w[:, :2] = 64
    w[:3] = -64
    y, report, _ = compile_and_run(bare_conv_module(x.shape, w, 0), x, target=avx2_target())
    assert np.array_equal(y, conv_int64(x, w, 0).astype(np.int32))
    assert only_rule(report) == PIXELS_MADDUBS


@pytest.mark.parametrize(
    "m,k,n,transposed,bound,rule",
    [(16, 64, 256, False, 63, MATMUL_MADDUBS), (24, 128, 40, True, 64, MATMUL_MADDUBS), (1, 128, 32, False, 63, MATMUL_MADDUBS),
     (16, 64, 256, False, 65, MATMUL)],
    ids=["16x64x256", "transB-n40-bound64", "gemv", "bound65-vpmaddwd"],
)
def test_dense_maddubs_bit_exact(m, k, n, transposed, bound, rule):
    mod, a, ref = dense_case(m, k, n, True, transposed, seed=4, weight_bound=bound)
    y, report, asm = compile_and_run(mod, a, target=avx2_target())
    assert np.array_equal(y, ref), f"{np.count_nonzero(y != ref)} mismatches"
    assert only_rule(report) == rule
    assert ("vpmaddubsw" in asm) == (rule == MATMUL_MADDUBS)


def test_dense_maddubs_worst_case_pair_sums_exact():
    """All-255 rows times +-64 columns with same-sign k pairs: every pair sum 255 * 128."""
    a = np.full((8, 64), 255, np.uint8)
    w = np.where(np.random.default_rng(1).integers(0, 2, size=(64, 32)) == 1, 64, -64).astype(np.int8)
    w[:2] = 64
    w[:, :8] = -64
    y, report, _ = compile_and_run(bare_matmul_module(a.shape, w), a, target=avx2_target())
    assert np.array_equal(y, (a.astype(np.int64) @ w.astype(np.int64)).astype(np.int32))
    assert only_rule(report) == MATMUL_MADDUBS


def test_batch_of_three_exact():
    rng = np.random.default_rng(9)
    x = rng.integers(0, 256, size=(3, 8, 10, 10)).astype(np.uint8)
    w = rng.integers(-64, 65, size=(16, 8, 3, 3)).astype(np.int8)
    y, report, _ = compile_and_run(bare_conv_module(x.shape, w, 1), x, target=avx2_target())
    assert np.array_equal(y, conv_int64(x, w, 1).astype(np.int32))
    assert only_rule(report) == MADDUBS


def _module_calling_one_function_twice(first: np.ndarray, second, other: np.ndarray):
    """main(x) calls PrimFunc ``scale`` with two different constants (or ``second`` = None: with
    the graph input x), and ``other`` once."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def scale(a: T.Buffer((4,), "int8"), b: T.Buffer((4,), "int8"), out: T.Buffer((4,), "int8")):
        for i in range(4):
            with T.sblock("s"):
                vi = T.axis.spatial(4, i)
                out[vi] = a[vi] + b[vi]

    bb = relax.BlockBuilder()
    gv_scale = bb.add_func(scale.with_attr("global_symbol", "scale"), "scale")
    gv_other = bb.add_func(scale.with_attr("global_symbol", "other"), "other")
    x = relax.Var("x", relax.TensorType((4,), "int8"))
    out = relax.TensorType((4,), "int8")
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.call_tir(gv_scale, (x, relax.const(first, "int8")), out))
            b = bb.emit(relax.call_tir(gv_scale, (a, x if second is None else relax.const(second, "int8")), out))
            c = bb.emit(relax.call_tir(gv_other, (b, relax.const(other, "int8")), out))
            gv = bb.emit_output(c)
        bb.emit_func_output(gv)
    return bb.get()


def test_constant_ranges_are_the_union_over_call_sites():
    first = np.array([-3, 0, 5, 1], np.int8)
    mod = _module_calling_one_function_twice(first, np.array([-10, 2, 2, 2], np.int8), np.array([7, 7, 9, 8], np.int8))
    ranges = constant_ranges(mod)
    assert ranges["scale"] == {1: (-10, 5)}  # union of both sites; param 0 is never a constant
    assert ranges["other"] == {1: (7, 9)}
    # A site passing a graph input for the parameter: no range holds for every call.
    mod = _module_calling_one_function_twice(first, None, first)
    assert constant_ranges(mod)["scale"] == {}


def test_attached_range_is_read_back_by_parameter():
    from targets.lowering.schedules import attach_constant_ranges

    mod = attach_constant_ranges(_module_calling_one_function_twice(
        np.array([-3, 0, 5, 1], np.int8), np.array([-10, 2, 2, 2], np.int8), np.array([7, 7, 9, 8], np.int8)))
    func = mod["scale"]
    assert common.constant_param_range(func, tvm.tirx.decl_buffer((4,), "int8")) is None  # not a parameter
    assert common.constant_param_range(func, func.params[1]) == (-10, 5)
    assert common.constant_param_range(func, func.params[0]) is None


def test_tuning_record_does_not_replace_a_value_claimed_kernel(tmp_path):
    """A record for a conv's structure (tuned from the vpmaddwd schedule) applies to the 8-bit-
    weight conv of that structure, but a 7-bit-weight conv with the same structure keeps the
    vpmaddubsw rule: the record cannot know the weights (schedules.value_claimed_functions)."""
    import json

    from tvm.s_tir import meta_schedule as ms

    from targets.lowering import build, tuning

    target = avx2_target()
    wide_mod = conv_case(16, 8, 32, 3, 1, 1, True, seed=9)[0]
    with target:
        prepared = relax.transform.AttachAttrLayoutFreeBuffers()(build.prepare(wide_mod, target))
    ((_, func),) = [(g, f) for g, f in prepared.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    workload_mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    sch = conv2d_int8.Conv2dInt8AVX2().apply(workload_mod["main"], target)
    records = tmp_path / tuning.record_key(target)
    records.mkdir()
    (records / tuning.META_FILE).write_text(json.dumps({"key": records.name, "runs": [{"trials": 1}]}))
    db = tuning.open_database(records, create=True)
    workload = db.commit_workload(workload_mod)
    args_info = ms.arg_info.ArgInfo.from_entry_func(workload_mod, remove_preproc=True)
    db.commit_tuning_record(ms.database.TuningRecord(sch.trace, workload, [1e-5], target, args_info))

    for mod_x_ref, expected in ((conv_case(16, 8, 32, 3, 1, 1, True, seed=9), "tuned"),
                                (conv_case(16, 8, 32, 3, 1, 1, True, seed=9, weight_bound=63), MADDUBS)):
        mod, x, ref = mod_x_ref
        out = build.build(mod, target, records)
        rules = {name: rule for name, rule in out.schedule_report.scheduled.items() if "conv2d" in name}
        assert list(rules.values()) == [expected], rules
        y = relax.VirtualMachine(out.executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
        assert np.array_equal(y, ref)
