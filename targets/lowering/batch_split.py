"""Per-image execution of a batched model: one artifact whose ``main`` runs a batch-1 network on
each image of the batch in turn.

Why
---
A batched network keeps the whole batch's activations of a layer live between kernels. When that
working set overflows the last-level cache, every layer streams from DRAM; run image by image, the
same layers stay in cache. MobileNetV2 fp32 at batch 8 on a 32 MB L3: batched 1.54x of ONNX
Runtime, the same kernels image by image 1.38x. The trade-off is the weights: image by image reads
them once per image, which is why ResNet-18 (46 MB of weights) is faster batched.

Three parts, used by ``lower.lower_model`` (and by ``tuning.tune``, so records match the kernels):

1. :func:`per_sample_axes` proves, op by op on the ONNX graph, that every output image depends on
   the same input image only. It tracks the batch axis of every value (``None`` for values computed
   from constants) through layout ops (Transpose, Reshape, Squeeze, Unsqueeze) and rejects any op
   that mixes images: a reduction, softmax, concat, split, slice or gather along the batch axis, a
   matmul contracting it, Shape/Size of a batched value, or an op it does not know.
2. :func:`predicted_saving` decides with a cache model (below) whether it pays.
3. :func:`wrap_per_image` builds the Relax module: the batch-1 network becomes the Relax function
   ``per_image``, and ``main`` slices each input along the batch, calls ``per_image`` N times and
   concatenates the outputs. It runs after scheduling, so tuning records, the schedule rules and the
   report see exactly the batch-1 kernels.

Cache model (:func:`predicted_saving`)
-------------------------------------
``C`` = the target's last-level cache, ``N`` = the batch, ``W`` = bytes of all weights. A value
``v`` that crosses a kernel boundary (an input of a conv, matmul, pool, normalization, softmax,
concat or transpose, or a graph output) has per-image size ``s_v``; one kernel writes it and the
next reads it, and the pair's working set is about twice the value. It comes from DRAM when that
working set does not fit::

    batched:   traffic_v = 2 N s_v   if 2 N s_v > C, else 0
    per image: traffic_v = 2 N s_v   if 2 s_v   > C, else 0
    per image re-reads the weights once per image unless they stay cached with the activations:
               extra     = (N - 1) W if W + 2 max_v s_v > C, else 0

    saving = sum_v (batched traffic_v - per-image traffic_v) - extra

The model splits when ``saving > 0``. It counts only memory traffic; compute per image is the same
either way, except that batched matmuls see N times more rows, which is why a tie keeps the batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from compiler.errors import OptionError

#: ``--per-image`` values.
MODES = ("auto", "on", "off")

#: Ops whose every output has the batch axis of their batched inputs, with numpy broadcasting of
#: all inputs (element-wise ops). A batch-free input must not have a size > 1 on the batch axis.
_ELEMENTWISE = {
    "Abs", "Add", "And", "BitShift", "Cast", "CastLike", "Ceil", "Clip", "Cos", "Div", "Dropout", "Elu",
    "Equal", "Erf", "Exp", "Floor", "Gelu", "Greater", "GreaterOrEqual", "HardSigmoid", "HardSwish",
    "Identity", "IsNaN", "LeakyRelu", "Less", "LessOrEqual", "Log", "Max", "Mean", "Min", "Mod", "Mul",
    "Neg", "Not", "Or", "Pow", "PRelu", "Reciprocal", "Relu", "Round", "Selu", "Sigmoid", "Sign", "Sin",
    "Softplus", "Softsign", "Sqrt", "Sub", "Sum", "Tanh", "Where", "Xor", "QuantizeLinear", "DequantizeLinear",
}
#: Ops over NC... data (batch axis 0 of input 0 only; every other input batch-free).
_NCHW_OPS = {
    "AveragePool", "BatchNormalization", "Conv", "ConvInteger", "ConvTranspose", "GlobalAveragePool",
    "GlobalMaxPool", "InstanceNormalization", "LRN", "MaxPool",
}
#: Ops with an ``axis`` (one axis) that must not be the batch axis; the output keeps the batch axis.
_AXIS_OPS = {"Softmax", "LogSoftmax", "Hardmax", "Concat", "Split", "CumSum", "LpNormalization"}
#: Reductions: their axes (attribute, or the second input from opset 18/13) must exclude the batch.
_REDUCE_OPS = {
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
    "ReduceProd", "ReduceSum", "ReduceSumSquare", "ArgMax", "ArgMin",
}
#: Ops whose input values are read as a whole; they cross a kernel boundary in the cache model.
_ANCHOR_OPS = _NCHW_OPS | _AXIS_OPS | _REDUCE_OPS | {
    "Gemm", "MatMul", "MatMulInteger", "LayerNormalization", "Transpose", "Gather",
}


class NotPerSample(Exception):
    """The graph mixes images (or uses an op the analysis does not know): the message says where."""


@dataclasses.dataclass
class BatchPlan:
    """How lowering runs a batched model.

    ``batch`` is N when the artifact runs the batch-1 network image by image, else None.
    ``model``/``shapes`` are what to import: the batch-1 rewrite of the model and its input shapes
    when split, else the given ones. ``note`` says what was decided and why (for the report).
    """

    batch: int | None
    model: onnx.ModelProto
    shapes: dict[str, list[int]]
    note: str | None = None


def _node_label(node: onnx.NodeProto) -> str:
    return f"node '{node.name or node.output[0]}' ({node.op_type})"


def _attr(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


class _Graph:
    """Static shapes and constant values of a model with static input shapes."""

    def __init__(self, model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]):
        model = onnx.ModelProto.FromString(model.SerializeToString())
        for value in model.graph.input:
            if value.name in shapes:
                dims = value.type.tensor_type.shape.dim
                del dims[:]
                for d in shapes[value.name]:
                    dims.add().dim_value = int(d)
        try:
            model = onnx.shape_inference.infer_shapes(model, data_prop=True)
        except Exception as exc:  # an unusual graph: no split, the build goes on batched
            raise NotPerSample(f"ONNX shape inference failed ({type(exc).__name__})") from exc
        self.model = model
        self.shape: dict[str, tuple[int, ...] | None] = {}
        self.dtype: dict[str, int] = {}
        for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
            tensor = value.type.tensor_type
            self.dtype[value.name] = tensor.elem_type
            if tensor.HasField("shape") and all(d.HasField("dim_value") for d in tensor.shape.dim):
                self.shape[value.name] = tuple(d.dim_value for d in tensor.shape.dim)
        self.constants: dict[str, np.ndarray] = {}
        for init in model.graph.initializer:
            self.constants[init.name] = numpy_helper.to_array(init)
        for node in model.graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].type == onnx.AttributeProto.TENSOR:
                self.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        for name, array in self.constants.items():
            self.shape[name] = tuple(array.shape)

    def rank(self, name: str) -> int:
        shape = self.shape.get(name)
        if shape is None:
            raise NotPerSample(f"value '{name}' has no static shape")
        return len(shape)

    def ints(self, name: str, node: onnx.NodeProto) -> list[int]:
        if name not in self.constants:
            raise NotPerSample(f"{_node_label(node)} takes a computed '{name}'")
        return [int(v) for v in np.asarray(self.constants[name]).reshape(-1)]


def _aligned(axis: int, rank: int, out_rank: int) -> int:
    """The output axis that input axis ``axis`` of a rank-``rank`` operand broadcasts to."""
    return axis + out_rank - rank


def _broadcast_axis(graph: _Graph, node: onnx.NodeProto, inputs: list[str], axes: dict[str, int | None]) -> int:
    """The batch axis of a broadcasting op's output; every batched input must put the batch on the
    same output axis, and no batch-free input may have a size > 1 there."""
    out_rank = graph.rank(node.output[0])
    batched = {_aligned(axes[name], graph.rank(name), out_rank) for name in inputs if axes.get(name) is not None}
    if len(batched) != 1:
        raise NotPerSample(f"{_node_label(node)} combines batch axes {sorted(batched)}")
    out_axis = batched.pop()
    for name in inputs:
        if axes.get(name) is None and name:
            shape = graph.shape.get(name)
            if shape is None:
                raise NotPerSample(f"value '{name}' has no static shape")
            local = out_axis - (out_rank - len(shape))
            if 0 <= local < len(shape) and shape[local] != 1:
                raise NotPerSample(f"{_node_label(node)} broadcasts '{name}' along the batch axis")
    return out_axis


def _normalized(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _reshape_axis(graph: _Graph, node: onnx.NodeProto, axis: int, batch: int) -> int:
    """Reshape keeps images apart iff the dims before the batch axis multiply to the same number
    before some output axis of size N (row-major order: [outer, N, inner] -> [outer', N, inner'])."""
    src = graph.shape.get(node.input[0])
    dst = graph.shape.get(node.output[0])
    if src is None or dst is None:
        raise NotPerSample(f"{_node_label(node)} has no static shapes")
    outer = int(np.prod(src[:axis]))
    for k, size in enumerate(dst):
        if size == batch and int(np.prod(dst[:k])) == outer:
            return k
    raise NotPerSample(f"{_node_label(node)} merges the batch axis with others")


def per_sample_axes(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]], batch: int) -> tuple[_Graph, dict[str, int | None]]:
    """Batch axis of every value of ``model`` (None: computed from constants only), proving that
    each output image depends on the same input image only. Raises NotPerSample naming the node
    that mixes images (or that the analysis does not know)."""
    graph = _Graph(model, shapes)
    initializers = {init.name for init in model.graph.initializer}
    axes: dict[str, int | None] = {name: None for name in graph.constants}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        shape = graph.shape.get(value.name)
        if not shape or shape[0] != batch:
            raise NotPerSample(f"input '{value.name}' has no batch of {batch} on its first axis")
        axes[value.name] = 0
    for node in graph.model.graph.node:
        inputs = [name for name in node.input if name]
        if node.domain not in ("", "ai.onnx"):
            raise NotPerSample(f"{_node_label(node)} is not a standard ONNX op")
        if all(axes.get(name) is None for name in inputs):
            for name in node.output:
                axes[name] = None  # computed from constants (weights, shapes)
            continue
        axes.update(dict.fromkeys(node.output, _output_axis(graph, node, inputs, axes, batch)))
    for value in model.graph.output:
        if axes.get(value.name) != 0:
            raise NotPerSample(f"output '{value.name}' does not have the batch on its first axis")
    return graph, axes


def _output_axis(graph: _Graph, node: onnx.NodeProto, inputs: list[str], axes: dict[str, int | None], batch: int) -> int:
    """Batch axis of ``node``'s outputs, given at least one batched input (NotPerSample if mixed)."""
    op = node.op_type
    first = axes.get(node.input[0])
    if op in _ELEMENTWISE:
        axis = _broadcast_axis(graph, node, inputs, axes)
        if op in ("QuantizeLinear", "DequantizeLinear") and len(graph.shape.get(node.input[1]) or ()) == 1:
            # Per-axis scales run along ``axis``, not by numpy broadcasting.
            if _normalized(_attr(node, "axis", 1), graph.rank(node.input[0])) == axis:
                raise NotPerSample(f"{_node_label(node)} has per-image scales")
        return axis
    if op in _NCHW_OPS:
        if first != 0 or any(axes.get(name) is not None for name in inputs[1:]):
            raise NotPerSample(f"{_node_label(node)} does not have the batch on the first axis of its data only")
        if op == "BatchNormalization" and _attr(node, "training_mode", 0):
            raise NotPerSample(f"{_node_label(node)} normalizes over the batch (training mode)")
        return 0
    if op == "Gather":
        return _gather_axis(graph, node, axes)
    if op in ("MatMul", "MatMulInteger"):
        return _matmul_axis(graph, node, axes)
    if op == "Concat":
        batched = {axes.get(name) for name in inputs}
        if len(batched) != 1:
            raise NotPerSample(f"{_node_label(node)} concatenates values with different batch axes")
    elif any(axes.get(name) is not None for name in inputs[1:]):
        raise NotPerSample(f"{_node_label(node)} takes a batched value as a parameter")
    rank = graph.rank(node.input[0])
    if op in ("Softmax", "LogSoftmax", "Hardmax"):
        if _opset_at_least(graph, 13):
            axis = _normalized(_attr(node, "axis", -1), rank)
            if axis == first:
                raise NotPerSample(f"{_node_label(node)} normalizes along the batch axis")
        elif first >= _normalized(_attr(node, "axis", 1), rank):  # before 13: one softmax over [axis:]
            raise NotPerSample(f"{_node_label(node)} normalizes over the batch axis")
        return first
    if op in _AXIS_OPS:
        axis = _normalized(_attr(node, "axis", -1 if op == "LpNormalization" else 0), rank)
        if op == "CumSum":
            axis = _normalized(graph.ints(node.input[1], node)[0], rank)
        if axis == first:
            raise NotPerSample(f"{_node_label(node)} works along the batch axis")
        return first
    if op in _REDUCE_OPS:
        reduce_axes = _attr(node, "axes", None)
        if reduce_axes is None and len(node.input) > 1 and node.input[1]:
            reduce_axes = graph.ints(node.input[1], node)
        if op in ("ArgMax", "ArgMin"):
            reduce_axes = [_attr(node, "axis", 0)]
        if not reduce_axes:
            raise NotPerSample(f"{_node_label(node)} reduces over every axis")
        reduce_axes = [_normalized(a, rank) for a in reduce_axes]
        if first in reduce_axes:
            raise NotPerSample(f"{_node_label(node)} reduces over the batch axis")
        keep = _attr(node, "keepdims", 1)
        return first if keep else first - sum(1 for a in reduce_axes if a < first)
    if op == "LayerNormalization":
        if first >= _normalized(_attr(node, "axis", -1), rank):
            raise NotPerSample(f"{_node_label(node)} normalizes over the batch axis")
        return first
    if op == "Transpose":
        perm = list(_attr(node, "perm", list(range(rank))[::-1]))
        return perm.index(first)
    if op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
        return _reshape_axis(graph, node, first, batch)
    if op == "Slice":
        if len(node.input) < 4 or not node.input[3]:
            raise NotPerSample(f"{_node_label(node)} slices every axis")
        if first in [_normalized(a, rank) for a in graph.ints(node.input[3], node)]:
            raise NotPerSample(f"{_node_label(node)} slices the batch axis")
        return first
    if op == "Pad":
        pads = graph.ints(node.input[1], node) if len(node.input) > 1 else list(_attr(node, "pads", []))
        pad_axes = graph.ints(node.input[3], node) if len(node.input) > 3 and node.input[3] else list(range(rank))
        pad_axes = [_normalized(a, rank) for a in pad_axes]
        if first in pad_axes:
            k = pad_axes.index(first)
            if pads[k] or pads[k + len(pad_axes)]:
                raise NotPerSample(f"{_node_label(node)} pads the batch axis")
        return first
    if op == "Gemm":
        if first != 0 or _attr(node, "transA", 0):
            raise NotPerSample(f"{_node_label(node)} contracts the batch axis")
        return 0
    raise NotPerSample(f"{_node_label(node)} is not known to act image by image")


