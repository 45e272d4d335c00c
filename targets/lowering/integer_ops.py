"""Relax converters for the integer-only ONNX ops that TVM 0.27's ONNX importer lacks.

    from targets.lowering.integer_ops import install_converters
    install_converters()          # idempotent; then targets.lowering.lower_model / from_onnx

The integer-only form (passes/quantize docstring) uses QuantizeLinear, DequantizeLinear,
ConvInteger, MatMulInteger, Add/Sub/Mul on int32/int64, Cast (int32/int64/uint64/uint8),
BitShift on uint64, Clip on int64, MaxPool on uint8, ReduceSum on int32 and shape ops. Of these
the importer has no converter for **ConvInteger** only; this module adds it. The importer's own
converters for the others were checked bit-exact against ONNX Runtime and compiler/reference.py
for the dtypes of the spec (tests/targets/test_integer_lowering.py): uint64 BitShift RIGHT with a
per-channel shift tensor (logical shift, shifts up to 63), int64 Mul/Add with constants up to 2^62
(the frontend keeps int64 initializers int64, so trap B4 does not apply to it), Cast
int64 <-> uint64 and int64 -> uint8 (wrap-around), Clip on int64 with int64 bounds, MatMulInteger
for all four int8/uint8 combinations with scalar and per-column zero points, QuantizeLinear
(round half to even, saturation) and DequantizeLinear, uint8 MaxPool with padding, int32 ReduceSum.

Installation wraps ``onnx_frontend._get_convert_map``: ``from_onnx`` (and our importer's support
check) call that module function for every model, so the wrapped table is seen by both
(shared/research/tvm-0.27.md §4). Our entries take precedence over the frontend's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend

from targets.lowering.int4 import UNPACK_OP, UnpackInt4, known_codes

__all__ = ["SUPPORTED_EXTRA_OPS", "ConvInteger", "install_converters", "installed"]

_INT8_TYPES = ("int8", "uint8")

# Input channels per vpdpbusd lane and int32 lanes per vpdpbusd (schedules/common.VNNI_DEPTH,
# VNNI_LANES).
VNNI_DEPTH = 4
VNNI_LANES = 16


def _dtype(expr: relax.Expr) -> str:
    return str(expr.ty.dtype)


def _shape(expr: relax.Expr) -> list[int]:
    return [int(d) for d in expr.ty.shape]


def _constant(expr: relax.Expr | None) -> np.ndarray | None:
    """The value of a Relax constant (initializers import as constants), else None."""
    if isinstance(expr, tvm.ir.expr.Constant):
        return expr.data.numpy() if hasattr(expr, "data") else expr.value.numpy()
    return None


def centered_int8_weight(w: relax.Expr, w_zp: relax.Expr | None, channel_axis: int) -> tuple[relax.Expr, relax.Expr | None]:
    """Fold a constant weight zero point into the constant weight: ``w - w_zp`` as int8.

    Exact whenever every centered value fits int8, e.g. the integer-only form's offset-binary
    uint8 weights (``w_q + 128``, zero point 128) become the symmetric int8 codes ``w_q`` again,
    which is what the int8 dot-product (VNNI) schedules take. ``w_zp`` may be a scalar or one per
    output channel (along ``channel_axis`` of ``w``). Returns ``(w, w_zp)`` unchanged when either
    is not a constant or the centered values do not fit.
    """
    w_value = _constant(w)
    zp_value = _constant(w_zp) if w_zp is not None else None
    if w_value is None or zp_value is None or not np.any(zp_value):
        return w, w_zp
    zp = np.asarray(zp_value, dtype=np.int16).reshape(-1)
    if zp.size > 1:
        shape = [1] * w_value.ndim
        shape[channel_axis] = -1
        zp = zp.reshape(shape)
    centered = w_value.astype(np.int16) - zp
    if centered.min() < -128 or centered.max() > 127:
        return w, w_zp
    return relax.const(centered.astype(np.int8), "int8"), None


def _attr_str(attr: dict[str, Any], name: str, default: str) -> str:
    value = attr.get(name, default)
    return value.decode() if isinstance(value, bytes) else str(value)


def conv_pads(attr: dict[str, Any], in_shape: list[int], kernel: list[int], strides: list[int],
              dilations: list[int]) -> list[int]:
    """ONNX pads ``[top, left, bottom, right]`` for ``pads``/``auto_pad`` (static shapes).

    SAME_UPPER/SAME_LOWER: output = ceil(in / stride), total pad split evenly with the odd pixel
    at the end (UPPER) or the beginning (LOWER), as ONNX defines.
    """
    auto_pad = _attr_str(attr, "auto_pad", "NOTSET")
    nd = len(kernel)
    if auto_pad == "NOTSET":
        pads = [int(p) for p in attr.get("pads", [0] * 2 * nd)]
        if len(pads) != 2 * nd:
            raise ValueError(f"pads {pads} must have {2 * nd} values")
        return pads
    if auto_pad == "VALID":
        return [0] * 2 * nd
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise ValueError(f"invalid auto_pad '{auto_pad}'")
    begin, end = [], []
    for size, k, s, d in zip(in_shape, kernel, strides, dilations):
        total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else large)
        end.append(large if auto_pad == "SAME_UPPER" else small)
    return begin + end


def channel_pad(channels: int, groups: int, weight: np.ndarray | None) -> int:
    """Input channels to append so a groups == 1 conv with a constant weight has C % 4 == 0
    (the VNNI dot-product depth); 0 when not applicable."""
    if groups != 1 or weight is None or channels % VNNI_DEPTH == 0:
        return 0
    return -channels % VNNI_DEPTH


class ConvInteger(onnx_frontend.OnnxOpConverter):
    """ONNX ConvInteger (opset 10), 2-D NCHW: int32 y = conv(x - x_zero_point, w - w_zero_point).

    x and w are int8 or uint8; x_zero_point is a scalar; w_zero_point a scalar or one per output
    channel. ONNX pads with the zero point (pads contribute 0 after the shift); groups, strides,
    dilations and auto_pad as Conv.

    Two lowerings, both exact in int32 (|acc| <= K * 255 * 255 < 2^31 for K < 33000):

    * the integer-only form (weights symmetric, so w_zero_point is absent or a constant that
      ``centered_int8_weight`` folds into the weight, and x_zero_point a constant): the conv stays ``conv2d(x_u8/i8, w_i8, out_dtype="int32")`` so an
      int8 dot-product schedule (VNNI) can take it, with the zero point moved out:
          conv(x - zx, w) = conv(pad(x, value=zx), w) - zx * sum_{c,kh,kw} w[m]
      (the input is padded with zx explicitly, so the border sees x - zx = 0 like ONNX; the
      correction is a per-channel constant when w is constant).
      With a constant weight and groups == 1, C is padded to a multiple of 4 in the same pad op
      (x with zx, w with zero channels: exact) so the VNNI rule also takes an RGB stem conv
      (on other targets this costs the stem 4/3 of its multiply-adds).
    * anything else (a weight zero point, a non-constant x zero point): both operands are widened
      to int32 and shifted before an int32 conv2d.
    """

    @classmethod
    def _impl_v10(cls, bb: relax.BlockBuilder, inputs, attr: dict[str, Any], params):
        x, w = inputs[0], inputs[1]
        x_zp = inputs[2] if len(inputs) > 2 else None
        w_zp = inputs[3] if len(inputs) > 3 else None
        w, w_zp = centered_int8_weight(w, w_zp, channel_axis=0)
        for name, value in (("x", x), ("w", w)):
            if _dtype(value) not in _INT8_TYPES:
                raise ValueError(f"ConvInteger: {name} must be int8 or uint8, got {_dtype(value)}")
        if len(_shape(x)) != 4:
            raise NotImplementedError(f"ConvInteger: only 2-D (NCHW) convolutions are supported, input is {_shape(x)}")

        w_shape = _shape(w)
        kernel = [int(k) for k in attr.get("kernel_shape", w_shape[2:])]
        strides = [int(s) for s in attr.get("strides", [1, 1])]
        dilations = [int(d) for d in attr.get("dilations", [1, 1])]
        groups = int(attr.get("group", 1))
        pads = conv_pads(attr, _shape(x)[2:], kernel, strides, dilations)
        conv = dict(strides=strides, dilation=dilations, groups=groups, out_dtype="int32")

        x_zp_value = _constant(x_zp) if x_zp is not None else np.zeros(())
        w_zp_value = _constant(w_zp) if w_zp is not None else np.zeros(())
        if x_zp_value is not None and w_zp_value is not None and not np.any(w_zp_value):
            zx = int(np.asarray(x_zp_value).reshape(-1)[0])
            # Input channels padded to a multiple of 4 (x with its zero point, w with 0: the extra
            # channels contribute (zx - zx) * 0 = 0, exact), so the VNNI rule, which takes 4 input
            # channels per vpdpbusd, claims e.g. the RGB stem conv (schedules/conv2d_int8.py).
            w_const = _constant(w)
            c_pad = channel_pad(_shape(x)[1], groups, w_const)
            if c_pad:
                w = relax.const(np.pad(w_const, [(0, 0), (0, c_pad), (0, 0), (0, 0)]), _dtype(w))
            if zx == 0 and not c_pad:
                return relax.op.nn.conv2d(x, w, padding=pads, **conv)
            # explicit pad with the zero point: relax pad_width is (before, after) per axis
            padded = relax.op.nn.pad(x, [0, 0, 0, c_pad, pads[0], pads[2], pads[1], pads[3]], pad_value=float(zx))
            acc = bb.normalize(relax.op.nn.conv2d(padded, w, padding=[0, 0, 0, 0], **conv))
            w_value = _constant(w)
            if w_value is None:
                w_value = known_codes(bb, w)  # packed int4: the codes are compile-time constants
            if w_value is not None:
                # int64 sum, then int32: |zx * sum w| <= 128 * 127 * K fits int32 for K < 132000
                corr = relax.const((zx * w_value.astype(np.int64).sum(axis=(1, 2, 3))).astype(np.int32)
                                   .reshape(1, -1, 1, 1), "int32")
            else:
                total = relax.op.sum(relax.op.astype(w, "int32"), axis=[1, 2, 3], keepdims=True)
                corr = relax.op.reshape(relax.op.multiply(total, relax.const(zx, "int32")), [1, -1, 1, 1])
            return relax.op.subtract(acc, corr)

        x32 = relax.op.astype(x, "int32")
        if x_zp is not None:
            x32 = relax.op.subtract(x32, relax.op.reshape(relax.op.astype(x_zp, "int32"), []))
        w32 = relax.op.astype(w, "int32")
        if w_zp is not None:
            w_zp32 = bb.normalize(relax.op.astype(w_zp, "int32"))
            n = int(np.prod(_shape(w_zp32)))
            # per output channel: [M] -> [M, 1, 1, 1]; a scalar or [1] broadcasts as is
            w32 = relax.op.subtract(w32, relax.op.reshape(w_zp32, [-1, 1, 1, 1] if n > 1 else []))
        return relax.op.nn.conv2d(x32, w32, padding=pads, **conv)


class MatMulInteger(onnx_frontend.OnnxOpConverter):
    """ONNX MatMulInteger with the integer-only form's operands kept 8-bit.

    TVM's own converter widens both operands to int32 before ``matmul``, which no int8
    dot-product schedule can take. For the integer-only form (B a constant int8 weight without a
    zero point, A's zero point a constant scalar) we keep ``matmul(a_u8, b_i8, out_dtype="int32")``
    and move the zero point out, exactly in int32:

        (A - za) @ B = A @ B - za * sum_k B[k, n]

    N not a multiple of 16 (a classifier's 1000 classes): B gets zero columns up to the next
    multiple of 16 (the VNNI matmul rule needs whole 16-column vectors) and the result is sliced
    back to N after the correction; exact, and FuseOps keeps the slice in the matmul's epilogue.

    Every other case (activation x activation, per-row/per-column zero points) goes to TVM's
    converter unchanged (it is exact, only not VNNI-friendly).
    """

    @classmethod
    def _impl_v10(cls, bb: relax.BlockBuilder, inputs, attr: dict[str, Any], params):
        a, b = inputs[0], inputs[1]
        a_zp = inputs[2] if len(inputs) > 2 else None
        b_zp = inputs[3] if len(inputs) > 3 else None
        centered, centered_zp = centered_int8_weight(b, b_zp, channel_axis=-1)
        if centered is not b:  # the zero point was folded into the weight (now the last input)
            b, b_zp = centered, centered_zp
            inputs = [a, b, *inputs[2:3]]
        b_const = _constant(b)
        # packed int4 (targets/lowering/int4.py): B is unpacked per call, its codes are known
        b_value = b_const if b_const is not None else known_codes(bb, b)
        a_zp_value = _constant(a_zp) if a_zp is not None else np.zeros(())
        b_zp_value = _constant(b_zp) if b_zp is not None else np.zeros(())
        fast = (
            b_value is not None
            and b_value.ndim == 2
            and _dtype(b) == "int8"
            and _dtype(a) in _INT8_TYPES
            and a_zp_value is not None
            and np.asarray(a_zp_value).size == 1
            and b_zp_value is not None
            and not np.any(b_zp_value)
        )
        if not fast:
            return onnx_frontend.MatMulInteger._impl_v10(bb, inputs, attr, params)
        za = int(np.asarray(a_zp_value).reshape(-1)[0])
        n = b_value.shape[1]
        n_pad = -n % VNNI_LANES if b_const is not None else 0
        if n_pad:
            # N padded with zero columns to a multiple of 16 (the VNNI matmul rule needs whole
            # 16-column vectors; a classifier's N = 1000 otherwise gets the generic rule), the
            # extra columns sliced off after the zero-point correction: exact.
            b_value = np.pad(b_value, [(0, 0), (0, n_pad)])
        acc = relax.op.matmul(a, relax.const(b_value, "int8") if b_const is not None else b, out_dtype="int32")
        if za != 0:
            # |za * sum_k B| <= 255 * 127 * K: int32 for K < 66000
            corr = relax.const((za * b_value.astype(np.int64).sum(axis=0)).astype(np.int32), "int32")
            acc = relax.op.subtract(bb.normalize(acc), corr)
        if n_pad:
            acc = relax.op.strided_slice(bb.normalize(acc), axes=[len(_shape(a)) - 1], begin=[0], end=[n])
        return acc


_EXTRA_CONVERTERS: dict[str, type[onnx_frontend.OnnxOpConverter]] = {
    "ConvInteger": ConvInteger,
    "MatMulInteger": MatMulInteger,
    UNPACK_OP: UnpackInt4,  # internal: packed int4 weights (int4.rewrite_packed_weights)
}

# ONNX op types this module makes importable (for support checks and reports).
SUPPORTED_EXTRA_OPS: frozenset[str] = frozenset(_EXTRA_CONVERTERS) - {UNPACK_OP}  # UNPACK_OP is internal

_MARK = "_edgekiln_integer_ops"


def installed() -> bool:
    """Whether the frontend's converter table currently includes our converters."""
    return bool(getattr(onnx_frontend._get_convert_map, _MARK, False))


def install_converters() -> None:
    """Add our converters to TVM's ONNX frontend (process-wide, idempotent).

    Wraps ``onnx_frontend._get_convert_map`` once; calling again is a no-op, so the wrapper never
    nests. The original table is read on every call, so later changes to it are still seen.
    """
    if installed():
        return
    original = onnx_frontend._get_convert_map

    def _get_convert_map() -> dict[str, Any]:
        table = dict(original())
        table.update(_EXTRA_CONVERTERS)
        return table

    setattr(_get_convert_map, _MARK, True)
    _get_convert_map.__wrapped__ = original  # type: ignore[attr-defined]
    onnx_frontend._get_convert_map = _get_convert_map
