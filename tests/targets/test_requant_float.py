"""The exact float64 form of the integer-only requantizer (targets/lowering/requant_float.py).

The arithmetic is checked against the int64 chain (Python integers) on every accumulator that
matters -- a dense window around each channel's clamp points, the int32 extremes, random values --
and the Relax rewrite end to end: a requantized conv compiled with and without it gives identical
bytes, and chains the float form cannot represent exactly keep their int64 form.
"""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm

from tvm import relax  # noqa: E402

from passes.quantize.qparams import NARROW_MIN_BITS  # noqa: E402
from targets.lowering.requant_float import float_requant_constants, rewrite_requant_chains  # noqa: E402


def _emit_constants(m: np.ndarray, s: np.ndarray, zp: int):
    one = np.int64(1)
    return m.astype(np.int64), (one << (s - 1)) + (one << 62), s.astype(np.uint64), np.int64(zp) - (one << (62 - s))


def _int64_chain(a: np.ndarray, m: int, s: int, zp: int, lo: int, hi: int) -> np.ndarray:
    """passes/quantize/emit.py's requantizer with Python integers (no overflow possible)."""
    out = [min(max(((int(x) * m + (1 << (s - 1))) >> s) + zp, lo), hi) for x in a]
    return np.array(out, np.int64)


def _probes(consts: dict, ch: int, rng) -> np.ndarray:
    """Accumulators that matter for channel ``ch``: a dense window around each clamp point, random
    int32 values and the int32 extremes."""
    window = np.arange(-3000, 3000)
    probes = [consts["A_lo"][ch] + window, consts["A_hi"][ch] + window,
              rng.integers(-(1 << 31), 1 << 31, 4000), np.array([-(1 << 31), (1 << 31) - 1, 0, -1, 1])]
    return np.clip(np.concatenate(probes), -(1 << 31), (1 << 31) - 1)


def _float_form(a: np.ndarray, c: dict, index, lo: int, hi: int) -> np.ndarray:
    clamped = np.clip(a.astype(np.int64), int(c["A_lo"][index]), int(c["A_hi"][index])).astype(np.float64)
    q = np.floor(clamped * c["Mf"][index] + c["Cf"][index]).astype(np.int64)
    return np.clip(q, lo, hi)


@pytest.mark.parametrize("zp,lo,hi", [(0, 0, 255), (117, 0, 255), (0, 0, 37), (-3, -128, 127)],
                         ids=["relu-u8", "zp117-u8", "relu6-u8", "int8"])
def test_float_form_equals_int64_chain(zp, lo, hi):
    rng = np.random.default_rng(zp + 1000)
    channels = 24
    m = rng.integers(1 << 29, 1 << 30, channels)  # passes/quantize/qparams.py's multiplier range
    s = rng.integers(30, 45, channels)
    consts = float_requant_constants(*_emit_constants(m, s, zp), lo, hi)
    assert consts is not None
    for ch in range(channels):
        a = _probes(consts, ch, rng)
        assert np.array_equal(_float_form(a, consts, ch, lo, hi), _int64_chain(a, int(m[ch]), int(s[ch]), zp, lo, hi)), ch
        # the clamp points are the tightest ones: one step inside leaves the clip
        assert _int64_chain(np.array([consts["A_hi"][ch] - 1]), int(m[ch]), int(s[ch]), zp, -10**9, 10**9)[0] < hi
        assert _int64_chain(np.array([consts["A_lo"][ch] + 1]), int(m[ch]), int(s[ch]), zp, -10**9, 10**9)[0] > lo


def test_float_form_declines_what_it_cannot_represent():
    m, s = np.array([1 << 29]), np.array([40])
    mm, r, ss, z = _emit_constants(m, s, 0)
    assert float_requant_constants(mm, r, ss, z, 0, 255) is not None
    assert float_requant_constants(mm, r + 1, ss, z, 0, 255) is None  # not the emit.py rounding constant
    assert float_requant_constants(-mm, r, ss, z, 0, 255) is None  # a negative multiplier (not monotone)
    assert float_requant_constants(mm << 2, r, ss, z, 0, 255) is None  # M >= 2^30: the int64 chain could overflow
    big = _emit_constants(np.array([1 << 29]), np.array([52]), 0)  # |A| M ~ 2^60: beyond float64
    assert float_requant_constants(*big, 0, 255) is None