def _opset_at_least(graph: _Graph, version: int) -> bool:
    return any(o.domain in ("", "ai.onnx") and o.version >= version for o in graph.model.opset_import)


def _gather_axis(graph: _Graph, node: onnx.NodeProto, axes: dict[str, int | None]) -> int:
    """Gather ``data`` along ``axis`` at ``indices``: the output is data's shape with ``axis``
    replaced by the indices' shape. Batched data may not be gathered along the batch; batched
    indices (token ids into a batch-free table) put the batch at ``axis + their batch axis``."""
    data, indices = node.input[0], node.input[1]
    axis = _normalized(_attr(node, "axis", 0), graph.rank(data))
    batch_data, batch_indices = axes.get(data), axes.get(indices)
    if batch_data is not None and batch_indices is not None:
        raise NotPerSample(f"{_node_label(node)} gathers batched data at batched indices")
    if batch_indices is not None:
        return axis + batch_indices
    if axis == batch_data:
        raise NotPerSample(f"{_node_label(node)} gathers along the batch axis")
    return batch_data if batch_data < axis else batch_data - 1 + graph.rank(indices)


def _matmul_axis(graph: _Graph, node: onnx.NodeProto, axes: dict[str, int | None]) -> int:
    """MatMul ``[..., M, K] x [..., K, P]``: the batch may sit on a leading (broadcast) axis of
    either operand (both batched: the same aligned axis), or on A's row axis M with B batch-free,
    or on B's column axis P with A batch-free; never on K."""
    a, b = node.input[0], node.input[1]
    out_rank = graph.rank(node.output[0])
    ra, rb = graph.rank(a), graph.rank(b)
    if ra < 2 or rb < 2:
        raise NotPerSample(f"{_node_label(node)} has a 1-D operand")
    axis_a, axis_b = axes.get(a), axes.get(b)
    if axis_a is not None and axis_a == ra - 1 or axis_b is not None and axis_b == rb - 2:
        raise NotPerSample(f"{_node_label(node)} contracts the batch axis")
    if axis_a == ra - 2 and axis_b is None:
        return out_rank - 2
    if axis_b == rb - 1 and axis_a is None:
        return out_rank - 1
    if (axis_a is not None and axis_a >= ra - 2) or (axis_b is not None and axis_b >= rb - 2):
        raise NotPerSample(f"{_node_label(node)} multiplies batched rows by batched columns")
    # Leading (broadcast) axes behave element-wise.
    lead = [name for name in (a, b) if axes.get(name) is not None]
    out_axes = {_aligned(axes[name], graph.rank(name), out_rank) for name in lead}
    if len(out_axes) != 1:
        raise NotPerSample(f"{_node_label(node)} combines batch axes {sorted(out_axes)}")
    out_axis = out_axes.pop()
    for name in (a, b):
        if axes.get(name) is None:
            shape = graph.shape[name]
            local = out_axis - (out_rank - len(shape))
            if 0 <= local < len(shape) - 2 and shape[local] != 1:
                raise NotPerSample(f"{_node_label(node)} broadcasts '{name}' along the batch axis")
    return out_axis


