"""A numpy reference interpreter for the integer-only form (passes/quantize docstring).

    outputs = run_reference(model, {"x": x})      # list of arrays, graph order

It runs the ops the quantize pass emits with the exact ONNX (opset <= 21) semantics, so the
integer-only graph can be checked bit for bit against ONNX Runtime and the TVM artifact. It is
pure numpy: no ONNX Runtime or TVM inside, one small function per op in ``_OPS``.

Integer semantics, shared by all ops (ONNX leaves overflow to two's complement wrap-around):
    * integer Add/Sub/Mul/Neg wrap modulo 2^bits of their (common) dtype, like C++ unsigned
      arithmetic and like ORT on x86; numpy ufuncs on same-dtype arrays do exactly that.
    * ConvInteger/MatMulInteger accumulate in int64 and then wrap to int32, which equals
      wrapping int32 accumulation because both are arithmetic modulo 2^32 (unreachable with
      int8 operands and realistic K anyway). When every partial sum is an integer below 2^53
      (``K * max|x| * max|w| < 2^53``, any K below 10^11 for 8-bit operands) they accumulate in
      float64 instead: every such integer is a float64, so no step rounds in any summation
      order, and numpy's BLAS does the work (ResNet-18 at batch 8: 27 s -> about 1 s).
    * an integer ReduceSum whose sum leaves the dtype's range is an error: ONNX leaves it
      undefined and ONNX Runtime saturates where TVM wraps (int64 sums are not checked).
    * binary ops require equal dtypes (the ONNX type constraint ``T``); numpy would silently
      promote, which would hide a wrong graph, so a mismatch is an error naming the node.

Float ops ("float islands": Softmax, LayerNormalization, Gelu, Erf, Sigmoid, Tanh, Div, Sqrt, Pow,
ReduceMean, MatMul, Gemm, Conv, GlobalAveragePool) follow the ONNX formulas in the input dtype but
may differ from ONNX Runtime in the last bits (different summation order, exp/erf implementations,
no fused multiply-add). Only graphs without float islands between the input QuantizeLinear and the
output DequantizeLinear are bit-exact; QuantizeLinear/DequantizeLinear themselves are exact.

Not supported (error naming the node): subgraph ops (If/Loop/Scan), model-local functions, non-default
domains, and any op not in ``SUPPORTED_OPS``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
from numpy.lib.stride_tricks import sliding_window_view

from compiler.errors import UnsupportedModelError

__all__ = ["ReferenceInterpreterError", "SUPPORTED_OPS", "run_reference"]


class ReferenceInterpreterError(UnsupportedModelError):
    """The reference interpreter cannot run a node (unknown op, bad types, missing input); the
    message names the node."""


class _Node:
    """What an op function sees: attributes with defaults, the opset, and a label for errors."""

    def __init__(self, proto: onnx.NodeProto, opset: int):
        self.op_type = proto.op_type
        self.name = proto.name or (f"output {proto.output[0]}" if proto.output else "unnamed")
        self.opset = opset
        self.n_outputs = len(proto.output)
        self.attrs = {a.name: onnx.helper.get_attribute_value(a) for a in proto.attribute}

    def attr(self, name: str, default: Any = None) -> Any:
        value = self.attrs.get(name, default)
        return value.decode() if isinstance(value, bytes) else value

    def error(self, message: str) -> ReferenceInterpreterError:
        return ReferenceInterpreterError(f"{self.op_type} node '{self.name}': {message}")


Array = np.ndarray
OpFn = Callable[[_Node, list], "Array | tuple[Array, ...]"]


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _same_dtype(node: _Node, *arrays: Array) -> None:
    dtypes = {a.dtype for a in arrays}
    if len(dtypes) > 1:
        raise node.error(f"inputs must share one dtype (ONNX type constraint T), got {sorted(map(str, dtypes))}")


def _require_int(node: _Node, array: Array, what: str, kinds: str = "iu") -> None:
    if array.dtype.kind not in kinds:
        raise node.error(f"{what} must be {'an unsigned' if kinds == 'u' else 'an'} integer tensor, got {array.dtype}")


def _axes(node: _Node, inputs: list, index: int) -> list[int] | None:
    """Axes from the ``axes`` attribute (older opsets) or the optional input ``index`` (newer)."""
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    if len(inputs) > index and inputs[index] is not None:
        return [int(a) for a in np.asarray(inputs[index]).reshape(-1)]
    return None


#: Integers of magnitude below this are exact in float64 (53-bit significand).
_FLOAT64_EXACT_BOUND = 1 << 53


def _exact_accumulator(depth: int, x: Array, w: Array) -> type:
    """float64 if a dot product of ``depth`` terms of ``x`` and ``w`` values keeps every partial
    sum an integer below 2^53 (then float64 computes it exactly, in any order); else int64."""
    bound = depth * int(np.abs(x).max(initial=0)) * int(np.abs(w).max(initial=0))
    return np.float64 if bound < _FLOAT64_EXACT_BOUND else np.int64


def _wrap_to(values: Array, dtype: np.dtype) -> Array:
    """int64 accumulator -> ``dtype`` keeping the low bits (two's complement), like int32 wrap."""
    return values.astype(np.int64).astype(dtype)


def _spatial_pads(node: _Node, in_shape: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                  dilations: Sequence[int]) -> list[int]:
    """Explicit pads [b1.., e1..] for the node's ``pads``/``auto_pad`` (ONNX Conv/Pool rules)."""
    nd = len(kernel)
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad == "NOTSET":
        pads = list(node.attr("pads", [0] * 2 * nd))
        if len(pads) != 2 * nd:
            raise node.error(f"pads {pads} must have {2 * nd} values")
        return pads
    if auto_pad == "VALID":
        return [0] * 2 * nd
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise node.error(f"unknown auto_pad '{auto_pad}'")
    begin, end = [], []
    for size, k, s, d in zip(in_shape, kernel, strides, dilations):
        out = -(-size // s)  # ceil(size / stride)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        # SAME_UPPER puts the odd extra pad at the end, SAME_LOWER at the beginning.
        begin.append(small if auto_pad == "SAME_UPPER" else large)
        end.append(large if auto_pad == "SAME_UPPER" else small)
    return begin + end


def _windows(x: Array, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int],
             pads: Sequence[int], pad_value: Any) -> Array:
    """Sliding windows of ``x`` [N, C, *S] -> [N, C, *out, *kernel] (a view after padding).

    out_i = floor((S_i + pad_b + pad_e - ((k_i - 1) * d_i + 1)) / s_i) + 1, the ONNX formula.
    """
    nd = len(kernel)
    width = [(0, 0), (0, 0)] + [(pads[i], pads[i + nd]) for i in range(nd)]
    xp = np.pad(x, width, constant_values=pad_value)
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    if any(xp.shape[2 + i] < extent[i] for i in range(nd)):
        raise ValueError(f"kernel extent {extent} larger than padded input {list(xp.shape[2:])}")
    win = sliding_window_view(xp, extent, axis=tuple(range(2, 2 + nd)))
    select = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)
    select += tuple(slice(None, None, d) for d in dilations)
    return win[select]


