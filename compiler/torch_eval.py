"""A differentiable evaluator of float ONNX graphs with torch ops (for second-order sensitivities).

    graph = TorchGraph(model)                          # raises TorchUnsupported naming the node
    logits, = graph.run({"x": x}, {"conv1_w": w})       # override initializers with torch tensors

Each node of the (topologically sorted) onnx_ir graph runs as the torch function in ``_OPS`` with
ONNX semantics (opset 13-18 attribute/input forms): Conv, Gemm, MatMul, Add, Sub, Mul, Div, Pow,
Relu, Clip, Sigmoid, Tanh, Erf, Gelu, Sqrt, Exp, Neg, Abs, Reciprocal, MaxPool, AveragePool
(symmetric pads), GlobalAveragePool, BatchNormalization (inference), Flatten, Reshape, Transpose,
Squeeze, Unsqueeze, Concat, Split, Slice, Gather, Softmax, LayerNormalization, ReduceMean,
ReduceSum, Cast, Identity, Dropout (inference), Shape, Constant, ConstantOfShape, Expand, Where,
Equal. Initializers become tensors once; an override replaces one (e.g. a weight that needs a
gradient), so ``torch.autograd`` differentiates the outputs with respect to it.

Floats run in ``dtype`` (float32 by default, float64 for exact Hessian checks); integer tensors
(shapes, indices) are int64. An op outside the table, a non-default domain or an attribute form
not handled (e.g. asymmetric AveragePool pads) raises ``TorchUnsupported`` with one line naming the
node, when the graph is built, never in the middle of a run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from compiler.ir import Model, Node, constant_array

__all__ = ["SUPPORTED_OPS", "TorchGraph", "TorchUnsupported"]


class TorchUnsupported(ValueError):
    """The graph has a node the torch evaluator cannot run (the message names it)."""


def _label(node: Node) -> str:
    return f"{node.op_type} '{node.name or (node.outputs[0].name if node.outputs else '?')}'"


class _Ctx:
    """What an op sees: attributes (with defaults) and the opset."""

    def __init__(self, node: Node, opset: int, dtype):
        self.node, self.opset, self.dtype = node, opset, dtype

    def attr(self, name: str, default: Any = None) -> Any:
        a = self.node.attributes.get(name)
        if a is None:
            return default
        value = a.value
        if isinstance(value, bytes):
            return value.decode()
        if isinstance(value, (list, tuple)):
            return [v.decode() if isinstance(v, bytes) else v for v in value]
        return value

    def fail(self, why: str) -> TorchUnsupported:
        return TorchUnsupported(f"{_label(self.node)}: {why}")


def _ints(t) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


# -- ops ------------------------------------------------------------------------------------------
def _conv(c: _Ctx, x, w, b=None):
    import torch.nn.functional as F

    nd = w.dim() - 2
    strides = c.attr("strides", [1] * nd)
    dilations = c.attr("dilations", [1] * nd)
    group = c.attr("group", 1)
    pads = _pads(c, x.shape[2:], c.attr("kernel_shape", list(w.shape[2:])), strides, dilations)
    x = F.pad(x, _torch_pad(pads))
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    return fn(x, w, b, stride=strides, padding=0, dilation=dilations, groups=group)


def _pads(c: _Ctx, spatial, kernel, strides, dilations) -> list[int]:
    nd = len(kernel)
    auto = c.attr("auto_pad", "NOTSET")
    if auto in ("NOTSET", "") or auto is None:
        return list(c.attr("pads", [0] * 2 * nd))
    if auto == "VALID":
        return [0] * 2 * nd
    begin, end = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        total = max(0, (-(-int(size) // s) - 1) * s + (k - 1) * d + 1 - int(size))
        small, large = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else large)
        end.append(large if auto == "SAME_UPPER" else small)
    return begin + end


def _torch_pad(pads: Sequence[int]) -> list[int]:
    """ONNX [b1, b2, .., e1, e2, ..] -> torch F.pad order (last dim first: b_n, e_n, ...)."""
    nd = len(pads) // 2
    out = []
    for i in reversed(range(nd)):
        out += [int(pads[i]), int(pads[i + nd])]
    return out


def _gemm(c: _Ctx, a, b, cc=None):
    if c.attr("transA", 0):
        a = a.transpose(0, 1)
    if c.attr("transB", 0):
        b = b.transpose(0, 1)
    y = c.attr("alpha", 1.0) * (a @ b)
    if cc is not None:
        y = y + c.attr("beta", 1.0) * cc
    return y


def _clip(c: _Ctx, x, lo=None, hi=None):
    import torch

    if c.opset < 11:
        lo, hi = c.attr("min"), c.attr("max")
    if lo is not None:
        x = torch.maximum(x, torch.as_tensor(lo, dtype=x.dtype))
    if hi is not None:
        x = torch.minimum(x, torch.as_tensor(hi, dtype=x.dtype))
    return x


def _max_pool(c: _Ctx, x):
    import torch.nn.functional as F

    kernel = c.attr("kernel_shape")
    nd = len(kernel)
    strides = c.attr("strides", [1] * nd)
    dilations = c.attr("dilations", [1] * nd)
    pads = _pads(c, x.shape[2:], kernel, strides, dilations)
    if c.attr("ceil_mode", 0) or c.attr("storage_order", 0):
        raise c.fail("ceil_mode / storage_order not supported")
    x = F.pad(x, _torch_pad(pads), value=-math.inf)
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
    return fn(x, kernel, strides, 0, dilations)


def _avg_pool(c: _Ctx, x):
    import torch.nn.functional as F

    kernel = c.attr("kernel_shape")
    nd = len(kernel)
    strides = c.attr("strides", [1] * nd)
    pads = _pads(c, x.shape[2:], kernel, strides, [1] * nd)
    if pads[:nd] != pads[nd:] or c.attr("ceil_mode", 0):
        raise c.fail("asymmetric pads / ceil_mode not supported")
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
    return fn(x, kernel, strides, pads[:nd], count_include_pad=bool(c.attr("count_include_pad", 0)))


def _batch_norm(c: _Ctx, x, scale, bias, mean, var):
    import torch.nn.functional as F

    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=c.attr("epsilon", 1e-5))


def _flatten(c: _Ctx, x):
    axis = c.attr("axis", 1) % max(x.dim(), 1) if x.dim() else 0
    lead = int(np.prod(x.shape[:axis], dtype=np.int64))
    return x.reshape(lead, -1)


def _reshape(c: _Ctx, x, shape):
    target = _ints(shape)
    if not c.attr("allowzero", 0):
        target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return x.reshape(target)


def _transpose(c: _Ctx, x):
    perm = c.attr("perm", list(reversed(range(x.dim()))))
    return x.permute(*perm)


def _axes(c: _Ctx, inputs: Sequence, index: int, since: int):
    if c.opset >= since:
        return _ints(inputs[index]) if len(inputs) > index and inputs[index] is not None else None
    return c.attr("axes")


def _squeeze(c: _Ctx, x, *rest):
    axes = _axes(c, (x, *rest), 1, 13)
    if axes is None:
        return x.squeeze()
    for a in sorted((a % x.dim() for a in axes), reverse=True):
        x = x.squeeze(a)
    return x


def _unsqueeze(c: _Ctx, x, *rest):
    axes = _axes(c, (x, *rest), 1, 13)
    rank = x.dim() + len(axes)
    for a in sorted(a % rank for a in axes):
        x = x.unsqueeze(a)
    return x


def _concat(c: _Ctx, *xs):
    import torch

    return torch.cat([x for x in xs if x is not None], dim=c.attr("axis"))


def _split(c: _Ctx, x, split=None):
    axis = c.attr("axis", 0)
    sizes = _ints(split) if split is not None else c.attr("split")
    n = len(c.node.outputs)
    if sizes is None:
        size = x.shape[axis]
        chunk = -(-size // n)
        sizes = [min(chunk, size - i * chunk) for i in range(n)]
    return tuple(x.split(list(sizes), dim=axis))


def _slice(c: _Ctx, x, starts, ends, axes=None, steps=None):
    starts, ends = _ints(starts), _ints(ends)
    axes = _ints(axes) if axes is not None else list(range(len(starts)))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    for s, e, a, st in zip(starts, ends, axes, steps):
        if st <= 0:
            raise c.fail("non-positive Slice steps not supported")
        size = x.shape[a]
        s = max(0, min(size, s + size if s < 0 else s))
        e = max(0, min(size, e + size if e < 0 else e))
        index[a] = slice(s, e, st)
    return x[tuple(index)]


def _gather(c: _Ctx, x, indices):
    import torch

    axis = c.attr("axis", 0) % x.dim()
    idx = torch.where(indices < 0, indices + x.shape[axis], indices).long()
    out = torch.index_select(x, axis, idx.reshape(-1))
    return out.reshape(*x.shape[:axis], *idx.shape, *x.shape[axis + 1:])


def _softmax(c: _Ctx, x):
    import torch

    axis = c.attr("axis", -1 if c.opset >= 13 else 1)
    if c.opset < 13:
        raise c.fail("Softmax before opset 13 (2-D coercion) not supported")
    return torch.softmax(x, dim=axis)


def _layer_norm(c: _Ctx, x, scale, bias=None):
    import torch.nn.functional as F

    axis = c.attr("axis", -1) % x.dim()
    return F.layer_norm(x, x.shape[axis:], scale, bias, eps=c.attr("epsilon", 1e-5))


def _reduce(fn_name: str, since: int):
    def op(c: _Ctx, x, *rest):
        axes = _axes(c, (x, *rest), 1, since)
        keep = bool(c.attr("keepdims", 1))
        if axes is None or not axes:
            if c.attr("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        return getattr(x, fn_name)(dim=[a % x.dim() for a in axes], keepdim=keep)

    return op


def _cast(c: _Ctx, x):
    import onnx
    import torch

    to = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(c.attr("to")))
    if to.kind == "f":
        return x.to(c.dtype)
    if to.kind in "iu":
        return x.to(torch.int64) if not x.is_floating_point() else torch.trunc(x).to(torch.int64)
    if to.kind == "b":
        return x != 0
    raise c.fail(f"Cast to {to} not supported")


def _div(c: _Ctx, a, b):
    import torch

    if a.is_floating_point() or b.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


def _gelu(c: _Ctx, x):
    import torch.nn.functional as F

    return F.gelu(x, approximate=c.attr("approximate", "none"))


def _shape(c: _Ctx, x):
    import torch

    dims = list(x.shape)
    start, end = c.attr("start", 0), c.attr("end", None)
    return torch.tensor(dims[start:end], dtype=torch.int64)


def _constant_of_shape(c: _Ctx, shape):
    import torch

    value = c.node.attributes.get("value")
    array = value.value.numpy() if value is not None else np.zeros(1, np.float32)
    return torch.full(_ints(shape), float(array.reshape(-1)[0]) if array.dtype.kind == "f" else int(array.reshape(-1)[0]),
                      dtype=c.dtype if array.dtype.kind == "f" else torch.int64)


def _constant(c: _Ctx):
    value = c.node.attributes.get("value")
    if value is None:
        raise c.fail("Constant without a tensor 'value' not supported")
    return _tensor(value.value.numpy(), c.dtype)


def _expand(c: _Ctx, x, shape):
    """ONNX Expand (bidirectional broadcast): ``x * ones(shape)``."""
    import torch

    return x * torch.ones(_ints(shape), dtype=x.dtype)


def _elementwise(name: str) -> Callable:
    def op(c: _Ctx, *xs):
        import torch

        return getattr(torch, name)(*xs)

    return op


_OPS: dict[str, Callable] = {
    "Conv": _conv, "Gemm": _gemm, "MatMul": lambda c, a, b: a @ b,
    "Add": lambda c, a, b: a + b, "Sub": lambda c, a, b: a - b, "Mul": lambda c, a, b: a * b, "Div": _div,
    "Pow": lambda c, a, b: a ** b,
    "Relu": _elementwise("relu"), "Sigmoid": _elementwise("sigmoid"), "Tanh": _elementwise("tanh"),
    "Erf": _elementwise("erf"), "Sqrt": _elementwise("sqrt"), "Exp": _elementwise("exp"), "Neg": _elementwise("neg"),
    "Abs": _elementwise("abs"), "Reciprocal": _elementwise("reciprocal"), "Where": _elementwise("where"),
    "Equal": _elementwise("eq"), "Expand": _expand,
    "Clip": _clip, "Gelu": _gelu,
    "MaxPool": _max_pool, "AveragePool": _avg_pool,
    "GlobalAveragePool": lambda c, x: x.mean(dim=list(range(2, x.dim())), keepdim=True),
    "BatchNormalization": _batch_norm,
    "Flatten": _flatten, "Reshape": _reshape, "Transpose": _transpose, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze,
    "Concat": _concat, "Split": _split, "Slice": _slice, "Gather": _gather,
    "Softmax": _softmax, "LayerNormalization": _layer_norm,
    "ReduceMean": _reduce("mean", 18), "ReduceSum": _reduce("sum", 13),
    "Cast": _cast, "Identity": lambda c, x: x, "Dropout": lambda c, x, *rest: x,
    "Shape": _shape, "Constant": _constant, "ConstantOfShape": _constant_of_shape,
}

#: ONNX op types the evaluator runs.
SUPPORTED_OPS = frozenset(_OPS)


def _tensor(array: np.ndarray, dtype):
    """Floats in ``dtype``, booleans as is, other integers as int64."""
    import torch

    array = np.asarray(array)
    if array.dtype.kind == "f":
        return torch.from_numpy(np.array(array)).to(dtype)
    if array.dtype.kind == "b":
        return torch.from_numpy(np.array(array))
    return torch.from_numpy(np.ascontiguousarray(array.astype(np.int64)))


class TorchGraph:
    """A float ONNX model as a torch function (module docstring).

    Args:
        model: the model (onnx_ir), topologically sorted, after ``canonicalize``.
        dtype: the torch float dtype floats are computed in.

    Raises:
        TorchUnsupported: a node outside ``SUPPORTED_OPS``, in another domain, or with a subgraph.
    """

    def __init__(self, model: Model, dtype=None):
        import torch

        self.dtype = dtype or torch.float32
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        self.nodes: list[tuple[Node, _Ctx]] = []
        for node in model.graph:
            label = _label(node)
            if node.domain not in ("", "ai.onnx"):
                raise TorchUnsupported(f"{label}: domain '{node.domain}' is not supported by the torch evaluator")
            if node.op_type not in _OPS:
                raise TorchUnsupported(f"{label}: op '{node.op_type}' is not supported by the torch evaluator")
            if any(a.type.name in ("GRAPH", "GRAPHS") for a in node.attributes.values()):
                raise TorchUnsupported(f"{label}: subgraphs are not supported by the torch evaluator")
            self.nodes.append((node, _Ctx(node, opset, self.dtype)))
        self.input_names = [v.name for v in model.graph.inputs]
        self.output_names = [v.name for v in model.graph.outputs]
        self.constants = {
            v.name: _tensor(constant_array(v), self.dtype) for v in model.graph.initializers.values()
            if v.name not in self.input_names and constant_array(v) is not None
        }

    def run(self, feeds: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> list:
        """The graph outputs (torch tensors, graph order) for ``feeds`` (arrays or tensors) with
        ``overrides`` (name -> tensor) replacing initializers."""
        import torch

        env: dict[str, Any] = dict(self.constants)
        for name in self.input_names:
            if name in feeds:
                value = feeds[name]
                env[name] = value if isinstance(value, torch.Tensor) else _tensor(np.asarray(value), self.dtype)
        env.update(overrides or {})
        for node, ctx in self.nodes:
            args = [env[v.name] if v is not None else None for v in node.inputs]
            while args and args[-1] is None:
                args.pop()
            try:
                result = _OPS[node.op_type](ctx, *args)
            except TorchUnsupported:
                raise
            except Exception as exc:  # noqa: BLE001 - name the node, keep one line
                raise TorchUnsupported(f"{_label(node)}: {type(exc).__name__}: {exc}") from exc
            outputs = result if isinstance(result, tuple) else (result,)
            for value, out in zip(node.outputs, outputs):
                env[value.name] = out
        return [env[name] for name in self.output_names]