def single_image_model(graph: _Graph, axes: Mapping[str, int | None], batch: int) -> onnx.ModelProto:
    """The model at batch 1: every Reshape gets its static batch-1 target shape as a constant, so
    shapes baked for batch N (``[8, 32, 3, 4, 16]``, ``[8, 512]``) follow the batch."""
    model = onnx.ModelProto.FromString(graph.model.SerializeToString())
    del model.graph.value_info[:]  # batch-N shapes; the importer infers its own
    for value in [*model.graph.input, *model.graph.output]:
        axis = axes.get(value.name)
        dims = value.type.tensor_type.shape.dim
        if axis is not None and len(dims) > axis:
            dims[axis].Clear()
            dims[axis].dim_value = 1
    for index, node in enumerate(model.graph.node):
        if node.op_type != "Reshape" or axes.get(node.output[0]) is None:
            continue
        target = list(graph.shape[node.output[0]])
        target[axes[node.output[0]]] = 1
        name = f"{node.output[0]}__batch1_shape"
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(target, dtype=np.int64), name))
        node.input[1] = name
    return model


def _value_bytes(graph: _Graph, name: str) -> int:
    shape = graph.shape.get(name)
    if shape is None:
        return 0
    size = onnx.helper.tensor_dtype_to_np_dtype(graph.dtype[name]).itemsize if name in graph.dtype else 4
    return int(np.prod(shape)) * size


