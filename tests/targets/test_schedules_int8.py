"""int8 schedule rules (targets/lowering/schedules/conv2d_int8.py, matmul_int8.py, depthwise_int8.py,
pool_int8.py).

Each case builds the Relax that the integer-only lowering produces (``conv2d``/``matmul`` of uint8
activations and constant int8 weights with ``out_dtype="int32"``, an int32 bias add and, optionally,
the int64 dyadic requantization chain of passes/quantize ending in a uint8 cast), runs it through
build.py's preparation and our default rules for this host's CPU, and checks

* which rule claimed the fused function (the VNNI rules on a host with avx512_vnni, the generic
  rules otherwise / for the cases the VNNI rules decline),
* bit-exactness (``np.array_equal``) against a numpy int64 reference,
* ``vpdpbusd`` in the generated assembly when the host has AVX-512 VNNI.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm

from tvm import relax  # noqa: E402
from tvm.target import codegen  # noqa: E402

from targets.lowering.schedules import apply_default_schedules, common  # noqa: E402
from targets.lowering.schedules import conv2d_int8, depthwise_int8, matmul_int8, pool_int8  # noqa: E402


def _host_has_vnni() -> bool:
    try:
        return "avx512_vnni" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


HOST_VNNI = _host_has_vnni()


def _host_has_avx2() -> bool:
    try:
        return "avx2" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


# The rules an AVX2 host without VNNI uses for u8 x i8 conv / matmul (the *Int8AVX2 rules, tested in
# test_schedules_int8_avx2.py); the generic ones on other hosts.
HOST_AVX2 = not HOST_VNNI and _host_has_avx2()
NO_VNNI_CONV = "conv2d-int8-avx2" if HOST_AVX2 else "conv2d-direct"
NO_VNNI_MATMUL = "matmul-int8-avx2" if HOST_AVX2 else "matmul"
needs_vnni = pytest.mark.skipif(not HOST_VNNI, reason="host CPU has no AVX-512 VNNI (/proc/cpuinfo)")
# The pixel-vectorized 1x1 rule build.prepare's pipeline gives a w7 (weights within +-63) expansion
# on this host: the vpdpbusd one with VNNI, the vpmaddubsw one on AVX2 without VNNI.
HOST_PIXEL_RULE_W7 = "conv1x1-int8-vnni" if HOST_VNNI else "conv1x1-int8-avx2-maddubs"


def host_target(mcpu: str | None = None) -> tvm.target.Target:
    return tvm.target.Target({"kind": "llvm", "mcpu": mcpu or codegen.llvm_get_system_cpu(), "num-cores": 2})


# --- the requantization chain of passes/quantize (int64, round half up, offset 2^62) -------------


def _requant_params(channels: int, seed: int):
    rng = np.random.default_rng(seed)
    mult = rng.integers(1 << 29, 1 << 30, size=channels).astype(np.int64)
    shift = rng.integers(34, 40, size=channels).astype(np.int64)
    return mult, shift


def _emit_requant(bb, acc, channels: int, shape: list[int], zp_out: int, lo: int, hi: int, seed: int):
    """Cast(int64) -> Mul M -> Add 2^(S-1)+2^62 -> Cast(uint64) -> >> S -> Cast(int64) ->
    Add zp-2^(62-S) -> Clip -> Cast(uint8), exactly as passes/quantize emits it in ONNX."""
    mult, shift = _requant_params(channels, seed)
    rnd = (np.int64(1) << (shift - 1)) + (np.int64(1) << 62)
    zadd = zp_out - (np.int64(1) << (62 - shift))
    p = relax.op.multiply(relax.op.astype(acc, "int64"), relax.const(mult.reshape(shape), "int64"))
    p = relax.op.add(p, relax.const(rnd.reshape(shape), "int64"))
    shift_u64 = relax.const(shift.astype(np.uint64).reshape(shape), "uint64")
    u = relax.op.right_shift(relax.op.astype(p, "uint64"), shift_u64)
    q = relax.op.add(relax.op.astype(u, "int64"), relax.const(zadd.reshape(shape), "int64"))
    return bb.emit(relax.op.astype(relax.op.clip(q, lo, hi), "uint8"))


def _requant_reference(acc: np.ndarray, axis: int, zp_out: int, lo: int, hi: int, seed: int) -> np.ndarray:
    mult, shift = _requant_params(acc.shape[axis], seed)
    shape = [1] * acc.ndim
    shape[axis] = -1
    m, s = mult.reshape(shape), shift.reshape(shape)
    q = ((acc.astype(np.int64) * m + (np.int64(1) << (s - 1))) >> s) + zp_out
    return np.clip(q, lo, hi).astype(np.uint8)


# --- models and references --------------------------------------------------------------------------


def bare_conv_module(x_shape, w: np.ndarray, pad: int = 0, data_dtype: str = "uint8"):
    """Relax module: one bare 8-bit x int8 -> int32 conv2d of an input of ``x_shape`` with ``w``."""
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x_shape, data_dtype))
    with bb.function("main", [xv]):
        with bb.dataflow():
            gv = bb.emit_output(bb.emit(relax.op.nn.conv2d(xv, relax.const(w, "int8"), padding=pad, out_dtype="int32")))
        bb.emit_func_output(gv)
    return bb.get()


def bare_matmul_module(a_shape, w: np.ndarray):
    """Relax module: one bare uint8 x int8 -> int32 matmul of an input of ``a_shape`` with ``w``."""
    bb = relax.BlockBuilder()
    av = relax.Var("a", relax.TensorType(a_shape, "uint8"))
    with bb.function("main", [av]):
        with bb.dataflow():
            gv = bb.emit_output(bb.emit(relax.op.matmul(av, relax.const(w, "int8"), out_dtype="int32")))
        bb.emit_func_output(gv)
    return bb.get()


def conv_int64(x: np.ndarray, w: np.ndarray, pad: int = 0, stride: int = 1) -> np.ndarray:
    """The NCHW conv of ``x`` with ``w`` [F, C, K, K] in int64 (zero padding), the reference."""
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k = w.shape[2]
    oh = (x.shape[2] + 2 * pad - k) // stride + 1
    out = np.zeros((x.shape[0], w.shape[0], oh, oh), np.int64)
    for i in range(k):
        for j in range(k):
            patch = xp[:, :, i : i + stride * (oh - 1) + 1 : stride, j : j + stride * (oh - 1) + 1 : stride]
            out += np.einsum("nchw,fc->nfhw", patch, w[:, :, i, j].astype(np.int64))
    return out


def conv_case(c, h, f, k, stride, pad, requant, data_dtype="uint8", seed=0, weight_bound=127):
    """(Relax module, input, int64-reference output) for conv2d + bias [+ requant], weights drawn
    from [-weight_bound, weight_bound]."""
    rng = np.random.default_rng(seed)
    lo, hi = (0, 255) if data_dtype == "uint8" else (-128, 127)
    x = rng.integers(lo, hi + 1, size=(1, c, h, h)).astype(data_dtype)
    w = rng.integers(-weight_bound, weight_bound + 1, size=(f, c, k, k)).astype(np.int8)
    bias = rng.integers(-20000, 20000, size=f).astype(np.int32)

    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType((1, c, h, h), data_dtype))
    with bb.function("main", [xv]):
        with bb.dataflow():
            acc = relax.op.nn.conv2d(xv, relax.const(w, "int8"), strides=stride, padding=pad, out_dtype="int32")
            acc = bb.emit(relax.op.add(acc, relax.const(bias.reshape(1, -1, 1, 1), "int32")))
            y = _emit_requant(bb, acc, f, [1, f, 1, 1], 5, 0, 255, seed) if requant else acc
            gv = bb.emit_output(y)
        bb.emit_func_output(gv)

    ref = conv_int64(x, w, pad, stride) + bias.reshape(1, -1, 1, 1)
    ref = _requant_reference(ref, 1, 5, 0, 255, seed) if requant else ref.astype(np.int32)
    return bb.get(), x, ref


def dense_case(m, k, n, requant, transposed=False, seed=0, weight_bound=127):
    """(Relax module, input, reference) for matmul(a_u8, W_i8) + bias [+ requant]; the weight is
    stored [N, K] and transposed in the graph when ``transposed`` (a Gemm with transB), drawn from
    [-weight_bound, weight_bound]."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, size=(m, k)).astype(np.uint8)
    w = rng.integers(-weight_bound, weight_bound + 1, size=(k, n)).astype(np.int8)
    bias = rng.integers(-20000, 20000, size=n).astype(np.int32)
    bb = relax.BlockBuilder()
    av = relax.Var("a", relax.TensorType((m, k), "uint8"))
    with bb.function("main", [av]):
        with bb.dataflow():
            if transposed:  # stored [N, K] like a Gemm transB weight
                wc = relax.op.permute_dims(relax.const(np.ascontiguousarray(w.T), "int8"))
            else:
                wc = relax.const(w, "int8")
            acc = bb.emit(relax.op.add(relax.op.matmul(av, wc, out_dtype="int32"), relax.const(bias, "int32")))
            y = _emit_requant(bb, acc, n, [n], 0, 0, 200, seed) if requant else acc
            gv = bb.emit_output(y)
        bb.emit_func_output(gv)
    ref = a.astype(np.int64) @ w.astype(np.int64) + bias
    ref = _requant_reference(ref, 1, 0, 0, 200, seed) if requant else ref.astype(np.int32)
    return bb.get(), a, ref


