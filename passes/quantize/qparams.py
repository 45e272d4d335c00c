"""Quantization parameters: activation scale/zero point, per-channel weights, int32 bias, dyadic M/2^S.

Everything here is pure numpy (no graph access), so the rewrite pass, the QDQ export and the tests
share one definition of every number that ends up in the graph.

Conventions (see the package docstring for the graph form):

* real = scale * (q - zero_point); scales are stored as float32 in the graph, so every function
  returns float32-representable scales and later math (bias, dyadic) starts from those exact values.
* activations: uint8 asymmetric (zero point in [0, 255]) or int8 symmetric (zero point 0,
  range [-127, 127]); the range always contains 0 so that real 0 (padding, ReLU) is exact.
* weights: symmetric per output channel, int8 in [-127, 127] (8 bits), [-63, 63] (7 bits, ONNX
  Runtime's ``reduce_range``) or [-7, 7] (4 bits), all stored in int8; never -128, so u8 x s8
  pairwise sums in VNNI's vpdpbusd cannot saturate. 7-bit codes also keep AVX2's ``vpmaddubsw``
  exact (255 * (63 + 63) < 2^15), which the int8 conv kernels for x86 CPUs without VNNI use.
* bias: int32 = round(b / (s_in * s_w[c])), zero point 0: it adds directly to the int32 accumulator.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = [
    "ActivationQParams",
    "DyadicError",
    "activation_qparams",
    "dyadic",
    "dyadic_array",
    "quantize_bias",
    "quantize_weight",
    "WEIGHT_BITS",
    "weight_qmax",
]

#: The dyadic multiplier M lies in [2^29, 2^30): 30 bits of precision, and |acc * M| < 2^61 for any
#: int32 accumulator, which leaves room for the 2^62 offset the ONNX form adds before the shift.
M_LOW, M_HIGH = 1 << 29, 1 << 30
S_MIN, S_MAX = 1, 62

_INT32_MAX = np.iinfo(np.int32).max


class DyadicError(ValueError):
    """A rescale factor that no M in [2^29, 2^30), S in [1, 62] represents."""


@dataclasses.dataclass(frozen=True)
class ActivationQParams:
    """Per-tensor activation quantization: real = scale * (q - zero_point), q in [qmin, qmax]."""

    scale: float  # float32-exact
    zero_point: int
    dtype: str  # "uint8" | "int8"

    @property
    def qmin(self) -> int:
        return 0 if self.dtype == "uint8" else -127

    @property
    def qmax(self) -> int:
        return 255 if self.dtype == "uint8" else 127

    @property
    def np_dtype(self) -> type[np.integer]:
        return np.uint8 if self.dtype == "uint8" else np.int8

    def quantize(self, real: float | np.ndarray) -> np.ndarray:
        """Clamped round-half-to-even quantization, like ONNX QuantizeLinear."""
        q = np.rint(np.asarray(real, dtype=np.float64) / self.scale) + self.zero_point
        return np.clip(q, self.qmin, self.qmax).astype(np.int64)


def _f32(x: float) -> float:
    return float(np.float32(x))


def activation_qparams(lo: float, hi: float, dtype: str = "uint8") -> ActivationQParams:
    """Scale and zero point covering [lo, hi] (widened to contain 0).

    uint8 (asymmetric): scale = (hi - lo) / 255, zp = round(-lo / scale) clamped to [0, 255].
    int8 (symmetric):   scale = max(|lo|, |hi|) / 127, zp = 0, codes in [-127, 127].
    A degenerate range (all zeros) gets scale 1: every code then means 0 + k, and 0 is exact.
    """
    if dtype not in ("uint8", "int8"):
        raise ValueError(f"activation dtype must be uint8 or int8, got {dtype!r}")
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"activation range [{lo}, {hi}] is not finite")
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if dtype == "int8":
        bound = max(-lo, hi)
        scale = _f32(bound / 127.0) if bound > 0 else 1.0
        return ActivationQParams(scale if scale > 0 else 1.0, 0, "int8")
    if hi - lo <= 0:
        return ActivationQParams(1.0, 0, "uint8")
    scale = _f32((hi - lo) / 255.0)
    if scale <= 0:  # range below float32's smallest normal: treat as degenerate
        return ActivationQParams(1.0, 0, "uint8")
    zero_point = int(np.clip(round(-lo / scale), 0, 255))
    return ActivationQParams(scale, zero_point, "uint8")


#: Zero point of offset-binary uint8 weight storage (codes ``w_q + 128``) next to uint8
#: activations; see ``integer.Rewriter._weight_operands`` for why.
WEIGHT_ZERO_POINT_U8 = 128


#: Weight bit widths the quantizer produces.
WEIGHT_BITS = (8, 7, 4)


def weight_qmax(bits: int) -> int:
    """Largest symmetric weight code: 127 for 8 bits, 63 for 7, 7 for 4 (never the asymmetric
    -2^(b-1))."""
    if bits not in WEIGHT_BITS:
        raise ValueError(f"weight bits must be 8, 7 or 4, got {bits}")
    return (1 << (bits - 1)) - 1


def quantize_weight(weight: np.ndarray, axis: int, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel quantization along ``axis`` (the output channel).

    s_w[c] = max|W[c]| / qmax,  W_q = clip(round(W / s_w[c]), -qmax, qmax)  (int8 storage).

    A channel of zeros (a pruned filter) has no range; it gets the largest scale of the layer (any
    positive value quantizes zeros exactly, and a layer-typical scale keeps its requant multiplier
    and bias in range). Returns ``(W_q int8, s_w float32 [C])``.
    """
    qmax = weight_qmax(bits)
    w = np.asarray(weight, dtype=np.float64)
    axis = axis % w.ndim
    reduce_axes = tuple(i for i in range(w.ndim) if i != axis)
    absmax = np.abs(w).max(axis=reduce_axes) if reduce_axes else np.abs(w)
    scales = (absmax / qmax).astype(np.float32)
    positive = scales[scales > 0]
    fallback = np.float32(positive.max()) if positive.size else np.float32(1.0)
    scales = np.where(scales > 0, scales, fallback).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / scales.astype(np.float64).reshape(shape)), -qmax, qmax).astype(np.int8)
    return q, scales


