"""I-BERT integer kernels (Kim et al. 2021): integer GELU, Softmax and LayerNorm as standard ONNX ops.

Each kernel has two halves: a pure function that derives its fixed-point constants from the
activation scales (``*_constants``; raises ``KernelRangeError`` when the scales put an intermediate
outside int64, in which case the caller keeps the op as a float island), and an emitter that builds
the int64 node chain (``emit_*``). The formulas and scales are documented in the package docstring
(section "I-BERT kernels"); the comments here say why each step is written the way it is.

All arithmetic is int64 and every intermediate is non-negative where ONNX semantics would
otherwise differ from the math: ONNX integer ``Div`` truncates toward zero, which equals floor only
for a non-negative quotient, and ``BitShift`` exists for unsigned types only. Values stay far below
2^31 wherever ``Min``/``Clip`` see them (ONNX Runtime 1.31 mis-orders int64 values in [2^31, 2^32)
in those ops).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from compiler.ir import DataType, Value, ir
from passes.quantize.emit import Emitter
from passes.quantize.qparams import ActivationQParams, DyadicError, dyadic_bounded

__all__ = [
    "GeluConstants",
    "KernelRangeError",
    "LayerNormConstants",
    "SoftmaxConstants",
    "emit_gelu",
    "emit_layer_norm",
    "emit_softmax",
    "gelu_constants",
    "isqrt_iterations",
    "layer_norm_constants",
    "softmax_constants",
]

# I-BERT's polynomial coefficients (paper, eqs. 7 and 11):
#   erf(x)  ~ sgn(x) [a (min(|x|, -b) + b)^2 + 1],  a = -0.2888, b = -1.769
#   exp(p)  ~ 0.3585 (p + 1.353)^2 + 0.344          for p in (-ln 2, 0]
ERF_A, ERF_B = 0.2888, 1.769  # magnitudes: a = -ERF_A, b = -ERF_B
EXP_A, EXP_B, EXP_C = 0.3585, 1.353, 0.344

#: Fixed-point resolution of the exp argument: its scale is refined to at most 2^-SOFTMAX_BITS.
SOFTMAX_BITS = 12
#: Fixed-point resolution of the erf argument: its scale is refined to at most 2^-GELU_BITS.
GELU_BITS = 10
_LIMIT = 1 << 62  # every int64 intermediate stays below this (the requantizer adds 2^62 on top of 2^61)


class KernelRangeError(ValueError):
    """The activation scales put a kernel intermediate outside its int64 budget."""


def _reduced(shape: ir.Shape | None, axes: list[int]) -> ir.Shape | None:
    """The keepdims=1 shape of a reduction over ``axes``."""
    if shape is None:
        return None
    dims = list(shape)
    for axis in axes:
        dims[axis % len(dims)] = 1
    return ir.Shape(dims)


def _refine(scale: float, bits: int) -> int:
    """The integer K with scale / K <= 2^-bits (K = 1 when the scale is already that fine).

    Multiplying an integer by K is exact, so the refined tensor carries the same information at a
    finer scale; the kernel's constants (ln2 / S, b / S) then round with relative error ~2^-bits
    instead of ~S (an 8-bit input's scale is coarse: ln2 / S can be as small as 8).
    """
    return max(1, math.ceil(scale * (1 << bits)))


# -- Softmax ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SoftmaxConstants:
    k: int  # refinement factor: q_f = K (q - max q), scale S_f = S_x / K
    ln2: int  # round(ln2 / S_f)
    b: int  # round(1.353 / S_f)
    c: int  # round(0.344 / (0.3585 S_f^2))
    precision: int  # P: the output reciprocal 1 / s_y is applied as Cn / 2^P
    cn: int  # round(2^P / s_y)


def softmax_constants(s_x: float, s_y: float, n: int) -> SoftmaxConstants:
    """Constants of the integer Softmax over ``n`` elements (input scale s_x, output scale s_y).

    Bounds: the exp polynomial L = (p + b)^2 + c is largest at p = 0, L_max = b^2 + c; the row sum
    is at most n L_max. P is the largest precision with L_max (Cn + n 2^(P-1)) < 2^62.
    """
    k = _refine(s_x, SOFTMAX_BITS)
    s_f = s_x / k
    ln2, b = round(math.log(2) / s_f), round(EXP_B / s_f)
    c = round(EXP_C / (EXP_A * s_f * s_f))
    l_max = b * b + c
    budget = _LIMIT / (l_max * (1.0 / s_y + n))
    if budget < 2 ** 8:
        raise KernelRangeError(f"integer Softmax: input scale {s_x:.3g} / output scale {s_y:.3g} over {n} elements exceed int64")
    precision = min(32, int(math.floor(math.log2(budget))))
    return SoftmaxConstants(k, ln2, b, c, precision, round(math.ldexp(1.0 / s_y, precision)))


def emit_softmax(emit: Emitter, x_q: Value, qx: ActivationQParams, qy: ActivationQParams, axis: int,
                 consts: SoftmaxConstants, base: str) -> Value:
    """i-exp Softmax along ``axis`` (see the package docstring); returns the 8-bit output."""
    shape = x_q.shape
    i64 = DataType.INT64
    axes = emit.constant(f"{base}_axes", np.array([axis], dtype=np.int64))
    rshape = _reduced(shape, [axis])
    c = emit.op("Cast", [x_q], i64, shape, f"{base}_i64", {"to": int(i64)})
    peak = emit.op("ReduceMax", [c], i64, rshape, f"{base}_max", {"axes": [axis], "keepdims": 1})
    d = emit.op("Sub", [c, peak], i64, shape, f"{base}_d")  # q - max q <= 0 (the zero point cancels)
    t = emit.op("Mul", [d, emit.int64("neg_k", -consts.k)], i64, shape, f"{base}_t")  # -q_f >= 0
    # z = floor(-q_f / ln2): the dividend is non-negative, so ONNX's truncating Div is floor here
    z = emit.op("Div", [t, emit.int64("ln2", consts.ln2)], i64, shape, f"{base}_z")
    p = emit.op("Sub", [emit.op("Mul", [z, emit.int64("ln2", consts.ln2)], i64, shape, f"{base}_zl"), t], i64, shape, f"{base}_p")
    v = emit.op("Add", [p, emit.int64("exp_b", consts.b)], i64, shape, f"{base}_v")  # > 0: 1.353 > ln2
    poly = emit.op("Add", [emit.op("Mul", [v, v], i64, shape, f"{base}_v2"), emit.int64("exp_c", consts.c)], i64, shape, f"{base}_L")
    # 2^-z by a logical right shift (uint64 only); z >= 64 would be undefined, and any z above the
    # polynomial's bit length gives 0 anyway, so it is clamped to 63 (small values: Clip is exact)
    z = emit.op("Clip", [z, emit.int64("lo", 0), emit.int64("hi", 63)], i64, shape, f"{base}_zc")
    shifted = emit.op(
        "BitShift",
        [emit.op("Cast", [poly], DataType.UINT64, shape, f"{base}_Lu", {"to": int(DataType.UINT64)}),
         emit.op("Cast", [z], DataType.UINT64, shape, f"{base}_zu", {"to": int(DataType.UINT64)})],
        DataType.UINT64, shape, f"{base}_exp", {"direction": "RIGHT"},
    )
    e = emit.op("Cast", [shifted], i64, shape, f"{base}_e", {"to": int(i64)})
    total = emit.op("ReduceSum", [e, axes], i64, rshape, f"{base}_sum", {"keepdims": 1})  # >= L(0) > 0
    # y = round(e Cn / (sum 2^P)) = floor((e Cn + sum 2^(P-1)) / (sum 2^P)), all terms >= 0
    num = emit.op("Add", [emit.op("Mul", [e, emit.int64("cn", consts.cn)], i64, shape, f"{base}_ec"),
                          emit.op("Mul", [total, emit.int64("half", 1 << (consts.precision - 1))], i64, rshape, f"{base}_h")],
                  i64, shape, f"{base}_num")
    den = emit.op("Mul", [total, emit.int64("one", 1 << consts.precision)], i64, rshape, f"{base}_den")
    return _finish(emit, emit.op("Div", [num, den], i64, shape, f"{base}_div"), qy.zero_point, qy, base)


def _finish(emit: Emitter, value: Value, offset: int, qy: ActivationQParams, base: str) -> Value:
    """Add(offset) -> Clip(qmin, qmax) -> Cast to the 8-bit type."""
    shape = value.shape
    i64 = DataType.INT64
    q = emit.op("Add", [value, emit.int64("zp_off", offset)], i64, shape, f"{base}_zp")
    q = emit.op("Clip", [q, emit.int64("lo", qy.qmin), emit.int64("hi", qy.qmax)], i64, shape, f"{base}_clip")
    out = DataType.UINT8 if qy.dtype == "uint8" else DataType.INT8
    return emit.op("Cast", [q], out, shape, f"{base}_q", {"to": int(out)})


# -- GELU -------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class GeluConstants:
    k: int  # refinement of the erf argument: integer |q| K at scale S_r = S_x / (sqrt2 K)
    t: int  # round(1.769 / S_r): the erf polynomial's clip point
    one: int  # round(1 / S_L), S_L = 0.2888 S_r^2: the integer "1" at the erf scale
    bound: int  # max |h| of the product h = |q| L + q one
    m: int  # requantizer of h: r = S_x S_L / (2 s_y) ~ M / 2^S
    s: int


def gelu_constants(s_x: float, qmax_abs: int, s_y: float, divisor: float = math.sqrt(2)) -> GeluConstants:
    """Constants of the integer GELU for an input at scale s_x with |q - zp| <= ``qmax_abs``.

    ``divisor`` is the graph's constant in erf(x / divisor) (sqrt 2 for exact GELU).
    """
    s_e = s_x / divisor
    k = _refine(s_e, GELU_BITS)
    s_r = s_e / k
    t = round(ERF_B / s_r)
    s_l = ERF_A * s_r * s_r
    one = round(1.0 / s_l)
    if qmax_abs * k >= 1 << 31:  # Min sees |q| K: keep it below ORT's mis-ordered int64 range
        raise KernelRangeError(f"integer GELU: input scale {s_x:.3g} is too coarse for the erf refinement")
    bound = qmax_abs * 2 * one  # L <= one, so |h| <= |q| one + |q| one
    try:
        m, s = dyadic_bounded(s_x * s_l / (2.0 * s_y), bound)
    except DyadicError as exc:
        raise KernelRangeError(f"integer GELU: {exc}") from None
    return GeluConstants(k, t, one, bound, m, s)


def emit_gelu(emit: Emitter, x_q: Value, qx: ActivationQParams, qy: ActivationQParams, consts: GeluConstants, base: str) -> Value:
    """i-GELU (see the package docstring); returns the 8-bit output."""
    shape = x_q.shape
    i64 = DataType.INT64
    q = emit.centered(x_q, qx, f"{base}_x")
    a = emit.op("Abs", [q], i64, shape, f"{base}_abs")
    # erf polynomial on |x| / sqrt2 clipped at 1.769: u = min(|q| K, T) - T <= 0, L = one - u^2 > 0
    clipped = emit.op("Min", [emit.op("Mul", [a, emit.int64("k", consts.k)], i64, shape, f"{base}_ak"), emit.int64("erf_t", consts.t)],
                      i64, shape, f"{base}_min")
    u = emit.op("Sub", [clipped, emit.int64("erf_t", consts.t)], i64, shape, f"{base}_u")
    poly = emit.op("Sub", [emit.int64("erf_one", consts.one), emit.op("Mul", [u, u], i64, shape, f"{base}_u2")], i64, shape, f"{base}_L")
    # x/2 (1 + sgn(x) L) = S_x S_L / 2 (q one + |q| L): sgn(q) q = |q| avoids a Sign op
    h = emit.op("Add", [emit.op("Mul", [a, poly], i64, shape, f"{base}_aL"),
                        emit.op("Mul", [q, emit.int64("erf_one", consts.one)], i64, shape, f"{base}_q1")], i64, shape, f"{base}_h")
    return emit.requantize_wide(h, consts.m, consts.s, qy, qy.qmin, qy.qmax, base)


# -- LayerNormalization -----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LayerNormConstants:
    n: int  # number of normalised elements
    eps: int  # E = max(1, round(eps N^3 / S_x^2)): epsilon at the scale of V = sum d^2
    start: int  # Newton's starting point: isqrt(V_max) + 1 >= sqrt(V) for every input
    iterations: int
    precision: int  # P: gamma' and beta' are applied as G / 2^P, B / 2^P
    g: np.ndarray  # int64 round(gamma sqrt(N) / s_y 2^P), shape of gamma
    b: np.ndarray  # int64 round(beta / s_y 2^P) + 2^(P-1) + offset 2^P, shape of gamma/beta
    offset: int  # keeps the dividend non-negative; subtracted after the division


def isqrt_iterations(start: int) -> int:
    """Newton steps x <- min(x, floor((x + floor(n / x)) / 2)) from ``start`` >= sqrt(n) that reach
    floor(sqrt(n)) for every n >= 1.

    From above, the step never goes below floor(sqrt(n)) (AM-GM: (x + n/x)/2 >= sqrt(n), and the
    floors keep it >= floor(sqrt(n))) and x' - sqrt(n) <= (x - sqrt(n))^2 / (2x) <= (x - sqrt(n)) / 2,
    so bitlength(start) steps bring x below sqrt(n) + 1, i.e. to r or r + 1 (r = floor(sqrt(n)));
    from r + 1 (> sqrt(n)) one more step gives r, and the Min holds it there.
    """
    return int(start).bit_length() + 2


def layer_norm_constants(s_x: float, s_y: float, n: int, eps: float, gamma: np.ndarray, beta: np.ndarray | None,
                         qrange: int = 255) -> LayerNormConstants:
    """Constants of the integer LayerNorm over ``n`` elements of an 8-bit input (codes span ``qrange``)."""
    e = max(1, round(eps * n ** 3 / (s_x * s_x)))
    v_max = n ** 3 * (qrange / 2) ** 2 + e  # sum (N c_i - sum c)^2 = N^2 sum (c_i - mean)^2 <= N^3 (range/2)^2
    start = math.isqrt(int(math.ceil(v_max))) + 1
    if start >= 1 << 30:
        raise KernelRangeError(f"integer LayerNorm: epsilon {eps:.3g} at input scale {s_x:.3g} exceeds the int64 budget")
    g_real = np.asarray(gamma, dtype=np.float64) * math.sqrt(n) / s_y
    b_real = np.zeros_like(g_real) if beta is None else np.broadcast_to(np.asarray(beta, dtype=np.float64) / s_y, g_real.shape)
    offset = int(math.ceil(np.abs(g_real).max(initial=0.0) + np.abs(b_real).max(initial=0.0))) + 1
    # num = d G + r (B + 2^(P-1) + offset 2^P) with |d| <= r: at most r 2^P (2 offset + 1) < 2^62
    precision = min(40, int(math.floor(math.log2(_LIMIT / (start * (2 * offset + 2))))))
    if precision < 12:
        raise KernelRangeError(f"integer LayerNorm: gamma/beta over output scale {s_y:.3g} exceed the int64 budget")
    g = np.rint(np.ldexp(g_real, precision)).astype(np.int64)
    b = (np.rint(np.ldexp(b_real, precision)) + (1 << (precision - 1)) + offset * (1 << precision)).astype(np.int64)
    return LayerNormConstants(n, e, start, isqrt_iterations(start), precision, g, b, offset)


def emit_layer_norm(emit: Emitter, x_q: Value, qy: ActivationQParams, axes: list[int], consts: LayerNormConstants,
                    base: str) -> Value:
    """Integer LayerNorm over ``axes`` (see the package docstring); returns the 8-bit output."""
    shape = x_q.shape
    i64 = DataType.INT64
    axes_value = emit.constant(f"{base}_axes", np.array(axes, dtype=np.int64))
    rshape = _reduced(shape, axes)
    c = emit.op("Cast", [x_q], i64, shape, f"{base}_i64", {"to": int(i64)})
    total = emit.op("ReduceSum", [c, axes_value], i64, rshape, f"{base}_sum", {"keepdims": 1})
    # d = N c - sum c = N (c - mean) / 1: exact (no division), at scale S_x / N; the zero point cancels
    d = emit.op("Sub", [emit.op("Mul", [c, emit.int64("n", consts.n)], i64, shape, f"{base}_nc"), total], i64, shape, f"{base}_d")
    var = emit.op("ReduceSum", [emit.op("Mul", [d, d], i64, shape, f"{base}_d2"), axes_value], i64, rshape, f"{base}_var", {"keepdims": 1})
    var = emit.op("Add", [var, emit.int64("eps", consts.eps)], i64, rshape, f"{base}_vare")  # >= 1: no division by 0
    # r = floor(sqrt(V')) by Newton from above; Min keeps the sequence monotone (it would otherwise
    # alternate between r and r + 1 when V' + 1 is a square). All values < 2^30.
    root: Value = emit.int64("isqrt0", consts.start)
    for step in range(consts.iterations):
        quotient = emit.op("Div", [var, root], i64, rshape, f"{base}_nq{step}")
        candidate = emit.op("Div", [emit.op("Add", [root, quotient], i64, rshape, f"{base}_ns{step}"), emit.int64("two", 2)],
                            i64, rshape, f"{base}_nh{step}")
        root = emit.op("Min", [root, candidate], i64, rshape, f"{base}_nr{step}")
    # y = round(d sqrt(N) gamma / (r s_y) + beta / s_y): one division by r 2^P of a non-negative
    # dividend (offset 2^P r keeps it >= 0 because |d| <= r; it is subtracted after the floor)
    num = emit.op("Add", [emit.op("Mul", [d, emit.constant(f"{base}_G", consts.g)], i64, shape, f"{base}_dg"),
                          emit.op("Mul", [root, emit.constant(f"{base}_B", consts.b)], i64, shape, f"{base}_rb")], i64, shape, f"{base}_num")
    den = emit.op("Mul", [root, emit.int64("one", 1 << consts.precision)], i64, rshape, f"{base}_den")
    return _finish(emit, emit.op("Div", [num, den], i64, shape, f"{base}_div"), qy.zero_point - consts.offset, qy, base)