def _conv_core(node: _Node, x: Array, w: Array, acc_dtype: type) -> Array:
    """N-d grouped convolution of already zero-point-shifted ``x`` and ``w`` (im2col + tensordot).

    Padding is with 0 *after* the zero-point shift: for ConvInteger that equals padding the raw
    input with its zero point, which is what ONNX Runtime does (im2col padding value = x_zp).
    """
    nd = x.ndim - 2
    kernel = list(node.attr("kernel_shape", w.shape[2:]))
    strides = list(node.attr("strides", [1] * nd))
    dilations = list(node.attr("dilations", [1] * nd))
    groups = int(node.attr("group", 1))
    pads = _spatial_pads(node, x.shape[2:], kernel, strides, dilations)
    n, c = x.shape[:2]
    m = w.shape[0]
    if c % groups or m % groups or w.shape[1] != c // groups:
        raise node.error(f"input channels {c}, weight {list(w.shape)} and group {groups} do not agree")
    win = _windows(x.astype(acc_dtype), kernel, strides, dilations, pads, 0)  # [N, C, *out, *k]
    out_spatial = win.shape[2:2 + nd]
    cg, mg = c // groups, m // groups
    outputs = []
    for g in range(groups):
        xg = win[:, g * cg:(g + 1) * cg]  # [N, cg, *out, *k]
        wg = w[g * mg:(g + 1) * mg].astype(acc_dtype)  # [mg, cg, *k]
        # contract channel + kernel axes: -> [N, *out, mg]
        y = np.tensordot(xg, wg, axes=([1] + list(range(2 + nd, 2 + 2 * nd)), [1] + list(range(2, 2 + nd))))
        outputs.append(np.moveaxis(y, -1, 1))
    y = np.concatenate(outputs, axis=1)
    assert y.shape == (n, m, *out_spatial)
    return y


def _per_axis(param: Array, ndim: int, axis: int) -> Array:
    """A scalar or 1-D per-axis quantization parameter shaped to broadcast along ``axis``."""
    param = np.asarray(param)
    if param.ndim == 0 or param.size == 1 and param.ndim == 1:
        return param.reshape(())
    if param.ndim != 1:
        raise ValueError("blocked quantization (a parameter of rank > 1) is not supported")
    shape = [1] * ndim
    shape[axis] = param.size
    return param.reshape(shape)


_QRANGE = {np.dtype(t): (np.iinfo(t).min, np.iinfo(t).max) for t in (np.uint8, np.int8, np.uint16, np.int16, np.int32)}


