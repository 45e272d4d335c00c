"""Exact float64 lowering of the integer-only requantizer, for CPUs without a 64-bit vector multiply.

The integer-only graph requantizes an int32 accumulator ``a`` per output channel with the int64
chain of passes/quantize/emit.py::

    y = Cast(Clip(Cast(BitShift(Cast(a64 * M + R, UINT64), S), INT64) + Z, lo, hi), UINT8)
      = clip(floor((a * M + 2^(S-1)) / 2^S) + zp, lo, hi)          R = 2^(S-1) + 2^62,
                                                                     Z = zp - 2^(62-S)

x86 has no 64x64-bit vector multiply below AVX-512DQ, so LLVM emulates ``a64 * M`` with three
``vpmuludq`` and shifts, and the chain costs ~40 instructions per 8 outputs (measured: half the
time of MobileNetV2's int8 1x1 convs on Zen 3). This module rewrites the chain, in the Relax
module before legalization, into the same function computed with float64 lanes::

    a' = min(max(a, A_lo), A_hi)                                      int32, per channel
    y  = clip(int32(floor(float64(a') * Mf + Cf)), lo, hi)            Mf = M 2^-S, Cf = zp + 1/2

Why it is exact (for every int32 ``a``; the int64 chain never overflows since M < 2^30):

* f(a) = floor((a M + 2^(S-1)) / 2^S) is non-decreasing in ``a`` (M > 0). A_hi is the smallest
  ``a`` with f(a) + zp >= hi and A_lo the largest with f(a) + zp <= lo, so clamping ``a`` to
  [A_lo, A_hi] first changes only values that the final clip sends to lo or hi anyway.
* Mf = M 2^-S and Cf = zp + 1/2 are exact doubles. For |a'| <= max(|A_lo|, |A_hi|) the product
  a' M and the numerator a' M + 2^(S-1) + zp 2^S are integers below 2^53, so ``float64(a') * Mf``
  and the sum with Cf (fused into an FMA or not) are exact: the double is exactly
  (a' M + 2^(S-1) + zp 2^S) / 2^S and its floor is f(a') + zp.

When every clamped product also fits int32, ``max(|A_lo|, |A_hi|) M + 2^(S-1) < 2^31`` (the
quantizer caps S at 22 for this, passes/quantize/qparams.py ``narrow_dyadic``), the chain is
computed in int32 lanes instead, with the same clamp::

    y  = clip(((a' * M + 2^(S-1)) >> S) + zp, lo, hi)                 int32; >> is arithmetic

exact because every value is the int64 chain's value, none leaves the int32 range, and an
arithmetic right shift of a negative int32 is its floor division by 2^S. Per 8 outputs that is
~9 AVX2 instructions (``vpmulld``, ``vpsravd``, adds and clamps) instead of ~18. Where
``max(|A_lo|, |A_hi|) M + |2^(S-1) + zp 2^S| < 2^31`` (every chain of the benchmark models) the
zero point joins the rounding term, ``y = clip((a' * M + 2^(S-1) + zp 2^S) >> S, lo, hi)``: the
same floor plus zp, one add fewer per vector of outputs. Measured on one Zen 4 core, whole-model
A/B (interleaved, 40 runs): MobileNetV2 int8 1.190x -> 1.136x of ONNX Runtime int8, ResNet-18
1.053x -> 1.051x.

The accumulator is usually ``a = p + c``: a conv or matmul ``p`` with a constant 8-bit weight
plus constant per-channel offsets (the bias, the input zero point's correction). Then
``clamp(p + c, A_lo, A_hi) = clamp(p, A_lo - c, A_hi - c) + c`` and ``(a' * M + offset)`` becomes
``clamp(p, A_lo - c, A_hi - c) * M + (offset + c M)``: the offsets fold into the clamp bounds and
the rounding term, one more add fewer (``fold_accumulator_offsets``). Exact when the original
``p + c`` cannot wrap in int32 (|p| is bounded by its weights over the 8-bit data range), and
the shifted bounds, their products and the new offset fit int32 (MobileNetV2 33 of 52 chains,
ResNet-18 18 of 20; the others have offsets too large for the shifted bounds). Zen 4 A/B:
MobileNetV2 int8 1.148x -> 1.133x of ONNX Runtime int8, ResNet-18 1.061x -> 1.049x.

The same tail after the residual Add / Concat rescale (int32 too when its sum fits), ``p = sum_i (q_i - zp_i) M_i`` over 8-bit
branch inputs q_i (passes/quantize/emit.py ``rescale_sum``), becomes
``clip(int32(floor(sum_i (float64(q_i) - zp_i) * M_i 2^-S + Cf)), lo, hi)``: no clamp is needed,
the q_i are bounded by their 8-bit range, and every term and partial sum is an exact double when
sum_i max|q_i - zp_i| |M_i| + 2^(S-1) + |zp| 2^S < 2^53 (checked per element; M_i may be negative).

The rewrite is applied per chain only when every channel's constants have exactly this structure
(S in 1..62, 0 < M < 2^30, R and Z as above) and meet the 2^53 bound (it holds for S <= ~44, i.e. any
realistic requantization scale); any other chain keeps its int64 form. Per 8 outputs the float
form is ~18 AVX2 instructions (int32 clamps, ``vcvtdq2pd``, ``vfmadd``, ``vroundpd``,
``vcvttpd2dq``).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from targets.lowering.integer_ops import _constant
from targets.lowering.relax_rewrites import function_bindings, with_functions

__all__ = ["float_branch_constants", "float_requant_constants", "rewrite_requant_chains"]

_OFFSET_BITS = 62  # passes/quantize/emit.py's non-negativity offset
_EXACT_BITS = 53  # float64 significand
_8BIT_RANGES = {"uint8": (0, 255), "int8": (-128, 127)}  # (min, max) of the 8-bit activations


def _tail_constants(r, s, z) -> np.ndarray | None:
    """The output zero point of each element of emit.py's tail constants (broadcast), or None
    when R and Z do not have its structure (R = 2^(S-1) + 2^62, Z = zp - 2^(62-S), 1 <= S <= 62)."""
    r, s, z = np.broadcast_arrays(*(np.asarray(v).astype(object) for v in (r, s, z)))
    zps = np.empty(r.shape, object)
    for index in np.ndindex(r.shape):
        ri, si, zi = int(r[index]), int(s[index]), int(z[index])
        if not (1 <= si <= _OFFSET_BITS and ri == (1 << (si - 1)) + (1 << _OFFSET_BITS)):
            return None
        zps[index] = zi + (1 << (_OFFSET_BITS - si))
    return zps


def float_branch_constants(branches, r, s, z) -> dict | None:
    """Float64 form of a rescale sum ``floor((sum_i (q_i - zp_i) M_i + 2^(S-1)) / 2^S) + zp`` over
    8-bit branches ``[(dtype, zp_i, M_i)]``: per branch ``Mf_i = M_i 2^-S`` and ``zpf_i``, and
    ``Cf = zp + 1/2`` (all float64, broadcast with S); None unless every intermediate is an exact
    double (the numerator sum_i max|q_i - zp_i| |M_i| + 2^(S-1) + |zp| 2^S below 2^53). No clamp
    is needed: the branch inputs are bounded by their 8-bit range. With ``"int32"`` (``M`` and
    ``zp_in`` per branch, ``half``, ``S``, ``zp``) when sum_i max|q_i - zp_i| |M_i| + 2^(S-1) <
    2^31: the sum, rounded and shifted arithmetically in int32, is the same integer."""
    zps = _tail_constants(r, s, z)
    if zps is None:
        return None
    arrays = np.broadcast_arrays(np.asarray(s).astype(object), zps, *(np.asarray(m).astype(object) for _, _, m in branches),
                                 *(np.asarray(zp).astype(object) for _, zp, _ in branches))
    s_b, zp_b = arrays[0], arrays[1]
    ms, bzps = arrays[2:2 + len(branches)], arrays[2 + len(branches):]
    shape = s_b.shape
    out = {"Mf": [np.empty(shape, np.float64) for _ in branches], "zpf": [np.empty(shape, np.float64) for _ in branches],
           "Cf": np.empty(shape, np.float64)}
    narrow = True
    magnitude = np.empty(shape, object)
    for index in np.ndindex(shape):
        si, zp = int(s_b[index]), int(zp_b[index])
        half = 1 << (si - 1)
        products = 0
        for i, (dtype, _, _) in enumerate(branches):
            qmin, qmax = _8BIT_RANGES[dtype]
            mi, zpi = int(ms[i][index]), int(bzps[i][index])
            products += max(abs(qmin - zpi), abs(qmax - zpi)) * abs(mi)
            out["Mf"][i][index] = mi * 2.0**-si
            out["zpf"][i][index] = zpi
        if products + half + abs(zp << si) >= 1 << _EXACT_BITS or not -(1 << 31) < zp < 1 << 31:
            return None
        out["Cf"][index] = zp + 0.5
        magnitude[index] = products
        narrow &= products + half < 1 << 31
    if narrow:
        # The sum and its rounding term fit int32 (zp is added after the shift): the int32 form.
        out["int32"] = {"M": [_int32(m) for m in ms], "zp_in": [_int32(z) for z in bzps], **_int32_tail_constants(s_b, zp_b, magnitude)}
    return out


def _int32(values: np.ndarray) -> np.ndarray:
    """An object array of Python ints (checked to fit) as int32."""
    return values.astype(np.int64).astype(np.int32)


def _int32_tail_constants(s: np.ndarray, zp: np.ndarray, magnitude: np.ndarray) -> dict[str, np.ndarray | None]:
    """The int32 tail's constants: ``half`` = 2^(S-1), ``S``, ``zp`` (object arrays of the shape),
    and ``offset`` = 2^(S-1) + zp 2^S when ``magnitude`` (the bound of |x| before the rounding
    add, per element) + |offset| < 2^31 everywhere, else None: then
    ``(x + offset) >> S == ((x + 2^(S-1)) >> S) + zp`` (adding a multiple of 2^S before a floor
    division by 2^S adds its quotient after) with no int32 overflow, one add fewer per vector."""
    half = np.asarray(np.left_shift(1, s.astype(np.int64) - 1), dtype=object)
    # object arithmetic on 0-d arrays returns Python ints: keep arrays of the broadcast shape
    offset = np.asarray(half + np.asarray(zp, dtype=object) * np.asarray(np.left_shift(1, s.astype(np.int64)), dtype=object), dtype=object)
    fits = all(int(mag) + abs(int(off)) < 1 << 31 for mag, off in zip(np.asarray(magnitude).reshape(-1), offset.reshape(-1)))
    return {"half": _int32(half), "S": _int32(s), "zp": _int32(zp), "offset": _int32(offset) if fits else None}


def _ceil_div(n: int, d: int) -> int:
    return -((-n) // d)


def float_requant_constants(m, r, s, z, lo: int, hi: int) -> dict[str, np.ndarray] | None:
    """Constants of the float64 form for the int64 requantizer constants (broadcast together):
    ``A_lo``/``A_hi`` (int32), ``Mf``/``Cf`` (float64), all of the broadcast shape; None when a
    channel does not have the emit.py structure or the float64 form would not be exact. With
    ``"int32"`` (``M``, ``half`` = 2^(S-1), ``S``, ``zp``, int32) when every channel's clamped
    product fits int32, so the int32 form is exact as well (module docstring)."""
    zps = _tail_constants(r, s, z)
    if zps is None:
        return None
    m, s, zps = np.broadcast_arrays(np.asarray(m).astype(object), np.asarray(s).astype(object), zps)
    shape = m.shape
    a_lo, a_hi = np.empty(shape, np.int64), np.empty(shape, np.int64)
    mf, cf = np.empty(shape, np.float64), np.empty(shape, np.float64)
    narrow = True
    magnitude = np.empty(shape, object)
    int32_min, int32_max = -(1 << 31), (1 << 31) - 1
    for index in np.ndindex(shape):
        mi, si, zp = int(m[index]), int(s[index]), int(zps[index])
        if not 0 < mi < 1 << 30:
            # M > 0: the clamp needs a non-decreasing f; M < 2^30 (passes/quantize/qparams.py's
            # range): the int64 chain cannot overflow for any int32 a, so "exact" is for all a
            return None
        half = 1 << (si - 1)
        # smallest a with f(a) + zp >= hi; largest a with f(a) + zp <= lo (f as in the docstring)
        upper = _ceil_div(((hi - zp) << si) - half, mi)
        lower = _ceil_div(((lo - zp + 1) << si) - half, mi) - 1
        upper, lower = min(max(upper, int32_min), int32_max), min(max(lower, int32_min), int32_max)
        bound = max(abs(upper), abs(lower)) * mi + half + abs(zp << si)
        if bound >= 1 << _EXACT_BITS or not -(1 << 31) < zp < 1 << 31:
            return None
        a_lo[index], a_hi[index] = lower, upper
        mf[index] = mi * 2.0**-si  # exact: mi < 2^53 and a power-of-two scale
        cf[index] = zp + 0.5
        magnitude[index] = max(abs(upper), abs(lower)) * mi
        narrow &= magnitude[index] + half < 1 << 31
    consts = {"A_lo": a_lo.astype(np.int32), "A_hi": a_hi.astype(np.int32), "Mf": mf, "Cf": cf}
    if narrow:
        # Every clamped product and its rounding term fit int32: the int32 form is exact too.
        consts["int32"] = {"M": _int32(m), **_int32_tail_constants(s, zps, magnitude)}
    return consts


def _dot_range(weight: np.ndarray, data_dtype: str, reduce_axes: tuple[int, ...]):
    """(lower, upper) of ``sum_k W_k x_k`` over every x of the 8-bit ``data_dtype``, per remaining
    index of ``weight`` (int64): each term lies between W_k dmin and W_k dmax."""
    dmin, dmax = _8BIT_RANGES[data_dtype]
    w = weight.astype(np.int64)
    return np.minimum(w * dmin, w * dmax).sum(axis=reduce_axes), np.maximum(w * dmin, w * dmax).sum(axis=reduce_axes)


def product_magnitude(expr, bindings) -> np.ndarray | None:
    """Bound of |p| per output channel (int64, broadcasting against p) for ``p`` a
    ``conv2d(x, W)`` (NCHW/OIHW, any groups) or ``matmul(x, W)`` (W [K, N]) with a constant W over
    8-bit x; None for anything else."""
    expr = bindings.get(expr, expr)
    if (not isinstance(expr, relax.Call) or not isinstance(expr.op, tvm.ir.Op) or _dtype(expr) != "int32"
            or expr.op.name not in ("relax.nn.conv2d", "relax.matmul")):
        return None
    data_dtype = _dtype(expr.args[0])
    w = _constant(bindings.get(expr.args[1], expr.args[1]))
    if w is None or data_dtype not in _8BIT_RANGES:
        return None
    if expr.op.name == "relax.nn.conv2d" and w.ndim == 4 and str(expr.attrs.data_layout) == "NCHW" \
            and str(expr.attrs.kernel_layout) == "OIHW" and str(expr.attrs.out_layout) == "NCHW":
        lower, upper = _dot_range(w, data_dtype, (1, 2, 3))
        return np.maximum(-lower, upper).reshape(1, -1, 1, 1)
    if expr.op.name == "relax.matmul" and w.ndim == 2:
        lower, upper = _dot_range(w, data_dtype, (0,))
        return np.maximum(-lower, upper)
    return None


def constant_offsets(expr, bindings):
    """(p, c) for an int32 ``expr`` that is ``p`` plus/minus constants (``add(x, c1)``,
    ``subtract(x, c2)``, ...): the innermost non-constant-offset operand and the summed int64
    offset; (expr, None) when there is none."""
    total = None
    while True:
        call = _call(expr, "relax.add", bindings)
        call = call if call is not None else _call(expr, "relax.subtract", bindings)
        if call is None:
            return expr, total
        c = _constant(bindings.get(call.args[1], call.args[1]))
        if c is None or c.dtype != np.int32:
            return expr, total
        c = c.astype(np.int64) * (1 if call.op.name == "relax.add" else -1)
        total = c if total is None else total + c
        expr = call.args[0]


def fold_accumulator_offsets(consts: dict, offsets: np.ndarray, magnitude: np.ndarray) -> dict | None:
    """Clamp bounds and rounding term of the int32 form for ``a = p + offsets`` computed from
    ``p`` directly (module docstring): {"A_lo", "A_hi", "offset"} (int32) with ``A - offsets`` and
    ``offset + offsets * M``, or None unless ``|p| <= magnitude`` keeps ``p + offsets`` inside
    int32 and every shifted bound, product and the new offset fit int32."""
    narrow = consts.get("int32")
    if narrow is None or narrow["offset"] is None:
        return None
    arrays = np.broadcast_arrays(*(np.asarray(v).astype(object) for v in
                                   (consts["A_lo"], consts["A_hi"], narrow["M"], narrow["offset"], offsets, magnitude)))
    a_lo, a_hi, m, offset, c, mag = arrays
    limit = 1 << 31
    new_lo, new_hi, new_offset = a_lo - c, a_hi - c, offset + c * m
    for lo_i, hi_i, m_i, off_i, c_i, mag_i in zip(*(v.reshape(-1) for v in (new_lo, new_hi, m, new_offset, c, mag))):
        if not (int(mag_i) + abs(int(c_i)) < limit and max(abs(int(lo_i)), abs(int(hi_i))) * int(m_i) < limit
                and abs(int(off_i)) < limit):
            return None
    return {"A_lo": _int32(new_lo), "A_hi": _int32(new_hi), "offset": _int32(new_offset)}


def _call(expr, op_name: str, bindings) -> relax.Call | None:
    """``expr`` (a var bound in the function, or a call) as a call of the Relax op ``op_name``."""
    expr = bindings.get(expr, expr)
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == op_name:
        return expr
    return None


def _clip_call(expr, kind: str, bindings) -> tuple[relax.Expr, int] | None:
    """(input, bound) of ``maximum(x, c)`` / ``minimum(x, c)`` with a scalar constant ``c``: the
    Relax op, or the ``call_tir`` of the TOPI kernel the ONNX importer emits for Clip."""
    call = _call(expr, f"relax.{kind}", bindings)
    if call is None:
        call = _call(expr, "relax.call_tir", bindings)
    if call is None:
        return None
    if call.op.name == "relax.call_tir":
        callee, args = call.args[0], call.args[1]
        if not (isinstance(callee, relax.GlobalVar) and callee.name_hint.rstrip("0123456789") == kind):
            return None
        if not isinstance(args, relax.Tuple) or len(args.fields) != 2:
            return None
        x, c = args.fields
    else:
        x, c = call.args
    value = _constant(c)
    if value is None or value.size != 1:
        return None
    return x, int(value.reshape(-1)[0])


def _dtype(expr) -> str:
    return str(expr.ty.dtype)


def _match_chain(call: relax.Call, bindings):
    """The parts of one requantizer chain ending in ``call`` (an astype to 8 or 32 bits): the
    int64 product before the rounding add, the constants ``R``, ``S``, ``Z`` and the clip bounds;
    None for anything else."""
    if not (call.op.name == "relax.astype" and _dtype(call) in ("uint8", "int8", "int32")):
        return None
    clip = _call(call.args[0], "relax.clip", bindings)
    if clip is not None:  # R.clip(x, lo, hi) with immediate bounds
        expr, lo, hi = clip.args[0], int(clip.args[1].value), int(clip.args[2].value)
    else:  # maximum then minimum (the ONNX importer's Clip with constant bounds)
        clipped = _clip_call(call.args[0], "minimum", bindings)
        lower_clipped = _clip_call(clipped[0], "maximum", bindings) if clipped is not None else None
        if lower_clipped is None:
            return None
        expr, lo, hi = lower_clipped[0], lower_clipped[1], clipped[1]
    steps = {}
    for name, op, dtype in (("Z", "relax.add", "int64"), (None, "relax.astype", "int64"), ("S", "relax.right_shift", "uint64"),
                            (None, "relax.astype", "uint64"), ("R", "relax.add", "int64")):
        node = _call(expr, op, bindings)
        if node is None or _dtype(node) != dtype:
            return None
        if name is not None:
            value = _constant(node.args[1])
            if value is None:
                return None
            steps[name] = value
        expr = node.args[0]
    if not -(1 << 31) <= lo <= hi < 1 << 31:
        return None
    return expr, steps, lo, hi


def _accumulator_product(expr, bindings):
    """``Mul(Cast(a, INT64), M)`` with an int32 ``a`` and a constant M: (a, M), else None."""
    mul = _call(expr, "relax.multiply", bindings)
    if mul is None or _dtype(mul) != "int64":
        return None
    m = _constant(mul.args[1])
    cast = _call(mul.args[0], "relax.astype", bindings)
    if m is None or cast is None or _dtype(cast.args[0]) != "int32":
        return None
    return cast.args[0], m


def _centered_8bit(expr, bindings):
    """``Cast(q, INT64)`` or ``Sub(Cast(q, INT64), zp)`` with an 8-bit q and a constant zp: (q, zp)."""
    zp = np.zeros((), np.int64)
    sub = _call(expr, "relax.subtract", bindings)
    if sub is not None:
        zp = _constant(sub.args[1])
        if zp is None:
            return None
        expr = sub.args[0]
    cast = _call(expr, "relax.astype", bindings)
    if cast is None or _dtype(cast) != "int64" or _dtype(cast.args[0]) not in ("uint8", "int8"):
        return None
    return cast.args[0], zp


def _branch_products(expr, bindings):
    """The residual Add / Concat rescale ``sum_i Mul(centered(q_i), M_i)`` (one or two branches,
    passes/quantize/emit.py ``rescale_sum`` without a constant offset): [(q_i, zp_i, M_i)], else None."""
    add = _call(expr, "relax.add", bindings)
    terms = [add.args[0], add.args[1]] if add is not None else [expr]
    branches = []
    for term in terms:
        mul = _call(term, "relax.multiply", bindings)
        if mul is None or _dtype(mul) != "int64":
            return None
        m = _constant(mul.args[1])
        centered = _centered_8bit(mul.args[0], bindings)
        if m is None or centered is None:
            return None
        branches.append((centered[0], centered[1], m))
    return branches


@relax.expr_functor.mutator
class _RequantRewriter(relax.PyExprMutator):
    def __init__(self, mod, bindings):
        super().__init__(mod)
        self.bindings = bindings
        self.rewritten = 0
        self.kept = 0

    def visit_call_(self, call):  # noqa: N802 - PyExprMutator hook
        # matched on the original call (typed; the chain's vars are looked up in ``bindings``)
        matched = None
        if isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.astype":
            matched = _match_chain(call, self.bindings)
        if matched is None:
            return super().visit_call_(call)
        product, steps, lo, hi = matched
        emit = self.builder_.emit  # one binding per op: the dataflow block stays in normal form
        accumulator = _accumulator_product(product, self.bindings)
        branches = None if accumulator is not None else _branch_products(product, self.bindings)
        if accumulator is not None:
            consts = float_requant_constants(accumulator[1], steps["R"], steps["S"], steps["Z"], lo, hi)
        elif branches is not None:
            consts = float_branch_constants([(_dtype(q), zp, m) for q, zp, m in branches], steps["R"], steps["S"], steps["Z"])
        else:
            return super().visit_call_(call)
        if consts is None:
            self.kept += 1
            return super().visit_call_(call)
        self.rewritten += 1
        if accumulator is not None:
            x, a_lo, a_hi, narrow = accumulator[0], consts["A_lo"], consts["A_hi"], consts.get("int32")
            product, offsets = constant_offsets(x, self.bindings)
            magnitude = product_magnitude(product, self.bindings) if offsets is not None else None
            folded = fold_accumulator_offsets(consts, offsets, magnitude) if magnitude is not None else None
            if folded is not None:  # the constant offsets in the clamp bounds and the rounding term
                x, a_lo, a_hi, narrow = product, folded["A_lo"], folded["A_hi"], {**narrow, "offset": folded["offset"]}
            x = emit(relax.op.maximum(self.visit_expr(x), relax.const(a_lo, "int32")))
            x = emit(relax.op.minimum(x, relax.const(a_hi, "int32")))
            if narrow is not None:
                x = emit(relax.op.multiply(x, relax.const(narrow["M"], "int32")))
                return self._int32_tail(x, narrow, lo, hi, _dtype(call))
            x = emit(relax.op.astype(x, "float64"))
            x = emit(relax.op.multiply(x, relax.const(consts["Mf"], "float64")))
        elif consts.get("int32") is not None:
            narrow, x = consts["int32"], None
            for (q, _, _), m, zp_in in zip(branches, narrow["M"], narrow["zp_in"]):
                term = emit(relax.op.astype(self.visit_expr(q), "int32"))
                term = emit(relax.op.subtract(term, relax.const(zp_in, "int32")))
                term = emit(relax.op.multiply(term, relax.const(m, "int32")))
                x = term if x is None else emit(relax.op.add(x, term))
            return self._int32_tail(x, narrow, lo, hi, _dtype(call))
        else:
            x = None
            for (q, _, _), mf, zpf in zip(branches, consts["Mf"], consts["zpf"]):
                term = emit(relax.op.astype(self.visit_expr(q), "float64"))
                term = emit(relax.op.subtract(term, relax.const(zpf, "float64")))
                term = emit(relax.op.multiply(term, relax.const(mf, "float64")))
                x = term if x is None else emit(relax.op.add(x, term))
        x = emit(relax.op.add(x, relax.const(consts["Cf"], "float64")))
        x = emit(relax.op.floor(x))
        x = emit(relax.op.astype(x, "int32"))
        x = emit(relax.op.maximum(x, relax.const(lo, "int32")))
        x = emit(relax.op.minimum(x, relax.const(hi, "int32")))
        return relax.op.astype(x, _dtype(call))

    def _int32_tail(self, x, narrow: dict, lo: int, hi: int, dtype: str):
        """``clip(((x + 2^(S-1)) >> S) + zp, lo, hi)`` in int32 (``>>`` is arithmetic: a floor);
        ``clip((x + 2^(S-1) + zp 2^S) >> S, lo, hi)`` where that sum cannot overflow
        (``_int32_tail_constants``' offset)."""
        emit = self.builder_.emit
        if narrow["offset"] is not None:
            x = emit(relax.op.add(x, relax.const(narrow["offset"], "int32")))
            x = emit(relax.op.right_shift(x, relax.const(narrow["S"], "int32")))
        else:
            x = emit(relax.op.add(x, relax.const(narrow["half"], "int32")))
            x = emit(relax.op.right_shift(x, relax.const(narrow["S"], "int32")))
            x = emit(relax.op.add(x, relax.const(narrow["zp"], "int32")))
        x = emit(relax.op.maximum(x, relax.const(lo, "int32")))
        x = emit(relax.op.minimum(x, relax.const(hi, "int32")))
        return relax.op.astype(x, dtype)


def rewrite_requant_chains(mod: tvm.IRModule) -> tuple[tvm.IRModule, int, int]:
    """Rewrite every exact-able int64 requantizer chain of ``mod``'s Relax functions into the
    float64 form (module docstring). Returns (module, chains rewritten, chains kept in int64)."""
    rewritten = kept = 0
    updates = {}
    for gvar, func in mod.functions_items():
        if not isinstance(func, relax.Function):
            continue
        rewriter = _RequantRewriter(mod, function_bindings(func))
        new_func = rewriter.visit_expr(func)
        rewritten += rewriter.rewritten
        kept += rewriter.kept
        if rewriter.rewritten:
            updates[gvar] = new_func
    return with_functions(mod, updates), rewritten, kept