def _requant_conv(shift: int, multipliers: tuple[int, int] = (1 << 29, 1 << 30), bias: int = 0):
    """conv2d u8 x i8 [+ bias, - a zero-point correction, both int32 constants drawn from
    +-``bias``], then emit.py's int64 requantizer with one shift for all channels and multipliers
    drawn from ``multipliers``."""
    rng = np.random.default_rng(shift)
    f = 16
    w = rng.integers(-127, 128, size=(f, 8, 3, 3)).astype(np.int8)
    mult = rng.integers(*multipliers, f).reshape(1, f, 1, 1)
    m, r, s, z = _emit_constants(mult, np.full((1, f, 1, 1), shift), 5)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType((1, 8, 16, 16), "uint8"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            acc = bb.emit(relax.op.nn.conv2d(xv, relax.const(w, "int8"), padding=1, out_dtype="int32"))
            if bias:
                correction = rng.integers(-bias, bias + 1, size=(1, f, 1, 1)).astype(np.int32)
                acc = bb.emit(relax.op.subtract(acc, relax.const(correction, "int32")))
                acc = bb.emit(relax.op.add(acc, relax.const(rng.integers(-bias, bias + 1, size=(f, 1, 1)).astype(np.int32), "int32")))
            p = bb.emit(relax.op.multiply(relax.op.astype(acc, "int64"), relax.const(m, "int64")))
            p = bb.emit(relax.op.add(p, relax.const(r, "int64")))
            u = bb.emit(relax.op.right_shift(relax.op.astype(p, "uint64"), relax.const(s, "uint64")))
            q = bb.emit(relax.op.add(relax.op.astype(u, "int64"), relax.const(z, "int64")))
            lo = bb.emit(relax.op.maximum(q, relax.const(0, "int64")))
            hi = bb.emit(relax.op.minimum(lo, relax.const(200, "int64")))
            gv = bb.emit_output(relax.op.astype(hi, "uint8"))
        bb.emit_func_output(gv)
    return bb.get()


def _run(mod, x):
    target = tvm.target.Target("llvm")
    with target:
        mod = relax.get_pipeline("zero")(mod)
        ex = tvm.compile(mod, target=target)
    return relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


def _assert_same_outputs(mod, rewritten, unclamped: bool = True):
    """``_requant_conv``'s module and its rewrite give identical bytes on random inputs and on the
    all-255 input, with outputs that are not all clamped (so the arithmetic is tested) unless
    ``unclamped`` is False."""
    for seed in range(3):
        x = np.random.default_rng(seed).integers(0, 256, size=(1, 8, 16, 16)).astype(np.uint8)
        if seed == 2:
            x[:] = 255
        want, got = _run(mod, x), _run(rewritten, x)
        assert np.array_equal(want, got)
        assert not unclamped or 0 < np.count_nonzero((want > 0) & (want < 200))  # not all clamped: the arithmetic is tested


def test_rewrite_is_bit_exact_end_to_end():
    mod = _requant_conv(shift=38)
    rewritten, count, kept = rewrite_requant_chains(mod)
    assert (count, kept) == (1, 0)
    ops = {call.op.name for call in _calls(rewritten)}
    assert "relax.right_shift" not in ops and "relax.floor" in ops
    _assert_same_outputs(mod, rewritten)


def test_int32_form_equals_int64_chain():
    """qparams.narrow_dyadic's constants (S = 22, M with NARROW_MIN_BITS+ bits): the clamped chain
    fits int32, and the int32 arithmetic (arithmetic shift = floor) equals the int64 chain on the same probes."""
    rng = np.random.default_rng(7)
    channels, zp, lo, hi = 24, 117, 0, 255
    m = rng.integers(1 << (NARROW_MIN_BITS - 1), 1 << 22, channels)
    s = np.full(channels, 22)
    consts = float_requant_constants(*_emit_constants(m, s, zp), lo, hi)
    narrow = consts["int32"]
    for ch in range(channels):
        a = _probes(consts, ch, rng)
        clamped = np.clip(a, int(consts["A_lo"][ch]), int(consts["A_hi"][ch])).astype(np.int64)
        product = clamped * int(narrow["M"][ch]) + int(narrow["half"][ch])
        assert product.min() >= -(1 << 31) and product.max() < 1 << 31  # no int32 overflow
        q = (product.astype(np.int32) >> np.int32(narrow["S"][ch])) + np.int32(narrow["zp"][ch])
        want = _int64_chain(a, int(m[ch]), 22, zp, lo, hi)
        assert np.array_equal(np.clip(q, lo, hi), want), ch
        # the output zero point folded into the rounding term: one add, still inside int32
        folded = clamped * int(narrow["M"][ch]) + int(narrow["offset"][ch])
        assert folded.min() >= -(1 << 31) and folded.max() < 1 << 31
        assert np.array_equal(np.clip(folded.astype(np.int32) >> np.int32(narrow["S"][ch]), lo, hi), want), ch
    # 30-bit multipliers overflow int32 after the clamp: no int32 form (the float64 one stays)
    wide = float_requant_constants(*_emit_constants(np.array([1 << 29]), np.array([38]), zp), lo, hi)
    assert wide is not None and "int32" not in wide


def test_rewrite_uses_int32_lanes_when_products_fit():
    mod = _requant_conv(shift=22, multipliers=(1 << 11, 1 << 14))
    rewritten, count, kept = rewrite_requant_chains(mod)
    assert (count, kept) == (1, 0)
    calls = _calls(rewritten)
    shifts = [call for call in calls if call.op.name == "relax.right_shift"]
    assert [str(call.ty.dtype) for call in shifts] == ["int32"]
    assert "relax.floor" not in {call.op.name for call in calls}
    _assert_same_outputs(mod, rewritten)


def test_zero_point_folds_into_the_rounding_term_only_where_it_fits():
    """``(x + 2^(S-1) + zp 2^S) >> S`` replaces ``((x + 2^(S-1)) >> S) + zp`` when the clamped
    product plus that offset stays inside int32 (the rewritten module has one add after the
    multiply, bit-exact); a zero point whose offset would overflow keeps the separate add."""
    from targets.lowering.requant_float import _int32_tail_constants

    mod = _requant_conv(shift=22, multipliers=(1 << 11, 1 << 14))
    rewritten, count, _ = rewrite_requant_chains(mod)
    assert count == 1
    names = [call.op.name for call in _calls(rewritten)]
    tail = names[names.index("relax.multiply"):]
    assert tail.count("relax.add") == 1 and tail.index("relax.add") < tail.index("relax.right_shift")
    _assert_same_outputs(mod, rewritten)
    s = np.array([22, 22], dtype=object)
    assert _int32_tail_constants(s, np.array([3, 117], dtype=object), np.array([1 << 29, 1 << 29], dtype=object))["offset"] is not None
    assert _int32_tail_constants(s, np.array([3, 600], dtype=object), np.array([1 << 29, 1 << 29], dtype=object))["offset"] is None


@pytest.mark.parametrize("bias,folded", [(20000, True), (1 << 26, False)], ids=["bias-folded", "bias-too-large"])
def test_constant_offsets_fold_into_the_clamp_and_rounding_term(bias, folded):
    """conv + bias - correction, then the int32 requantizer: the offsets move into the clamp
    bounds and the rounding term (no add/subtract left between the conv and the clamp), unless
    the shifted bounds' products would leave int32; bit-exact both ways."""
    mod = _requant_conv(shift=22, multipliers=(1 << 11, 1 << 14), bias=bias)
    rewritten, count, _ = rewrite_requant_chains(mod)
    assert count == 1
    names = [call.op.name for call in _calls(rewritten)]
    before_clamp = names[names.index("relax.nn.conv2d") + 1 : names.index("relax.maximum")]
    assert (before_clamp == []) == folded, names
    _assert_same_outputs(mod, rewritten, unclamped=folded)  # a 2^26 bias saturates every output


def test_folded_offsets_equal_the_clamped_chain_on_every_reachable_accumulator():
    """fold_accumulator_offsets against the unfolded int32 form on a dense probe of p around the
    shifted clamp points and the ends of p's reachable range; declines when |p| + |c| could wrap."""
    from targets.lowering.requant_float import fold_accumulator_offsets

    rng = np.random.default_rng(3)
    channels, zp, lo, hi = 8, 3, 0, 255
    m = rng.integers(1 << 9, 1 << 12, channels)
    consts = float_requant_constants(*_emit_constants(m, np.full(channels, 22), zp), lo, hi)
    offsets = rng.integers(-300000, 300000, channels).astype(np.int64)
    magnitude = np.full(channels, 9 * 8 * 255 * 128, np.int64)
    folded = fold_accumulator_offsets(consts, offsets, magnitude)
    assert folded is not None
    narrow = consts["int32"]
    for ch in range(channels):
        window = np.arange(-2000, 2000)
        p = np.concatenate([int(folded["A_lo"][ch]) + window, int(folded["A_hi"][ch]) + window,
                            rng.integers(-magnitude[ch], magnitude[ch] + 1, 3000), [-magnitude[ch], magnitude[ch]]])
        p = np.clip(p, -magnitude[ch], magnitude[ch]).astype(np.int64)
        a = np.clip(p + offsets[ch], int(consts["A_lo"][ch]), int(consts["A_hi"][ch]))
        want = np.clip((a * int(narrow["M"][ch]) + int(narrow["offset"][ch])) >> 22, lo, hi)
        a_folded = np.clip(p, int(folded["A_lo"][ch]), int(folded["A_hi"][ch]))
        product = a_folded * int(narrow["M"][ch])
        assert np.abs(product).max() < 1 << 31
        got = np.clip((product + int(folded["offset"][ch])) >> 22, lo, hi)
        assert np.array_equal(got, want), ch
        assert 0 < np.count_nonzero((want > lo) & (want < hi))
    assert fold_accumulator_offsets(consts, offsets, np.full(channels, (1 << 31) - 1000, np.int64)) is None


def test_rewrite_keeps_inexact_chains():
    mod = _requant_conv(shift=54)  # the float form would need more than 53 bits
    rewritten, count, kept = rewrite_requant_chains(mod)
    assert (count, kept) == (0, 1)
    assert "relax.right_shift" in {call.op.name for call in _calls(rewritten)}


def _calls(mod):
    found = []
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            if isinstance(binding.value, relax.Call) and isinstance(binding.value.op, tvm.ir.Op):
                found.append(binding.value)
    return found


@pytest.mark.parametrize("dtypes", [("uint8", "uint8"), ("int8", "uint8"), ("uint8",)], ids=["u8+u8", "i8+u8", "one-branch"])
def test_branch_form_equals_int64_chain(dtypes):
    """The residual-Add rescale sum_i (q_i - zp_i) M_i (signed M_i) then the tail: float64 form vs
    Python integers on every input pair's extremes and random pairs."""
    from targets.lowering.requant_float import float_branch_constants

    rng = np.random.default_rng(len(dtypes))
    ranges = {"uint8": (0, 255), "int8": (-128, 127)}
    s, zp, lo, hi = 31, 7, 0, 255
    ms = [int(rng.integers(1 << 29, 1 << 30)) * (-1 if i else 1) for i in range(len(dtypes))]
    zps = [int(rng.integers(ranges[d][0], ranges[d][1])) for d in dtypes]
    _, r, ss, z = _emit_constants(np.array(1), np.array(s), zp)
    consts = float_branch_constants([(d, np.int64(zpi), np.int64(m)) for d, zpi, m in zip(dtypes, zps, ms)], r, ss, z)
    assert consts is not None
    qs = [np.concatenate([rng.integers(ranges[d][0], ranges[d][1] + 1, 3000), np.array(ranges[d] * 3)]) for d in dtypes]
    qs = [q[: min(len(x) for x in qs)] for q in qs]
    total = sum((q.astype(np.float64) - zpf) * mf for q, zpf, mf in zip(qs, consts["zpf"], consts["Mf"]))
    got = np.clip(np.floor(total + consts["Cf"]).astype(np.int64), lo, hi)
    exact = [sum((int(q[j]) - zpi) * m for q, zpi, m in zip(qs, zps, ms)) for j in range(len(qs[0]))]
    want = np.clip(np.array([((p + (1 << (s - 1))) >> s) + zp for p in exact]), lo, hi)
    assert np.array_equal(got, want)
    assert 0 < np.count_nonzero((want > lo) & (want < hi))


def test_branch_int32_form_equals_int64_chain():
    """A residual rescale narrowed by qparams.shared_shift_multipliers(narrow=True): the int32
    sum of (q_i - zp_i) M_i, rounded and shifted arithmetically, equals the int64 chain on every
    extreme pair and random pairs, and never leaves int32."""
    from passes.quantize.qparams import shared_shift_multipliers
    from targets.lowering.requant_float import float_branch_constants

    rng = np.random.default_rng(11)
    (m_a, m_b), s = shared_shift_multipliers([0.83, -1.21], narrow=True)
    assert s < 31
    zp, lo, hi, zps = 9, 0, 255, [3, 250]
    _, r, ss, z = _emit_constants(np.array(1), np.array(s), zp)
    consts = float_branch_constants([("uint8", np.int64(zps[0]), np.int64(m_a)), ("uint8", np.int64(zps[1]), np.int64(m_b))], r, ss, z)
    narrow = consts["int32"]
    qa = np.concatenate([rng.integers(0, 256, 4000), np.array([0, 0, 255, 255])])
    qb = np.concatenate([rng.integers(0, 256, 4000), np.array([0, 255, 0, 255])])
    total = (qa - zps[0]) * int(narrow["M"][0]) + (qb - zps[1]) * int(narrow["M"][1]) + int(narrow["half"])
    assert total.min() >= -(1 << 31) and total.max() < 1 << 31
    got = np.clip((total.astype(np.int32) >> np.int32(narrow["S"])) + np.int32(narrow["zp"]), lo, hi)
    exact = [(int(a) - zps[0]) * m_a + (int(b) - zps[1]) * m_b for a, b in zip(qa, qb)]
    want = np.clip(np.array([((p + (1 << (s - 1))) >> s) + zp for p in exact]), lo, hi)
    assert np.array_equal(got, want)
    assert 0 < np.count_nonzero((want > lo) & (want < hi))
    folded = total - int(narrow["half"]) + int(narrow["offset"])
    assert folded.min() >= -(1 << 31) and folded.max() < 1 << 31
    assert np.array_equal(np.clip(folded.astype(np.int32) >> np.int32(narrow["S"]), lo, hi), want)
    # the default (30-bit) multipliers overflow int32: float64 form only
    (m_a, m_b), s = shared_shift_multipliers([0.83, -1.21])
    _, r, ss, z = _emit_constants(np.array(1), np.array(s), zp)
    wide = float_branch_constants([("uint8", np.int64(0), np.int64(m_a)), ("uint8", np.int64(0), np.int64(m_b))], r, ss, z)
    assert wide is not None and "int32" not in wide


def test_branch_form_declines_wide_products():
    from targets.lowering.requant_float import float_branch_constants

    _, r, s, z = _emit_constants(np.array(1), np.array(46), 0)
    wide = [("uint8", np.int64(0), np.int64(1 << 46))]  # 255 * 2^46 > 2^53
    assert float_branch_constants(wide, r, s, z) is None
    assert float_branch_constants([("uint8", np.int64(0), np.int64(1 << 30))], r, s, z) is not None