def quantize_bias(bias: np.ndarray, input_scale: float, weight_scales: np.ndarray, where: str = "bias") -> np.ndarray:
    """int32 bias = round(b / (s_in * s_w[c])) (round half to even), so it adds to the accumulator.

    Raises:
        ValueError: a value does not fit int32 (the layer's scales are degenerate); names ``where``.
    """
    denom = np.float64(input_scale) * np.asarray(weight_scales, dtype=np.float64)
    q = np.rint(np.asarray(bias, dtype=np.float64) / denom)
    if np.any(np.abs(q) > _INT32_MAX):
        worst = float(np.abs(q).max())
        raise ValueError(f"{where}: quantized bias {worst:.3g} does not fit int32 (s_in * s_w too small)")
    return q.astype(np.int32)


def dyadic(r: float) -> tuple[int, int]:
    """The dyadic approximation r ~ M / 2^S with M in [2^29, 2^30) and S in [1, 62].

    Write r = f * 2^e with f in [0.5, 1) (``math.frexp``). Then r * 2^S lies in [2^29, 2^30) exactly
    when S = 30 - e, and M = round(f * 2^30) (exact in float64: f has 53 bits). When rounding gives
    M = 2^30 we use M = 2^29, S - 1 (the same value). The error is at most half a unit of M:

        |r - M / 2^S| <= 2^-(S+1)   and   r >= 2^(29-S),   so   |r - M/2^S| / r <= 2^-30.

    Representable r: 2^-33 <= r < 2^28 (up to rounding at the ends).

    Raises:
        DyadicError: r is not finite and positive, or needs S outside [1, 62].
    """
    r = float(r)
    if not math.isfinite(r) or r <= 0:
        raise DyadicError(f"rescale factor {r!r} must be finite and positive")
    f, e = math.frexp(r)
    shift = 30 - e
    multiplier = int(round(math.ldexp(f, 30)))
    if multiplier == M_HIGH:
        multiplier, shift = M_LOW, shift - 1
    if not S_MIN <= shift <= S_MAX:
        raise DyadicError(
            f"rescale factor {r:.6g} needs shift {shift}, outside [{S_MIN}, {S_MAX}] "
            "(scales differ by more than the int64 requantizer can express)"
        )
    return multiplier, shift