def schedule(mod, target):
    """build.py's preparation -> apply_default_schedules; returns (scheduled module, report)."""
    with target:
        mod = relax.transform.DecomposeOpsForInference()(mod)
        mod = relax.transform.CanonicalizeBindings()(mod)
        mod = relax.get_pipeline("zero")(mod)
        return apply_default_schedules(mod, target)


def build_prepared(mod, target):
    """build.prepare (the whole pre-scheduling pipeline, with the target's Relax rewrites:
    requant_float, flat_pixels, signed_activations) -> apply_default_schedules -> tvm.compile;
    returns (executable, report)."""
    from targets.lowering import build

    prepared = build.prepare(mod, target)
    with target:
        scheduled, report = apply_default_schedules(prepared, target)
        return tvm.compile(scheduled, target=target), report


def compile_and_run(mod, x, target=None):
    """:func:`schedule` -> tvm.compile -> run on ``x``; returns (y, report, asm)."""
    target = target or host_target()
    mod, report = schedule(mod, target)
    with target:
        ex = tvm.compile(mod, target=target)
    asm = ex.mod.imports[0].inspect_source("asm") if ex.mod.imports else ""
    vm = relax.VirtualMachine(ex, tvm.cpu())
    y = vm["main"](tvm.runtime.tensor(x)).numpy()
    return y, report, asm