# ---------------------------------------------------------------------------------------------
# Quantization and integer ops
# ---------------------------------------------------------------------------------------------


def _quantize_linear(node: _Node, inputs: list) -> Array:
    """QuantizeLinear: y = saturate(round_half_even(x / y_scale) + y_zero_point).

    The division is done in x's float dtype (ONNX Runtime divides in float32), rounding is
    half-to-even (``np.rint``), the zero point is added after rounding, then the result saturates
    to the output dtype (that of y_zero_point, or ``output_dtype``, default uint8). Per-axis
    (``axis``, default 1) when the scale is 1-D. ONNX leaves NaN undefined; here it becomes 0.
    """
    x, scale = inputs[0], inputs[1]
    zp = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
    axis = int(node.attr("axis", 1)) % max(x.ndim, 1)
    out_dtype = np.dtype(zp.dtype) if zp is not None else np.dtype(
        onnx.helper.tensor_dtype_to_np_dtype(node.attr("output_dtype", 0) or onnx.TensorProto.UINT8))
    if out_dtype not in _QRANGE:
        raise node.error(f"output dtype {out_dtype} not supported")
    lo, hi = _QRANGE[out_dtype]
    q = np.rint(x / _per_axis(scale, x.ndim, axis).astype(x.dtype))
    if zp is not None:
        q = q + _per_axis(zp, x.ndim, axis).astype(x.dtype)
    q = np.where(np.isnan(q), 0, np.clip(q, lo, hi))
    return q.astype(out_dtype)


def _dequantize_linear(node: _Node, inputs: list) -> Array:
    """DequantizeLinear: y = float(x - x_zero_point) * x_scale, in the scale's dtype (float32).

    The difference is exact in int64; ORT computes it in int32 (equal for all valid inputs).
    """
    x, scale = inputs[0], inputs[1]
    zp = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
    axis = int(node.attr("axis", 1)) % max(x.ndim, 1)
    diff = x.astype(np.int64)
    if zp is not None:
        diff = diff - _per_axis(zp, x.ndim, axis).astype(np.int64)
    return (diff.astype(scale.dtype) * _per_axis(scale, x.ndim, axis)).astype(scale.dtype)


def _conv_integer(node: _Node, inputs: list) -> Array:
    """ConvInteger: int32 y = conv(x - x_zero_point, w - w_zero_point) (x, w int8/uint8).

    x_zero_point is a scalar; w_zero_point a scalar or one per output channel. Groups, pads
    (padding with x_zero_point, i.e. 0 after the shift), strides, dilations and auto_pad as Conv.
    """
    x, w = inputs[0], inputs[1]
    for name, t in (("x", x), ("w", w)):
        if t.dtype not in (np.uint8, np.int8):
            raise node.error(f"{name} must be int8 or uint8, got {t.dtype}")
    xs = x.astype(np.int64)
    ws = w.astype(np.int64)
    if len(inputs) > 2 and inputs[2] is not None:
        if inputs[2].size != 1:
            raise node.error("x_zero_point must be a scalar")
        xs = xs - inputs[2].astype(np.int64).reshape(())
    if len(inputs) > 3 and inputs[3] is not None:
        wzp = inputs[3].astype(np.int64)
        ws = ws - (wzp.reshape(()) if wzp.size == 1 else wzp.reshape([-1] + [1] * (w.ndim - 1)))
    depth = int(np.prod(w.shape[1:]))  # input channels per group x kernel taps
    return _wrap_to(_conv_core(node, xs, ws, _exact_accumulator(depth, xs, ws)), np.int32)


def _matmul_integer(node: _Node, inputs: list) -> Array:
    """MatMulInteger: int32 y = (A - a_zero_point) @ (B - b_zero_point), numpy matmul broadcasting.

    a_zero_point: scalar or per row of A ([M], broadcast as [M, 1]); b_zero_point: scalar or per
    column of B ([N]). Accumulated exactly (int64, or float64 below 2^53), wrapped to int32.
    """
    a, b = inputs[0].astype(np.int64), inputs[1].astype(np.int64)
    for name, t in (("A", inputs[0]), ("B", inputs[1])):
        if t.dtype not in (np.uint8, np.int8):
            raise node.error(f"{name} must be int8 or uint8, got {t.dtype}")
    if len(inputs) > 2 and inputs[2] is not None:
        azp = inputs[2].astype(np.int64)
        a = a - (azp.reshape(-1, 1) if azp.ndim == 1 and azp.size > 1 else azp)
    if len(inputs) > 3 and inputs[3] is not None:
        b = b - inputs[3].astype(np.int64)
    acc = _exact_accumulator(a.shape[-1], a, b)
    return _wrap_to(np.matmul(a.astype(acc), b.astype(acc)), np.int32)