#: Largest shift of an accumulator requantizer whose chain fits int32 (:func:`narrow_dyadic`).
INT32_REQUANT_SHIFT = 22
#: Fewest bits a capped multiplier may keep (relative error of the rescale <= 2^-NARROW_MIN_BITS).
#: 8, not more: ResNet-18's deepest layers have factors down to 2^-15 (M of 8-9 bits at S = 22);
#: lowering the floor from 12 to 8 bits moved their requantizers to int32 lanes (ResNet-18 int8-w7
#: 0.71x -> 0.68x of ONNX Runtime fp32) and changed the output SQNR of every benchmark model by at
#: most 0.05 dB -- a per-channel gain error of <= 2^-8 is far below the 7/8-bit weights' own.
NARROW_MIN_BITS = 8
#: Smallest shift a narrowed branch rescale may use (:func:`shared_shift_multipliers`).
NARROW_MIN_BRANCH_SHIFT = 16


def narrow_dyadic(r: float) -> tuple[int, int]:
    """``dyadic`` with the shift capped at :data:`INT32_REQUANT_SHIFT`, so that the requantizer of
    an 8-bit output can run in int32 lanes.

    Why 22: the output before its clip lies in [lo - zp, hi - zp], within 255 in magnitude, so once
    the accumulator is clamped to the inputs that reach [lo, hi] (targets/lowering/requant_float.py),
    |acc * M| + 2^(S-1) <= ~256 * 2^S, which is below 2^31 exactly when S <= 22. On x86 the int32
    chain (multiply, add, arithmetic shift) takes half the instructions of the exact float64 form,
    MobileNetV2 int8-w7: 1.20x -> 1.02x of ONNX Runtime fp32.

    The cap keeps M = round(r 2^S) with S = 22 (relative error <= 2^-(bits(M)), M < 2^30); when
    that leaves M fewer than :data:`NARROW_MIN_BITS` bits (r < 2^-15; no benchmark model has such a
    factor) the full ``dyadic`` pair is returned (int64/float64 chain, exact too).
    The graph stays the same standard-ONNX int64 chain either way; only the constants differ.
    """
    multiplier, shift = dyadic(r)
    if shift <= INT32_REQUANT_SHIFT:
        return multiplier, shift
    capped = int(round(math.ldexp(float(r), INT32_REQUANT_SHIFT)))
    if capped < 1 << (NARROW_MIN_BITS - 1):
        return multiplier, shift
    return capped, INT32_REQUANT_SHIFT