def predicted_saving(graph: _Graph, axes: Mapping[str, int | None], batch: int, cache_bytes: int) -> dict:
    """Bytes of memory traffic that running image by image saves (the module docstring's model)."""
    boundary = set()
    for node in graph.model.graph.node:
        if node.op_type in _ANCHOR_OPS:
            boundary.update(name for name in node.input if name and axes.get(name) is not None)
    boundary.update(value.name for value in graph.model.graph.output)
    per_image = {name: _value_bytes(graph, name) // batch for name in boundary}
    weights = sum(int(array.nbytes) for array in graph.constants.values())
    batched_traffic = sum(2 * batch * s for s in per_image.values() if 2 * batch * s > cache_bytes)
    image_traffic = sum(2 * batch * s for s in per_image.values() if 2 * s > cache_bytes)
    largest = max(per_image.values(), default=0)
    weight_traffic = (batch - 1) * weights if weights + 2 * largest > cache_bytes else 0
    return {
        "saving_bytes": batched_traffic - image_traffic - weight_traffic,
        "batched_activation_bytes": batched_traffic,
        "per_image_activation_bytes": image_traffic,
        "weight_reread_bytes": weight_traffic,
        "largest_activation_bytes": largest,
        "weight_bytes": weights,
        "cache_bytes": cache_bytes,
    }


def host_cache_bytes() -> int | None:
    """Size of this machine's largest CPU cache (Linux sysfs), None when unknown."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if (index / "type").read_text().strip() == "Instruction":
                continue
            text = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes) if sizes else None


def target_cache_bytes(target) -> int | None:
    """The last-level cache the model uses for ``target``: its spec's ``[roofline]
    onchip_memory_kb``, else this machine's (sysfs) for a target that runs here."""
    kb = target.roofline.get("onchip_memory_kb")
    if kb:
        return int(float(kb) * 1024)
    return host_cache_bytes() if target.runs_locally else None


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def plan(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]], cache_bytes: int | None, mode: str = "auto") -> BatchPlan:
    """Decide whether ``model`` at ``shapes`` runs image by image (``mode``: auto, on, off).

    ``cache_bytes`` is the target's last-level cache (None: unknown, so ``auto`` keeps the batch).
    ``on`` splits whenever the graph is proven per-sample, and raises OptionError naming the node
    otherwise; ``auto`` also needs the cache model to predict a saving.
    """
    if mode not in MODES:
        raise OptionError(f"--per-image {mode}: expected one of {', '.join(MODES)}")
    shapes = {name: [int(d) for d in dims] for name, dims in shapes.items()}
    firsts = {dims[0] for dims in shapes.values() if dims}
    batch = firsts.pop() if len(firsts) == 1 else None
    keep = BatchPlan(None, model, shapes)
    if mode == "off" or batch is None or batch < 2:
        if mode == "on" and (batch is None or batch < 2):
            raise OptionError("--per-image on: the inputs have no common batch size above 1")
        return keep
    try:
        graph, axes = per_sample_axes(model, shapes, batch)
    except NotPerSample as exc:
        if mode == "on":
            raise OptionError(f"--per-image on: the model cannot run image by image: {exc}") from exc
        keep.note = f"batch {batch} runs batched: the graph is not proven to act image by image ({exc})"
        return keep
    if mode == "auto":
        if cache_bytes is None:
            keep.note = f"batch {batch} runs batched: the target's cache size is unknown, so per-image execution is not modelled"
            return keep
        estimate = predicted_saving(graph, axes, batch, cache_bytes)
        why = (f"batched activations from DRAM {_mb(estimate['batched_activation_bytes'])}, per image "
               f"{_mb(estimate['per_image_activation_bytes'])} plus {_mb(estimate['weight_reread_bytes'])} of weights "
               f"read again, with a {_mb(cache_bytes)} cache")
        if estimate["saving_bytes"] <= 0:
            keep.note = f"batch {batch} runs batched: the cache model predicts no saving image by image ({why})"
            return keep
        reason = f"the cache model predicts {_mb(estimate['saving_bytes'])} less memory traffic ({why})"
    else:
        reason = "--per-image on"
    single = single_image_model(graph, axes, batch)
    one = {name: [1, *dims[1:]] for name, dims in shapes.items()}
    return BatchPlan(batch, single, one, f"batch {batch} runs image by image (the batch-1 network called {batch} times): {reason}")