def _binary(fn: Callable[[Array, Array], Array]) -> OpFn:
    def op(node: _Node, inputs: list) -> Array:
        a, b = inputs
        _same_dtype(node, a, b)
        with np.errstate(over="ignore"):  # integer wrap-around is the ONNX semantics
            return np.asarray(fn(a, b), dtype=a.dtype)

    op.__doc__ = f"Elementwise {fn.__name__} with numpy broadcasting; same-dtype inputs; integers wrap."
    return op


def _div(node: _Node, inputs: list) -> Array:
    """Div: floats divide (IEEE); integers truncate toward zero (C++ ``/``, what ORT does)."""
    a, b = inputs
    _same_dtype(node, a, b)
    if a.dtype.kind not in "iu":
        return np.asarray(a / b, dtype=a.dtype)
    if np.any(b == 0):
        raise node.error("integer division by zero")
    q = a // b  # floors; fix up the negative non-exact quotients
    q = q + ((a % b != 0) & ((a < 0) != (b < 0))).astype(a.dtype)
    return np.asarray(q, dtype=a.dtype)


def _cast(node: _Node, inputs: list) -> Array:
    """Cast to ``to``. Integer -> integer keeps the low bits and reinterprets (two's complement
    wrap-around, as ONNX specifies: int64 -> uint64 is a bit reinterpretation, int64 -> uint8 is
    ``x mod 256``); float -> integer truncates toward zero (ONNX leaves out-of-range undefined);
    any -> float rounds to nearest; -> bool is ``x != 0``. ``saturate`` only concerns float8."""
    x = inputs[0]
    to = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(node.attr("to")))
    if to == np.bool_:
        return x != 0
    if x.dtype.kind in "iub" and to.kind in "iu":
        # numpy's integer astype is exactly this modular reinterpretation
        return x.astype(to)
    with np.errstate(invalid="ignore", over="ignore"):
        return x.astype(to)


def _bit_shift(node: _Node, inputs: list) -> Array:
    """BitShift on unsigned integers (the only types ONNX allows), broadcasting the shift amount.

    RIGHT is a logical shift. A shift >= the bit width is undefined in ONNX/C++; numpy (and this
    reference) give 0.
    """
    x, s = inputs
    _require_int(node, x, "X", "u")
    _same_dtype(node, x, s)
    direction = node.attr("direction")
    if direction == "RIGHT":
        return np.asarray(np.right_shift(x, s), dtype=x.dtype)
    if direction == "LEFT":
        return np.asarray(np.left_shift(x, s), dtype=x.dtype)
    raise node.error(f"direction must be LEFT or RIGHT, got {direction!r}")


def _clip(node: _Node, inputs: list) -> Array:
    """Clip: y = min(max(x, lo), hi) with optional scalar inputs (attributes before opset 11).

    If lo > hi every element becomes hi (the ONNX rule), which min(max(.)) gives.
    """
    x = inputs[0]
    if node.opset < 11:
        lo, hi = node.attr("min"), node.attr("max")
    else:
        lo = inputs[1] if len(inputs) > 1 else None
        hi = inputs[2] if len(inputs) > 2 else None
        for bound in (lo, hi):
            if bound is not None:
                _same_dtype(node, x, bound)
    y = x
    if lo is not None:
        y = np.maximum(y, np.asarray(lo, dtype=x.dtype))
    if hi is not None:
        y = np.minimum(y, np.asarray(hi, dtype=x.dtype))
    return np.asarray(y, dtype=x.dtype)


def _relu(node: _Node, inputs: list) -> Array:
    """Relu: max(x, 0) in x's dtype (integers allowed since opset 14)."""
    x = inputs[0]
    return np.maximum(x, np.zeros((), x.dtype))