def only_rule(report) -> str:
    assert report.unscheduled == [], report
    anchors = {name: rule for name, rule in report.scheduled.items() if "conv2d" in name or "matmul" in name}
    assert len(anchors) == 1, report.scheduled
    return next(iter(anchors.values()))


# --- tests ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "c,h,f,k,stride,pad",
    [(16, 12, 32, 3, 1, 1), (32, 10, 48, 1, 1, 0), (16, 13, 32, 3, 2, 1), (32, 14, 64, 1, 2, 0)],
    ids=["3x3s1p1", "1x1", "3x3s2p1", "1x1s2"],
)
@pytest.mark.parametrize("requant", [False, True], ids=["int32", "requant"])
def test_conv2d_u8i8_bit_exact(c, h, f, k, stride, pad, requant):
    mod, x, ref = conv_case(c, h, f, k, stride, pad, requant)
    y, report, asm = compile_and_run(mod, x)
    assert y.dtype == ref.dtype and y.shape == ref.shape
    assert np.array_equal(y, ref), f"{np.count_nonzero(y != ref)} mismatches"
    rule = only_rule(report)
    if HOST_VNNI:
        assert rule == conv2d_int8.Conv2dInt8VNNI.name
        assert "vpdpbusd" in asm
    else:
        assert rule == NO_VNNI_CONV


