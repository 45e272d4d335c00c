"""AVX2 int8 rules (conv2d_int8.Conv2dInt8AVX2, matmul_int8.MatmulInt8AVX2): the ``vpmaddwd`` 8x2
dot product on x86 targets with AVX2 and without AVX-512 VNNI.

Numeric cases compile for this host's CPU when it has AVX2 and no VNNI (Zen 3), else for
``haswell`` (runs on any AVX2 host), and compare bit for bit (``np.array_equal``) with a numpy int64
reference; they also check the claiming rule and that the kernel uses ``vpmaddwd`` and never the
saturating ``vpmaddubsw``. Claim tests only analyse functions (no code is run).
"""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm

from tvm import relax  # noqa: E402

from targets.lowering.schedules import common, conv2d_int8, default_rules, matmul_int8  # noqa: E402
from tests.targets.test_schedules_int8 import (  # noqa: E402
    HOST_VNNI,
    _host_has_avx2,
    bare_conv_module,
    bare_matmul_module,
    compile_and_run,
    conv_case,
    conv_int64,
    dense_case,
    host_target,
    only_rule,
)

if not _host_has_avx2():
    pytest.skip("host CPU has no AVX2", allow_module_level=True)

CONV = conv2d_int8.Conv2dInt8AVX2.name
MATMUL = matmul_int8.MatmulInt8AVX2.name


def avx2_target():
    """The host's CPU if it is an AVX2 CPU without VNNI, else haswell (AVX2 code any host here runs)."""
    return host_target("haswell") if HOST_VNNI else host_target()


def _check_kernel(asm: str) -> None:
    assert "vpmaddwd" in asm
    assert "vpmaddubsw" not in asm and "vpdpbusd" not in asm


@pytest.mark.parametrize(
    "c,h,f,k,stride,pad,requant",
    [
        (16, 12, 32, 3, 1, 1, False),
        (16, 12, 32, 3, 1, 1, True),
        (4, 22, 64, 7, 2, 3, True),  # ResNet stem shape class: C = 4 after the ConvInteger pad
        (32, 10, 48, 1, 1, 0, False),
        (16, 13, 32, 3, 2, 1, True),
        (32, 14, 24, 1, 2, 0, False),  # F = 24: a multiple of 8 (not of 16), claimed here
        (6, 9, 8, 3, 1, 0, True),  # C = 6: a multiple of 2 (not of 4); one 8-channel block
    ],
    ids=["3x3s1p1", "3x3s1p1-requant", "7x7s2p3-stem", "1x1", "3x3s2p1-requant", "1x1s2-f24", "c6-f8"],
)
def test_conv2d_avx2_bit_exact(c, h, f, k, stride, pad, requant):
    mod, x, ref = conv_case(c, h, f, k, stride, pad, requant, seed=7)
    y, report, asm = compile_and_run(mod, x, target=avx2_target())
    assert y.dtype == ref.dtype and y.shape == ref.shape
    assert np.array_equal(y, ref), f"{np.count_nonzero(y != ref)} mismatches"
    assert only_rule(report) == CONV
    _check_kernel(asm)


def test_conv2d_avx2_extreme_values_exact():
    """All-255 activations times all -127 / +127 weights: every int16 pair sum would saturate with
    vpmaddubsw (2 * 255 * 127 > 32767); vpmaddwd's int32 pair sums stay exact."""
    mod, x, ref = conv_case(16, 8, 16, 3, 1, 1, requant=False, seed=1)
    x[:] = 255
    rng = np.random.default_rng(2)
    w = np.where(rng.integers(0, 2, size=(16, 16, 3, 3)) == 1, 127, -127).astype(np.int8)
    y, report, _ = compile_and_run(bare_conv_module(x.shape, w, 1), x, target=avx2_target())
    expect = conv_int64(x, w, 1)
    assert np.array_equal(y, expect.astype(np.int32))
    assert np.abs(expect).max() > 32767 * 9  # the case does overflow int16 pair sums
    assert only_rule(report) == CONV


@pytest.mark.parametrize(
    "m,k,n,transposed,requant",
    [(16, 64, 256, False, False), (16, 64, 256, True, True), (1, 128, 32, False, True), (24, 64, 40, True, False)],
    ids=["16x64x256", "16x64x256-transB-requant", "gemv-requant", "n40"],
)
def test_dense_avx2_bit_exact(m, k, n, transposed, requant):
    mod, a, ref = dense_case(m, k, n, requant, transposed, seed=3)
    y, report, asm = compile_and_run(mod, a, target=avx2_target())
    assert np.array_equal(y, ref), f"{np.count_nonzero(y != ref)} mismatches"
    assert only_rule(report) == MATMUL
    _check_kernel(asm)