def _max_pool(node: _Node, inputs: list) -> Array:
    """MaxPool on any numeric dtype (uint8 in the integer-only form): pads never win (they are
    the dtype's minimum / -inf), strides, dilations, auto_pad, ceil_mode.

    ceil_mode: out = ceil((S + pads - extent) / s) + 1, minus one if the last window would start
    in the end padding (the ONNX/ORT/PyTorch rule); the extra end rows are padding too. The
    optional Indices output is not supported.
    """
    x = inputs[0]
    if node.n_outputs > 1:
        raise node.error("the Indices output is not supported")
    nd = x.ndim - 2
    kernel = list(node.attr("kernel_shape"))
    strides = list(node.attr("strides", [1] * nd))
    dilations = list(node.attr("dilations", [1] * nd))
    pads = _spatial_pads(node, x.shape[2:], kernel, strides, dilations)
    if node.attr("ceil_mode", 0):
        for i in range(nd):
            size = x.shape[2 + i] + pads[i] + pads[i + nd]
            extent = (kernel[i] - 1) * dilations[i] + 1
            out = -(-(size - extent) // strides[i]) + 1
            if (out - 1) * strides[i] >= x.shape[2 + i] + pads[i]:
                out -= 1
            pads[i + nd] += max(0, (out - 1) * strides[i] + extent - size)
    low = np.iinfo(x.dtype).min if x.dtype.kind in "iu" else -np.inf
    win = _windows(x, kernel, strides, dilations, pads, low)
    return win.max(axis=tuple(range(2 + nd, 2 + 2 * nd)))


def _reduce(fn: Callable[..., Array], name: str, axes_input_opset: int) -> OpFn:
    def op(node: _Node, inputs: list) -> Array:
        x = inputs[0]
        axes = _axes(node, inputs, 1) if node.opset >= axes_input_opset or "axes" in node.attrs else None
        keepdims = bool(node.attr("keepdims", 1))
        if not axes:
            if node.attr("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.ndim))
        return fn(x, tuple(a % x.ndim for a in axes), keepdims)

    op.__doc__ = (f"{name}: axes from the input (opset >= {axes_input_opset}) or attribute, keepdims "
                  "(default 1), noop_with_empty_axes; no axes reduces all. Integer sums are exact "
                  "(int64) and an overflow of a narrower dtype is an error.")
    return op


def _sum(x: Array, axes: tuple[int, ...], keepdims: bool) -> Array:
    # floats: numpy's pairwise summation (may differ from ORT by rounding)
    if x.dtype.kind not in "iu":
        return np.asarray(x.sum(axis=axes, keepdims=keepdims), dtype=x.dtype)
    total = x.astype(np.int64).sum(axis=axes, keepdims=keepdims)
    info = np.iinfo(x.dtype)
    if x.dtype.itemsize < 8 and (total.min(initial=0) < info.min or total.max(initial=0) > info.max):
        # ONNX leaves integer overflow of a reduction undefined, and the runtimes disagree
        # (measured: ORT 1.31 accumulates wider and saturates; TVM wraps), so no exact answer exists
        raise ValueError(f"the {x.dtype} sum overflows (range [{total.min()}, {total.max()}]); ONNX leaves "
                         "this undefined and ONNX Runtime (saturates) and TVM (wraps) disagree")
    return total.astype(x.dtype)


def _mean(x: Array, axes: tuple[int, ...], keepdims: bool) -> Array:
    if x.dtype.kind in "iu":
        # integer mean = exact sum / count truncated toward zero (C++ division, as ORT does)
        total = x.astype(np.int64).sum(axis=axes, keepdims=keepdims)
        count = math.prod(x.shape[a] for a in axes)
        return _wrap_to(np.sign(total) * (np.abs(total) // count), x.dtype)
    return np.asarray(x.mean(axis=axes, keepdims=keepdims), dtype=x.dtype)


def _max(x: Array, axes: tuple[int, ...], keepdims: bool) -> Array:
    # exact for every dtype (a maximum never rounds); used on int64 by the integer Softmax
    return np.asarray(x.max(axis=axes, keepdims=keepdims), dtype=x.dtype)


def _variadic(fn: Callable[[Array, Array], Array], name: str) -> OpFn:
    def op(node: _Node, inputs: list) -> Array:
        _same_dtype(node, *inputs)
        result = inputs[0]
        for other in inputs[1:]:
            result = fn(result, other)
        return np.asarray(result, dtype=inputs[0].dtype)

    op.__doc__ = (f"{name}: elementwise over one or more same-dtype inputs with numpy broadcasting "
                  "(exact for integers: no rounding, no overflow).")
    return op


def _abs(node: _Node, inputs: list) -> Array:
    """Abs in the input dtype (a signed minimum wraps to itself, as in C++/ORT)."""
    x = inputs[0]
    with np.errstate(over="ignore"):
        return np.asarray(np.abs(x), dtype=x.dtype)


def _neg(node: _Node, inputs: list) -> Array:
    """Neg in the input dtype (integers wrap)."""
    x = inputs[0]
    with np.errstate(over="ignore"):
        return np.asarray(np.negative(x), dtype=x.dtype)


def _compare(fn: Callable[[Array, Array], Array], name: str) -> OpFn:
    def op(node: _Node, inputs: list) -> Array:
        a, b = inputs
        _same_dtype(node, a, b)
        return np.asarray(fn(a, b), dtype=np.bool_)

    op.__doc__ = f"{name}: elementwise comparison with numpy broadcasting, bool result; same-dtype inputs."
    return op


def _where(node: _Node, inputs: list) -> Array:
    """Where(condition, X, Y): X where condition else Y, broadcasting; X and Y share one dtype."""
    cond, x, y = inputs
    if cond.dtype != np.bool_:
        raise node.error(f"condition must be bool, got {cond.dtype}")
    _same_dtype(node, x, y)
    return np.where(cond, x, y).astype(x.dtype)


# ---------------------------------------------------------------------------------------------
# Shape ops (dtype-preserving)
# ---------------------------------------------------------------------------------------------


def _reshape(node: _Node, inputs: list) -> Array:
    """Reshape: 0 copies the input dim (unless allowzero=1), -1 is inferred."""
    x, shape = inputs[0], [int(d) for d in inputs[1]]
    if not node.attr("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(shape)


def _flatten(node: _Node, inputs: list) -> Array:
    """Flatten to 2-D: [prod(dims[:axis]), prod(dims[axis:])], axis default 1 (negative allowed)."""
    x = inputs[0]
    axis = int(node.attr("axis", 1))
    axis = axis + x.ndim if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def _transpose(node: _Node, inputs: list) -> Array:
    """Transpose by ``perm`` (default: reverse the axes)."""
    perm = node.attr("perm")
    return np.transpose(inputs[0], perm)


def _squeeze(node: _Node, inputs: list) -> Array:
    """Squeeze ``axes`` (input since opset 13), or every size-1 axis when none are given."""
    x = inputs[0]
    axes = _axes(node, inputs, 1)
    if axes is None:
        return np.squeeze(x)
    axes = tuple(a % x.ndim for a in axes)
    if any(x.shape[a] != 1 for a in axes):
        raise node.error(f"cannot squeeze axes {axes} of shape {list(x.shape)}")
    return np.squeeze(x, axis=axes)


def _unsqueeze(node: _Node, inputs: list) -> Array:
    """Unsqueeze: insert size-1 ``axes`` (input since opset 13; negative w.r.t. the output rank)."""
    x = inputs[0]
    axes = _axes(node, inputs, 1) or []
    rank = x.ndim + len(axes)
    return np.expand_dims(x, tuple(sorted(a % rank for a in axes)))


def _concat(node: _Node, inputs: list) -> Array:
    """Concat along ``axis``; all inputs one dtype."""
    _same_dtype(node, *inputs)
    return np.concatenate(inputs, axis=int(node.attr("axis")))


def _identity(node: _Node, inputs: list) -> Array:
    """Identity."""
    return inputs[0]


def _shape(node: _Node, inputs: list) -> Array:
    """Shape as int64, sliced by ``start``/``end`` (opset 15)."""
    dims = list(inputs[0].shape)
    start, end = node.attr("start", 0), node.attr("end", None)
    return np.array(dims[start:end], dtype=np.int64)


def _gather(node: _Node, inputs: list) -> Array:
    """Gather along ``axis`` (default 0); negative indices count from the end."""
    data, indices = inputs
    axis = int(node.attr("axis", 0)) % data.ndim
    idx = np.where(indices < 0, indices + data.shape[axis], indices)
    return np.take(data, idx, axis=axis)


def _split(node: _Node, inputs: list) -> tuple[Array, ...]:
    """Split along ``axis`` (default 0) by the ``split`` sizes (input since opset 13, attribute
    before), or into equal parts (opset 18 ``num_outputs``: the last part may be smaller)."""
    x = inputs[0]
    axis = int(node.attr("axis", 0)) % x.ndim
    sizes = None
    if len(inputs) > 1 and inputs[1] is not None:
        sizes = [int(v) for v in inputs[1].reshape(-1)]
    elif "split" in node.attrs:
        sizes = [int(v) for v in node.attrs["split"]]
    if sizes is None:
        parts = node.n_outputs
        size = -(-x.shape[axis] // parts)
        sizes = [min(size, x.shape[axis] - i * size) for i in range(parts)]
    if sum(sizes) != x.shape[axis] or len(sizes) != node.n_outputs:
        raise node.error(f"split sizes {sizes} do not match axis {axis} of {list(x.shape)} and {node.n_outputs} outputs")
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


def _slice(node: _Node, inputs: list) -> Array:
    """Slice (opset >= 10): starts, ends, optional axes and steps; clamped like ONNX (and Python
    slicing, which has the same clamping rules for positive and negative steps)."""
    x = inputs[0]
    starts = [int(v) for v in inputs[1].reshape(-1)]
    ends = [int(v) for v in inputs[2].reshape(-1)]
    axes = [int(v) % x.ndim for v in inputs[3].reshape(-1)] if len(inputs) > 3 and inputs[3] is not None else list(range(len(starts)))
    steps = [int(v) for v in inputs[4].reshape(-1)] if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step == 0:
            raise node.error("a step of 0 is invalid")
        index[axis] = slice(start, end, step)  # int64 sentinels (+-2^63-1) clamp like Python's
    return x[tuple(index)]


def _constant(node: _Node, inputs: list) -> Array:
    """Constant: ``value`` tensor, or value_float(s) / value_int(s) (float32 / int64)."""
    attrs = node.attrs
    if "value" in attrs:
        return onnx.numpy_helper.to_array(attrs["value"])
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in attrs:
            return np.array(attrs[key], dtype=dtype)
    raise node.error(f"unsupported attribute(s) {sorted(attrs)}")


# ---------------------------------------------------------------------------------------------
# Float-island ops (may differ from ONNX Runtime by rounding)
# ---------------------------------------------------------------------------------------------


def _unary(fn: Callable[[Array], Array], name: str) -> OpFn:
    def op(node: _Node, inputs: list) -> Array:
        x = inputs[0]
        return np.asarray(fn(x), dtype=x.dtype)

    op.__doc__ = f"{name}, elementwise in the input dtype."
    return op


def _sigmoid(x: Array) -> Array:
    # split by sign so exp never overflows
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


_erf_scalar = np.frompyfunc(math.erf, 1, 1)


def _erf(x: Array) -> Array:
    # numpy has no erf; math.erf in float64 is correctly rounded to ~1 ulp (slow, fine here)
    return _erf_scalar(x.astype(np.float64)).astype(np.float64)


def _gelu(node: _Node, inputs: list) -> Array:
    """Gelu (opset 20): 0.5 x (1 + erf(x / sqrt 2)), or the ``approximate="tanh"`` form."""
    x = inputs[0]
    xd = x.astype(np.float64)
    if node.attr("approximate", "none") == "tanh":
        y = 0.5 * xd * (1 + np.tanh(math.sqrt(2 / math.pi) * (xd + 0.044715 * xd**3)))
    else:
        y = 0.5 * xd * (1 + _erf(xd / math.sqrt(2)))
    return y.astype(x.dtype)


def _softmax(node: _Node, inputs: list) -> Array:
    """Softmax: exp(x - max) / sum along ``axis`` (default -1); before opset 13 the input is
    coerced to 2-D at ``axis`` (default 1) and normalized over the whole trailing block."""
    x = inputs[0]
    if node.opset < 13:
        axis = int(node.attr("axis", 1)) % x.ndim
        flat = x.reshape(int(np.prod(x.shape[:axis])), -1)
        return _softmax_along(flat, 1).reshape(x.shape)
    return _softmax_along(x, int(node.attr("axis", -1)))


def _softmax_along(x: Array, axis: int) -> Array:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return np.asarray(e / e.sum(axis=axis, keepdims=True), dtype=x.dtype)


def _layer_norm(node: _Node, inputs: list) -> Array | tuple[Array, ...]:
    """LayerNormalization (opset 17): normalize over axes [axis, rank), axis default -1,
    epsilon default 1e-5, computed in float32 (stash_type=1); optional Mean/InvStdDev outputs."""
    x, scale = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    axis = int(node.attr("axis", -1)) % x.ndim
    eps = float(node.attr("epsilon", 1e-5))
    axes = tuple(range(axis, x.ndim))
    xf = x.astype(np.float32)
    mean = xf.mean(axis=axes, keepdims=True)
    inv_std = (1 / np.sqrt(((xf - mean) ** 2).mean(axis=axes, keepdims=True) + np.float32(eps))).astype(np.float32)
    y = ((xf - mean) * inv_std).astype(x.dtype) * scale
    if bias is not None:
        y = y + bias
    outs = (np.asarray(y, dtype=x.dtype), mean, inv_std)
    return outs[: node.n_outputs]


def _pow(node: _Node, inputs: list) -> Array:
    """Pow: x ** y with the base's dtype as the result dtype (the exponent may differ)."""
    x, y = inputs
    return np.asarray(np.power(x, y.astype(x.dtype) if x.dtype.kind == "f" else y), dtype=x.dtype)


def _matmul(node: _Node, inputs: list) -> Array:
    """MatMul with numpy broadcasting semantics (same dtype; integers wrap)."""
    a, b = inputs
    _same_dtype(node, a, b)
    return np.asarray(np.matmul(a, b), dtype=a.dtype)


def _gemm(node: _Node, inputs: list) -> Array:
    """Gemm: alpha * op(A) @ op(B) + beta * C, op = transpose when transA/transB."""
    a, b = inputs[0], inputs[1]
    c = inputs[2] if len(inputs) > 2 else None
    if node.attr("transA", 0):
        a = a.T
    if node.attr("transB", 0):
        b = b.T
    y = np.asarray(node.attr("alpha", 1.0), a.dtype) * (a @ b)
    if c is not None:
        y = y + np.asarray(node.attr("beta", 1.0), a.dtype) * c
    return np.asarray(y, dtype=a.dtype)


def _conv(node: _Node, inputs: list) -> Array:
    """Float Conv (N-d, groups, pads, strides, dilations, auto_pad) by im2col + tensordot, plus bias."""
    x, w = inputs[0], inputs[1]
    y = _conv_core(node, x, w, x.dtype.type)
    if len(inputs) > 2 and inputs[2] is not None:
        y = y + inputs[2].reshape([-1] + [1] * (x.ndim - 2))
    return np.asarray(y, dtype=x.dtype)


def _global_average_pool(node: _Node, inputs: list) -> Array:
    """GlobalAveragePool (float): mean over all spatial axes, kept as size 1."""
    x = inputs[0]
    return np.asarray(x.mean(axis=tuple(range(2, x.ndim)), keepdims=True), dtype=x.dtype)


_OPS: dict[str, OpFn] = {
    # quantization and integer arithmetic
    "QuantizeLinear": _quantize_linear,
    "DequantizeLinear": _dequantize_linear,
    "ConvInteger": _conv_integer,
    "MatMulInteger": _matmul_integer,
    "Add": _binary(np.add),
    "Sub": _binary(np.subtract),
    "Mul": _binary(np.multiply),
    "Div": _div,
    "Cast": _cast,
    "BitShift": _bit_shift,
    "Clip": _clip,
    "Relu": _relu,
    "MaxPool": _max_pool,
    "ReduceSum": _reduce(_sum, "ReduceSum", 13),
    "ReduceMean": _reduce(_mean, "ReduceMean", 18),
    "ReduceMax": _reduce(_max, "ReduceMax", 18),
    "Min": _variadic(np.minimum, "Min"),
    "Max": _variadic(np.maximum, "Max"),
    "Abs": _abs,
    "Neg": _neg,
    "Less": _compare(np.less, "Less"),
    "Greater": _compare(np.greater, "Greater"),
    "Where": _where,
    # shape ops
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Transpose": _transpose,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Concat": _concat,
    "Identity": _identity,
    "Shape": _shape,
    "Gather": _gather,
    "Split": _split,
    "Slice": _slice,
    "Constant": _constant,
    # float islands
    "Softmax": _softmax,
    "LayerNormalization": _layer_norm,
    "Gelu": _gelu,
    "Erf": _unary(_erf, "Erf"),
    "Sigmoid": _unary(_sigmoid, "Sigmoid"),
    "Tanh": _unary(np.tanh, "Tanh"),
    "Sqrt": _unary(np.sqrt, "Sqrt"),
    "Pow": _pow,
    "MatMul": _matmul,
    "Gemm": _gemm,
    "Conv": _conv,
    "GlobalAveragePool": _global_average_pool,
}

SUPPORTED_OPS: frozenset[str] = frozenset(_OPS)


# ---------------------------------------------------------------------------------------------
# The interpreter
# ---------------------------------------------------------------------------------------------


def _as_proto(model: Any) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    from compiler.ir import to_proto  # onnx_ir.Model; imported lazily, only compiler.ir imports onnx_ir

    return to_proto(model)


def run_reference(model: onnx.ModelProto | Any, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run ``model`` (ModelProto or onnx_ir.Model) on ``feeds``; outputs in graph order.

    Nodes run in graph order (the graph must be topologically sorted). Feeds must cover every
    graph input that is not an initializer and have its dtype; a feed may override an
    initializer that is also a graph input. Raises ReferenceInterpreterError naming the node for an unknown
    op, a non-default domain, a missing input or a type violation.
    """
    proto = _as_proto(model)
    graph = proto.graph
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
    env: dict[str, np.ndarray] = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    for value in graph.input:
        if value.name in feeds:
            array = np.asarray(feeds[value.name])
            elem = value.type.tensor_type.elem_type
            if elem and array.dtype != onnx.helper.tensor_dtype_to_np_dtype(elem):
                raise ReferenceInterpreterError(f"feed '{value.name}' has dtype {array.dtype}, the graph input "
                                      f"needs {onnx.helper.tensor_dtype_to_np_dtype(elem)}")
            env[value.name] = array
        elif value.name not in env:
            raise ReferenceInterpreterError(f"no feed for graph input '{value.name}'")
    for proto_node in graph.node:
        node = _Node(proto_node, opset)
        if proto_node.domain not in ("", "ai.onnx"):
            raise node.error(f"domain '{proto_node.domain}' is not supported by the reference interpreter")
        fn = _OPS.get(proto_node.op_type)
        if fn is None:
            raise node.error("operator is not supported by the reference interpreter "
                             f"(supported: {', '.join(sorted(_OPS))})")
        inputs = []
        for name in proto_node.input:
            if name == "":
                inputs.append(None)  # omitted optional input
            elif name in env:
                inputs.append(env[name])
            else:
                raise node.error(f"input '{name}' is not computed yet (graph not topologically sorted?)")
        while inputs and inputs[-1] is None:
            inputs.pop()
        try:
            result = fn(node, inputs)
        except ReferenceInterpreterError:
            raise
        except Exception as exc:  # numpy shape errors etc.: say which node
            raise node.error(f"{type(exc).__name__}: {exc}") from exc
        results = result if isinstance(result, tuple) else (result,)
        for name, value in zip(proto_node.output, results):
            if name:
                env[name] = np.asarray(value)
    missing = [v.name for v in graph.output if v.name not in env]
    if missing:
        raise ReferenceInterpreterError(f"graph outputs {missing} are never computed")
    return [env[v.name] for v in graph.output]