@pytest.mark.parametrize("c,h,f,k,pad,pixels", [(16, 12, 32, 3, 1, 4), (64, 14, 32, 1, 0, 14), (32, 7, 32, 3, 1, 7),
                                                 (16, 3, 16, 3, 1, None)],
                         ids=["3x3-w12", "1x1-196px", "3x3-w7", "w3-gather"])
def test_vnni_conv_pack_is_a_byte_transpose(c, h, f, k, pad, pixels):
    """On VNNI targets the NCHW4c data pack of Conv2dInt8VNNI interleaves runs of P pixels x 4
    channels with the transpose intrinsic (common.transposing_copy; the zero border a separate
    fill; a width without a divisor of at least 4 keeps the per-pixel gather); the AVX2 rules keep
    the gather. Bit-exact on a VNNI host."""
    mod, x, ref = conv_case(c, h, f, k, 1, pad, True, seed=4)
    for mcpu, transposed in (("znver4", pixels is not None), ("znver3", False)):
        scheduled, report = schedule(mod, host_target(mcpu))
        assert set(report.scheduled.values()) == {(conv2d_int8.Conv2dInt8VNNI if mcpu == "znver4" else conv2d_int8.Conv2dInt8AVX2).name}
        script = "\n".join(fn.script() for _, fn in scheduled.functions_items() if isinstance(fn, tvm.tirx.PrimFunc))
        assert ("T.Shuffle" in script) == transposed, mcpu
        if transposed:
            assert f"(T.int64(4), T.int64(1), T.int64({pixels})), \"uint8\"" in script  # the intrinsic's A
    if HOST_VNNI:
        y, report, _ = compile_and_run(mod, x)
        assert np.array_equal(y, ref), f"{np.count_nonzero(y != ref)} mismatches"


@pytest.mark.parametrize(
    "m,k,n,transposed",
    [(24, 64, 48, False), (1, 128, 32, False), (16, 96, 64, True)],
    ids=["24x64x48", "gemv", "transB-const"],
)
@pytest.mark.parametrize("requant", [False, True], ids=["int32", "requant"])
def test_dense_u8i8_bit_exact(m, k, n, transposed, requant):
    mod, a, ref = dense_case(m, k, n, requant, transposed)
    y, report, asm = compile_and_run(mod, a)
    assert np.array_equal(y, ref), f"{np.count_nonzero(y != ref)} mismatches"
    rule = only_rule(report)
    if HOST_VNNI:
        assert rule == matmul_int8.MatmulInt8VNNI.name
        assert "vpdpbusd" in asm
    else:
        assert rule == NO_VNNI_MATMUL