def test_batched_matmul_constant_weight_exact():
    """A [2, 16, 64] activation times a constant [64, 128] weight (batch > 1, transformer-like)."""
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, size=(2, 16, 64)).astype(np.uint8)
    w = rng.integers(-127, 128, size=(64, 128)).astype(np.int8)
    y, report, asm = compile_and_run(bare_matmul_module(a.shape, w), a, target=avx2_target())
    assert np.array_equal(y, (a.astype(np.int64) @ w.astype(np.int64)).astype(np.int32))
    assert only_rule(report) == MATMUL
    _check_kernel(asm)


def test_integer_only_cnn_uses_avx2_rules_and_is_exact(tmp_path):
    """The integer-only lowering (ConvInteger 3->8 padded to 4 channels + the fused requant chain,
    MatMulInteger padded to 16 columns) on the ``cpu`` target: bit-exact to the reference
    interpreter, and on an AVX2 host without VNNI the conv and the matmul get the AVX2 rules."""
    from compiler.reference import run_reference
    from targets import get_target
    from targets.lowering import integer_ops, load_library, lower_model
    from tests.compiler.test_reference import integer_cnn_model

    integer_ops.install_converters()
    model = integer_cnn_model()
    result = lower_model(model, get_target("cpu"), {}, tmp_path)
    library = load_library(tmp_path / result.library_file, result.input_names)
    for seed in range(2):
        feeds = {"x": np.random.default_rng(seed).uniform(-3.5, 3.5, (2, 3, 8, 8)).astype(np.float32)}
        for got, want in zip(library.run(feeds), run_reference(model, feeds)):
            assert got.dtype == want.dtype and np.array_equal(got, want)
    if not HOST_VNNI:
        assert {CONV, MATMUL} <= set(result.scheduled.values()), result.scheduled


# --- which rule claims what -------------------------------------------------------------------------


def _prim_funcs(mod, target):
    with target:
        mod = relax.get_pipeline("zero")(mod)
    return [f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]


def _first_claim(mod, target) -> str | None:
    """Name of the first default rule that claims the conv/matmul function of ``mod``."""
    funcs = _prim_funcs(mod, target)
    assert len(funcs) == 1
    for rule in default_rules():
        if rule.apply(funcs[0], target) is not None:
            return rule.name
    return None


@pytest.mark.parametrize("mcpu", ["znver3", "haswell", "skylake"])
def test_avx2_rules_claim_on_avx2_targets(mcpu):
    target = host_target(mcpu)
    assert common.has_avx2_int8(target) and not common.has_avx512_vnni(target)
    assert _first_claim(conv_case(16, 8, 32, 3, 1, 1, False)[0], target) == CONV
    assert _first_claim(dense_case(16, 64, 64, False)[0], target) == MATMUL


@pytest.mark.parametrize("mcpu", ["znver4", "cascadelake"])
def test_vnni_targets_keep_the_vnni_rules(mcpu):
    target = host_target(mcpu)
    assert not common.has_avx2_int8(target)
    conv = _prim_funcs(conv_case(16, 8, 32, 3, 1, 1, False)[0], target)[0]
    assert conv2d_int8.Conv2dInt8AVX2().apply(conv, target) is None
    assert _first_claim(conv_case(16, 8, 32, 3, 1, 1, False)[0], target) == conv2d_int8.Conv2dInt8VNNI.name
    assert _first_claim(dense_case(16, 64, 64, False)[0], target) == matmul_int8.MatmulInt8VNNI.name