def dyadic_array(r: np.ndarray, narrow: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``dyadic`` (``narrow_dyadic`` with ``narrow``) per element (per output channel); returns
    int64 arrays (M, S) of r's shape."""
    r = np.asarray(r, dtype=np.float64)
    pairs = [(narrow_dyadic if narrow else dyadic)(x) for x in r.reshape(-1)]
    m = np.array([p[0] for p in pairs], dtype=np.int64).reshape(r.shape)
    s = np.array([p[1] for p in pairs], dtype=np.int64).reshape(r.shape)
    return m, s


def shared_shift_multipliers(rs: list[float], narrow: bool = False) -> tuple[list[int], int]:
    """Multipliers for several branches that share one shift S (residual Add, Concat rescale).

    S is chosen by ``dyadic`` for the largest factor (its M is in [2^29, 2^30)); the others are
    M_i = round(r_i * 2^S) < 2^30, with absolute error <= 2^-(S+1) each. With ``narrow`` (8-bit
    branches), S is lowered to the largest shift whose rescale sum fits int32, when that is at
    least :data:`NARROW_MIN_BRANCH_SHIFT`. Raises DyadicError.
    """
    _, shift = dyadic(max(rs))
    if narrow:
        # 8-bit branches: |q_i - zp_i| <= 255, so sum_i 255 |M_i| + 2^(S-1) < 2^31 keeps the
        # rescale sum in int32 (targets/lowering/requant_float.py). Its absolute error per branch
        # is <= 255 * 2^-(S+1) output steps, <= 2^-8 for S >= NARROW_MIN_BRANCH_SHIFT.
        cap = int(math.floor(math.log2(((1 << 31) - 1) / (256.0 * sum(abs(r) for r in rs) + 0.5))))
        if NARROW_MIN_BRANCH_SHIFT <= cap < shift:
            shift = cap
    return [int(round(math.ldexp(r, shift))) for r in rs], shift


def requantize_reference(acc: np.ndarray, m: np.ndarray, s: np.ndarray, zero_point: int, lo: int, hi: int) -> np.ndarray:
    """Numpy meaning of the emitted requantizer: clip(floor((acc * M + 2^(S-1)) / 2^S) + zp, lo, hi).

    Python-int exact (object arrays would be slow; int64 is exact because |acc * M| < 2^61 and
    the arithmetic shift of a negative int64 is a floor division by 2^S).
    """
    acc = np.asarray(acc, dtype=np.int64)
    m = np.asarray(m, dtype=np.int64)
    s = np.asarray(s, dtype=np.int64)
    rounded = (acc * m + (np.int64(1) << (s - 1))) >> s
    return np.clip(rounded + zero_point, lo, hi)


def dyadic_bounded(r: float, bound: int) -> tuple[int, int]:
    """Signed dyadic r ~ M / 2^S for a wide (int64) accumulator with |acc| <= ``bound``.

    Like ``dyadic`` but M has b = min(30, 61 - bitlength(bound)) bits (|M| in [2^(b-1), 2^b)), so
    |acc * M| < 2^61 still holds and the requantizer's 2^62 offset stays exact; the relative error
    is <= 2^-b. A negative r gives a negative M (the requantizer's tail is sign-agnostic: it only
    needs |acc * M| < 2^61). Used by the integer GELU, whose int64 product exceeds int32.

    Raises:
        DyadicError: r is zero or not finite, b < 16 (the accumulator is too wide for a useful
            multiplier), or S falls outside [1, 62].
    """
    r = float(r)
    if not math.isfinite(r) or r == 0:
        raise DyadicError(f"rescale factor {r!r} must be finite and non-zero")
    bits = min(30, 61 - int(bound).bit_length())
    if bits < 16:
        raise DyadicError(f"accumulator bound {bound} leaves only {bits} multiplier bits")
    f, e = math.frexp(abs(r))
    shift = bits - e
    multiplier = int(round(math.ldexp(f, bits)))
    if multiplier == 1 << bits:
        multiplier, shift = 1 << (bits - 1), shift - 1
    if not S_MIN <= shift <= S_MAX:
        raise DyadicError(f"rescale factor {r:.6g} needs shift {shift}, outside [{S_MIN}, {S_MAX}]")
    return (multiplier if r > 0 else -multiplier), shift


__all__ += ["dyadic_bounded", "shared_shift_multipliers", "requantize_reference", "M_LOW", "M_HIGH", "S_MIN", "S_MAX",
            "narrow_dyadic", "INT32_REQUANT_SHIFT", "NARROW_MIN_BITS", "NARROW_MIN_BRANCH_SHIFT"]