def test_dense_runtime_weight_is_packed_per_call():
    """A weight that is a graph input (not a constant) cannot be packed at compile time: the
    packing copy stays in the function, runs per call, and the result is still exact."""
    m, k, n = 16, 96, 64
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, size=(m, k)).astype(np.uint8)
    w = rng.integers(-127, 128, size=(n, k)).astype(np.int8)
    bb = relax.BlockBuilder()
    av = relax.Var("a", relax.TensorType((m, k), "uint8"))
    wv = relax.Var("w", relax.TensorType((n, k), "int8"))
    with bb.function("main", [av, wv]):
        with bb.dataflow():
            gv = bb.emit_output(bb.emit(relax.op.matmul(av, relax.op.permute_dims(wv), out_dtype="int32")))
        bb.emit_func_output(gv)
    target = host_target()
    with target:
        mod, report = apply_default_schedules(relax.get_pipeline("zero")(bb.get()), target)
        ex = tvm.compile(mod, target=target)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    y = vm["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(w)).numpy()
    assert np.array_equal(y, a.astype(np.int64) @ w.T.astype(np.int64))
    assert only_rule(report) == (matmul_int8.MatmulInt8VNNI.name if HOST_VNNI else NO_VNNI_MATMUL)


def test_requant_epilogue_is_fused():
    """conv + bias + the whole requant chain is one PrimFunc claimed by the int8 rule, and its
    scheduled body stores uint8 straight from the int32 accumulator tile (no int64 intermediate
    buffer left between the conv and the output)."""
    mod, x, ref = conv_case(16, 8, 32, 3, 1, 1, requant=True)
    target = host_target()
    with target:
        mod = relax.get_pipeline("zero")(mod)
        funcs = [(gv, f) for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
        assert len(funcs) == 1, [gv.name_hint for gv, _ in funcs]
        if not HOST_VNNI:
            pytest.skip("host CPU has no AVX-512 VNNI")
        sch = conv2d_int8.Conv2dInt8VNNI().apply(funcs[0][1], target)
    assert sch is not None

    def root_allocs(s_):
        return [(b.name, str(b.dtype)) for b in s_.get(s_.get_sblock("root")).alloc_buffers]

    before = root_allocs(tvm.s_tir.Schedule(funcs[0][1]))
    allocated = root_allocs(sch)
    assert "int64" in {dt for _, dt in before}  # unscheduled: the int64 requant chain is materialized
    dtypes = {dt for _, dt in allocated}
    assert not dtypes & {"int64", "uint64"}, allocated  # ...the scheduled one keeps it in registers
    assert ("conv2d_nchw_intermediate_local", "int32") in allocated, allocated


@needs_vnni
def test_int8_activations_fall_back_bit_exact():
    """Signed int8 data is not claimed by the VNNI rule (vpdpbusd is u8 x s8); the generic rule
    computes it, still bit-exact."""
    mod, x, ref = conv_case(16, 10, 32, 3, 1, 1, requant=False, data_dtype="int8")
    y, report, asm = compile_and_run(mod, x)
    assert np.array_equal(y, ref)
    assert only_rule(report) == "conv2d-direct"


def test_channels_not_multiple_of_4_fall_back():
    """C = 3 (an RGB input layer) cannot be split into 4-deep dot products: generic rule, exact."""
    mod, x, ref = conv_case(3, 16, 16, 3, 1, 1, requant=True)
    y, report, _ = compile_and_run(mod, x)
    assert np.array_equal(y, ref)
    assert only_rule(report) == "conv2d-direct"


def _host_has_avx512() -> bool:
    try:
        return "avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not _host_has_avx512(), reason="host cannot run skylake-avx512 code")
def test_no_vnni_target_declines_and_stays_exact():
    """A target without AVX-512 VNNI (skylake-avx512): the VNNI rules decline, the AVX2 int8 rule
    compiles the int8 conv, no vpdpbusd is emitted, and the result is still bit-exact."""
    target = host_target("skylake-avx512")
    assert not common.has_avx512_vnni(target)
    mod, x, ref = conv_case(16, 8, 32, 3, 1, 1, requant=True)
    y, report, asm = compile_and_run(mod, x, target=target)
    assert np.array_equal(y, ref)
    assert only_rule(report) == "conv2d-int8-avx2"
    assert "vpdpbusd" not in asm


def test_vnni_feature_detection():
    assert common.has_avx512_vnni(host_target("znver4"))
    assert common.has_avx512_vnni(host_target("cascadelake"))
    assert not common.has_avx512_vnni(host_target("skylake-avx512"))
    assert not common.has_avx512_vnni(host_target("haswell"))
    assert not common.has_avx512_vnni(tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu"}))


def test_tile_choice_stays_within_register_budget():
    for blocks in (1, 2, 4, 8, 32):
        for width in (7, 14, 28, 56, 112, 13):
            nb, xt = conv2d_int8.choose_tile(blocks, width)
            assert blocks % nb == 0 and width % xt == 0
            assert nb * xt <= conv2d_int8.MAX_ACCUMULATORS
    assert conv2d_int8.choose_tile(4, 56) == (2, 8)
    assert conv2d_int8.choose_tile(32, 7) == (2, 7)
    for rows in (1, 7, 128):
        for blocks in (1, 2, 48, 63):
            mt, nb = matmul_int8.choose_tile(rows, blocks)
            assert rows % mt == 0 and blocks % nb == 0 and mt * nb <= conv2d_int8.MAX_ACCUMULATORS
    assert matmul_int8.choose_tile(128, 48) == (4, 4)


# --- columns-vectorized write-back (xt >= 8) -------------------------------------------------------


@pytest.mark.parametrize(
    "c,h,f,k,stride,pad",
    [(16, 16, 32, 3, 1, 1), (64, 32, 32, 1, 1, 0), (8, 34, 32, 3, 2, 1), (4, 22, 32, 7, 2, 3)],
    ids=["3x3-w16", "1x1-w32", "3x3s2-w17", "7x7s2-stem"],
)
def test_conv2d_wide_tiles_bit_exact(c, h, f, k, stride, pad):
    """Tiles of >= 8 output columns write back along the columns (the epilogue vectorized over x);
    the 7x7 case keeps the channel-vectorized write-back. Both exact."""
    mod, x, ref = conv_case(c, h, f, k, stride, pad, requant=True, seed=4)
    y, report, asm = compile_and_run(mod, x)
    assert np.array_equal(y, ref), f"{np.count_nonzero(y != ref)} mismatches"
    if HOST_VNNI:  # a 1x1 conv on whole 16-pixel vectors goes to the VNNI pixel rule
        assert only_rule(report) == ("conv1x1-int8-vnni" if k == 1 else conv2d_int8.Conv2dInt8VNNI.name)
        assert "vpdpbusd" in asm


# --- depthwise u8 x i8 (depthwise_int8.DepthwiseInt8) ---------------------------------------------


def depthwise_case(c, h, k, stride, pad, requant, seed=0, batch=1):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(batch, c, h, h)).astype(np.uint8)
    x.reshape(-1)[:2] = [0, 255]
    w = rng.integers(-127, 128, size=(c, 1, k, k)).astype(np.int8)
    bias = rng.integers(-20000, 20000, size=c).astype(np.int32)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType((batch, c, h, h), "uint8"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            acc = relax.op.nn.conv2d(xv, relax.const(w, "int8"), strides=stride, padding=pad, groups=c,
                                     out_dtype="int32")
            acc = bb.emit(relax.op.add(acc, relax.const(bias.reshape(1, -1, 1, 1), "int32")))
            y = _emit_requant(bb, acc, c, [1, c, 1, 1], 3, 0, 255, seed) if requant else acc
            gv = bb.emit_output(y)
        bb.emit_func_output(gv)
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh = (h + 2 * pad - k) // stride + 1
    ref = np.zeros((batch, c, oh, oh), np.int64)
    for i in range(k):
        for j in range(k):
            patch = xp[:, :, i : i + stride * (oh - 1) + 1 : stride, j : j + stride * (oh - 1) + 1 : stride]
            ref += patch * w[:, 0, i, j].astype(np.int64).reshape(1, -1, 1, 1)
    ref += bias.reshape(1, -1, 1, 1)
    ref = _requant_reference(ref, 1, 3, 0, 255, seed) if requant else ref.astype(np.int32)
    return bb.get(), x, ref


@pytest.mark.parametrize(
    "c,h,k,stride,pad",
    [(32, 16, 3, 1, 1), (24, 18, 3, 2, 1), (16, 17, 3, 2, 1), (8, 9, 5, 1, 2), (40, 7, 3, 1, 1), (16, 12, 3, 1, 0),
     (8, 112, 3, 1, 1)],
    ids=["s1", "s2-even", "s2-odd", "5x5", "w7", "nopad", "w112"],
)
@pytest.mark.parametrize("requant", [False, True], ids=["int32", "requant"])
def test_depthwise_u8i8_bit_exact(c, h, k, stride, pad, requant):
    """Stride 1 is claimed by DepthwiseInt8 (but for rows shorter than one AVX2 vector whose
    channels fill int32 vectors: depthwise.int8_channel_blocked), stride 2 left to the grouped rule
    (channel-blocked where the channels fill int32 vectors, else its width form); all exact."""
    from targets.lowering.schedules.depthwise import int8_channel_blocked

    mod, x, ref = depthwise_case(c, h, k, stride, pad, requant)
    y, report, _ = compile_and_run(mod, x)
    assert y.dtype == ref.dtype and y.shape == ref.shape
    assert np.array_equal(y, ref), f"{np.count_nonzero(y != ref)} mismatches"
    lanes = common.vector_lanes(host_target(), "int32")
    out_width = (h + 2 * pad - k) // stride + 1
    blocked = c % lanes == 0 and int8_channel_blocked(out_width, stride, lanes)
    expected = "conv2d-grouped" if stride > 1 or blocked else depthwise_int8.DepthwiseInt8.name
    assert only_rule(report) == expected


def test_strided_depthwise_u8i8_is_channel_blocked():
    """A stride-2 u8 x i8 depthwise conv whose channels fill int32 vectors takes GroupConv2d's
    channel-blocked nest: the padded copy is NCHW{V}c ([n, c/V, h, w, V]), so every tap is one
    contiguous vector of V channels; the result stays bit-exact (requantized and raw int32)."""
    target = host_target()
    lanes = common.vector_lanes(target, "int32")
    for requant in (False, True):
        mod, x, ref = depthwise_case(2 * lanes, 18, 3, 2, 1, requant, seed=5)
        y, report, _ = compile_and_run(mod, x)
        assert np.array_equal(y, ref), f"{np.count_nonzero(y != ref)} mismatches"
        assert only_rule(report) == "conv2d-grouped"
    scheduled, _ = schedule(mod, target)
    scripts = [f.script() for _, f in scheduled.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert any(f"(T.int64(1), T.int64(2), T.int64(20), T.int64(20), T.int64({lanes}))" in s for s in scripts)


@pytest.mark.parametrize("h,batch,pixels", [(32, 1, 16), (28, 1, 4), (14, 2, 14), (7, 1, 7), (17, 1, None)],
                         ids=["w32", "w28", "w14-batch2", "w7", "w17-gather"])
def test_strided_depthwise_u8i8_copy_is_a_byte_transpose(h, batch, pixels):
    """The NCHW{V}c copy of a strided u8 depthwise conv interleaves runs of P pixels x V channels
    with the transpose intrinsic (P from common.transpose_run_pixels; a width with no divisor of
    at least 4 keeps the per-pixel gather); bit-exact either way, batched included."""
    target = host_target()
    lanes = common.vector_lanes(target, "int32")
    mod, x, ref = depthwise_case(2 * lanes, h, 3, 2, 1, True, seed=7, batch=batch)
    y, report, _ = compile_and_run(mod, x)
    assert np.array_equal(y, ref), f"{np.count_nonzero(y != ref)} mismatches"
    assert only_rule(report) == "conv2d-grouped"
    scheduled, _ = schedule(mod, target)
    script = "\n".join(f.script() for _, f in scheduled.functions_items() if isinstance(f, tvm.tirx.PrimFunc))
    if pixels is None:
        assert "T.Shuffle" not in script
    else:
        assert "T.Shuffle" in script
        assert f"(T.int64({lanes}), T.int64(1), T.int64({pixels})), \"uint8\"" in script  # the intrinsic's A


def test_transpose_runs_prefer_whole_power_of_two_rows():
    """Rows split into 16/8/4-pixel runs when such a power of two divides them, else the largest
    divisor up to 16 (below 4: no transpose)."""
    widths = {112: 16, 56: 8, 28: 4, 12: 4, 14: 14, 7: 7, 21: 7, 17: 1, 6: 6}
    assert {w: common.transpose_run_pixels(w) for w in widths} == widths


def test_depthwise_rule_declines_float_and_grouped():
    """fp32 depthwise and grouped (several channels per group) int8 convs are not claimed."""
    target = host_target()
    rule = depthwise_int8.DepthwiseInt8()
    for dtype, groups, cin in (("float32", 8, 1), ("uint8", 4, 2)):
        bb = relax.BlockBuilder()
        xv = relax.Var("x", relax.TensorType((1, 8, 10, 10), dtype))
        wdt = "float32" if dtype == "float32" else "int8"
        w = np.ones((8, cin, 3, 3), wdt)
        with bb.function("main", [xv]):
            with bb.dataflow():
                out = "float32" if dtype == "float32" else "int32"
                gv = bb.emit_output(bb.emit(relax.op.nn.conv2d(xv, relax.const(w, wdt), padding=1, groups=groups,
                                                               out_dtype=out)))
            bb.emit_func_output(gv)
        with target:
            mod = relax.get_pipeline("zero")(bb.get())
        funcs = [f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
        assert funcs and all(rule.apply(f, target) is None for f in funcs)


# --- 8-bit max pooling (pool_int8.MaxPoolInt8) -------------------------------------------------------


@pytest.mark.parametrize(
    "dtype,c,h,k,stride,pad",
    [("uint8", 8, 16, 3, 2, 1), ("uint8", 4, 15, 3, 2, 1), ("uint8", 4, 12, 2, 2, 0), ("int8", 4, 13, 3, 1, 1)],
    ids=["u8-3s2p1", "u8-odd", "u8-2s2", "i8-3s1p1"],
)
def test_maxpool_int8_bit_exact(dtype, c, h, k, stride, pad):
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype)
    x = rng.integers(info.min, info.max + 1, size=(1, c, h, h)).astype(dtype)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType((1, c, h, h), dtype))
    with bb.function("main", [xv]):
        with bb.dataflow():
            gv = bb.emit_output(bb.emit(relax.op.nn.max_pool2d(xv, pool_size=k, strides=stride, padding=pad)))
        bb.emit_func_output(gv)
    y, report, _ = compile_and_run(bb.get(), x)
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=info.min)
    oh = (h + 2 * pad - k) // stride + 1
    ref = np.full((1, c, oh, oh), info.min, np.int64)
    for i in range(k):
        for j in range(k):
            ref = np.maximum(ref, xp[:, :, i : i + stride * (oh - 1) + 1 : stride, j : j + stride * (oh - 1) + 1 : stride])
    assert np.array_equal(y, ref.astype(dtype))
    assert report.unscheduled == []
    assert set(report.scheduled.values()) == {pool_int8.MaxPoolInt8.name}


@pytest.mark.parametrize("k,stride,pad,shuffled", [(3, 2, 1, True), (2, 2, 0, True), (3, 1, 1, False)],
                         ids=["3s2p1", "2s2", "3s1"])
def test_maxpool_strided_windows_use_the_shuffle_intrinsic(k, stride, pad, shuffled):
    """On x86, stride >= 2 windows take pool_int8.strided_max_intrinsic (a contiguous load and a
    shuffle per tap, in the scheduled TIR); stride 1 keeps LLVM's own vectorization."""
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType((1, 8, 16, 16), "uint8"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            gv = bb.emit_output(bb.emit(relax.op.nn.max_pool2d(xv, pool_size=k, strides=stride, padding=pad)))
        bb.emit_func_output(gv)
    target = host_target()
    with target:
        mod = relax.get_pipeline("zero")(bb.get())
    (func,) = [f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    sch = pool_int8.MaxPoolInt8().apply(func, target)
    assert sch is not None
    assert ("T.Shuffle" in sch.mod.script()) == shuffled


def test_maxpool_rule_leaves_float_pools_alone():
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType((1, 4, 8, 8), "float32"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            gv = bb.emit_output(bb.emit(relax.op.nn.max_pool2d(xv, pool_size=3, strides=2, padding=1)))
        bb.emit_func_output(gv)
    target = host_target()
    with target:
        mod = relax.get_pipeline("zero")(bb.get())
    funcs = [f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert funcs and all(pool_int8.MaxPoolInt8().apply(f, target) is None for f in funcs)