def test_feature_detection():
    assert common.has_avx2_int8(host_target("znver3"))
    assert common.has_avx2_int8(host_target("skylake-avx512"))  # AVX2, AVX-512 without VNNI
    assert not common.has_avx2_int8(host_target("znver4"))
    assert not common.has_avx2_int8(host_target("sandybridge"))  # AVX without AVX2
    assert not common.has_avx2_int8(tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu"}))


def _float_conv():
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType((1, 16, 8, 8), "float32"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            w = relax.const(np.ones((32, 16, 3, 3), np.float32))
            gv = bb.emit_output(bb.emit(relax.op.nn.conv2d(xv, w, padding=1)))
        bb.emit_func_output(gv)
    return bb.get()


def _float_dense():
    bb = relax.BlockBuilder()
    av = relax.Var("a", relax.TensorType((16, 64), "float32"))
    with bb.function("main", [av]):
        with bb.dataflow():
            gv = bb.emit_output(bb.emit(relax.op.matmul(av, relax.const(np.ones((64, 64), np.float32)))))
        bb.emit_func_output(gv)
    return bb.get()


@pytest.mark.parametrize(
    "make,expected",
    [
        (_float_conv, "conv2d-direct"),
        (_float_dense, "matmul"),
        (lambda: conv_case(16, 8, 32, 3, 1, 1, False, data_dtype="int8")[0], "conv2d-direct"),  # signed x
        (lambda: conv_case(3, 8, 32, 3, 1, 1, False)[0], "conv2d-direct"),  # C = 3: odd
        (lambda: conv_case(16, 8, 12, 3, 1, 1, False)[0], "conv2d-direct"),  # F = 12: not a multiple of 8
        (lambda: dense_case(16, 64, 20, False)[0], "matmul"),  # N = 20
    ],
    ids=["fp32-conv", "fp32-dense", "int8-activations", "c3", "f12", "n20"],
)
def test_avx2_rules_decline(make, expected):
    target = host_target("znver3")
    funcs = _prim_funcs(make(), target)
    for rule in (conv2d_int8.Conv2dInt8AVX2(), matmul_int8.MatmulInt8AVX2()):
        assert all(rule.apply(f, target) is None for f in funcs), rule
    assert _first_claim(make(), target) == expected


def test_signed_activation_dense_declined():
    bb = relax.BlockBuilder()
    av = relax.Var("a", relax.TensorType((16, 64), "int8"))
    with bb.function("main", [av]):
        with bb.dataflow():
            w = relax.const(np.ones((64, 64), np.int8), "int8")
            gv = bb.emit_output(bb.emit(relax.op.matmul(av, w, out_dtype="int32")))
        bb.emit_func_output(gv)
    target = host_target("znver3")
    assert all(matmul_int8.MatmulInt8AVX2().apply(f, target) is None for f in _prim_funcs(bb.get(), target))


def test_avx2_tile_within_register_budget():
    for blocks in (1, 2, 3, 8, 64):
        for width in (7, 14, 28, 56, 112, 13):
            nb, xt = conv2d_int8.choose_tile(blocks, width, conv2d_int8.AVX2_MAX_ACCUMULATORS)
            assert blocks % nb == 0 and width % xt == 0 and nb * xt <= conv2d_int8.AVX2_MAX_ACCUMULATORS
    assert conv2d_int8.choose_tile(8, 56, conv2d_int8.AVX2_MAX_ACCUMULATORS) == (2, 4)
    assert conv2d_int8.choose_tile(8, 112, conv2d_int8.AVX2_MAX_ACCUMULATORS) == (2, 4)
    for rows in (1, 16, 128):
        for blocks in (1, 2, 5, 32):
            mt, nb = matmul_int8.choose_tile(rows, blocks, conv2d_int8.AVX2_MAX_ACCUMULATORS)
            assert rows % mt == 0 and blocks % nb == 0 and mt * nb <= conv2d_int8.AVX2_MAX_ACCUMULATORS


# --- tuning records that replay the AVX2 intrinsic ----------------------------------------------------

_APPLY_IN_FRESH_PROCESS = """
import sys
import numpy as np, tvm
from tvm import relax
from targets.lowering import schedules, tuning
from tests.targets.test_schedules_int8 import conv_case, host_target
mod, x, ref = conv_case(16, 8, 32, 3, 1, 1, True, seed=9)
target = host_target()
with target:
    mod = relax.get_pipeline("zero")(mod)
    mod, applied = tuning.apply_records(mod, target, sys.argv[1])
    mod, report = schedules.apply_default_schedules(mod, target)
    ex = tvm.compile(mod, target=target)
y = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
assert np.array_equal(y, ref), "not exact"
print("applied", applied)
"""


@pytest.mark.skipif(HOST_VNNI, reason="the host target has VNNI: the AVX2 rule does not claim")
def test_record_with_avx2_intrinsic_applies_in_a_fresh_process(tmp_path):
    """A tuning record whose trace tensorizes with the AVX2 intrinsic (the default-schedule seed
    that ``tune`` stores) is replayed by ``apply_records`` in a process where no rule has run yet,
    so the intrinsic is registered there first; the result is exact."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from tvm.s_tir import meta_schedule as ms

    from targets.lowering import tuning

    target = host_target()
    mod = conv_case(16, 8, 32, 3, 1, 1, True, seed=9)[0]
    with target:
        mod = relax.transform.AttachAttrLayoutFreeBuffers()(relax.get_pipeline("zero")(mod))
    ((gvar, func),) = [(g, f) for g, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    workload_mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    sch = conv2d_int8.Conv2dInt8AVX2().apply(workload_mod["main"], target)
    assert sch is not None and common.AVX2_WIDE_DOT_INTRIN in str(sch.trace)

    records = tmp_path / tuning.record_key(target)
    records.mkdir()
    (records / tuning.META_FILE).write_text(json.dumps({"key": records.name, "runs": [{"trials": 1}]}))
    db = tuning.open_database(records, create=True)
    workload = db.commit_workload(workload_mod)
    args_info = ms.arg_info.ArgInfo.from_entry_func(workload_mod, remove_preproc=True)
    db.commit_tuning_record(ms.database.TuningRecord(sch.trace, workload, [1e-5], target, args_info))

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", _APPLY_IN_FRESH_PROCESS, str(records)], cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"applied ['{gvar.name_hint}']" in proc.stdout, proc.stdout