def wrap_per_image(mod, batch: int, target):
    """``mod`` (a scheduled batch-1 module) with its ``main`` renamed ``per_image`` and a new
    ``main`` taking batch ``batch``: slice every input along axis 0, call ``per_image`` on each
    image, concatenate each output along axis 0. Returns ``(module, {kernel: rule})`` for the new
    slice and concat kernels, legalized and scheduled by the injective rule."""
    import tvm
    from tvm import relax, tirx

    from targets.lowering.schedules.injective import Injective

    image = mod["main"]
    rest = tvm.IRModule({gvar: func for gvar, func in mod.functions_items() if gvar.name_hint != "main"}, attrs=mod.attrs)
    builder = relax.BlockBuilder(rest)
    # Public, so no pass treats it as dead before main calls it.
    callee = builder.add_func(image.with_attr("global_symbol", "per_image"), "per_image")
    params = [relax.Var(p.name, relax.TensorType([batch, *list(p.ty.shape)[1:]], p.ty.dtype)) for p in image.params]
    with builder.function("main", params, attrs={"num_input": len(params)}):
        with builder.dataflow():
            results = []
            for i in range(batch):
                images = [builder.emit(relax.op.strided_slice(p, axes=[0], begin=[i], end=[i + 1])) for p in params]
                results.append(builder.emit(relax.Call(callee, images)))
            if isinstance(image.ret_ty, relax.TupleType):
                fields = [
                    builder.emit(relax.op.concat([builder.emit(relax.TupleGetItem(r, k)) for r in results], axis=0))
                    for k in range(len(image.ret_ty.fields))
                ]
                output = builder.emit_output(relax.Tuple(fields))
            else:
                output = builder.emit_output(relax.op.concat(results, axis=0))
        builder.emit_func_output(output)
    wrapped = builder.get()
    before = {gvar.name_hint for gvar in wrapped.get_global_vars()}
    with target:
        wrapped = relax.transform.LegalizeOps()(wrapped)
        wrapped = relax.transform.AnnotateTIROpPattern()(wrapped)
    rule, added = Injective(), {}
    for gvar, func in list(wrapped.functions_items()):
        if not isinstance(func, tirx.PrimFunc) or gvar.name_hint in before:
            continue
        with target:
            sch = rule.apply(func, target, False)
        if sch is not None:
            wrapped[gvar] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
            added[gvar.name_hint] = rule.name
    return wrapped, added
