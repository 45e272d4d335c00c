"""Channel removal: rewrite the graph so that the chosen channels of every member tensor disappear.

Input: ``removed`` maps each member tensor (from :mod:`passes.prune.dependency`) to the sorted
channel indices it loses along its channel axis. The analysis guarantees the choice is consistent
(every tied atom goes together), so each node is rewritten locally from what its own inputs and
outputs lose:

==========================  ====================================================================
node                        rewrite (``np.delete`` on a *new* array; the old tensor is untouched)
==========================  ====================================================================
Conv, group 1               ``W[out_removed, :]``, ``W[:, in_removed]``, ``b[out_removed]``
Conv, group g > 1           ``W[out_removed, :]``, ``b[out_removed]``; ``group -= |in_removed| / k``
Gemm                        B rows/columns by ``transB``; C's last axis when it has N entries
MatMul                      ``B[in_removed, :]``, ``B[:, out_removed]``
BatchNormalization          scale, B, mean, var
element-wise                a constant input with C entries on the (aligned) channel axis
Split (on the channels)     new split sizes (an input from opset 13, else the attribute)
Reshape                     the target shape's channel/feature entry, unless it is 0 or -1
Resize with ``sizes``       the channel entry of ``sizes``
others (pools, unary, ...)  nothing: only the shapes of their outputs change
==========================  ====================================================================

Finally every member tensor's shape loses the removed count on its channel axis (so
SHAPES_INFERRED still holds) and initializers nobody reads any more are deleted.
"""

from __future__ import annotations

import numpy as np

from compiler.ir import Model, Node, Value, constant_array, ir
from passes.canonicalize._graph_utils import new_initializer, remove_unused_initializers, unique_name, used_names
from passes.prune.dependency import (
    ONNX_DOMAINS,
    SOURCE_OPS,
    THROUGH_OPS,
    dims_of,
    int_attr,
    node_label,
)

__all__ = ["remove_channels"]


class _Rewriter:
    def __init__(self, model: Model, removed: dict[Value, np.ndarray], axes: dict[Value, int]):
        self.model = model
        self.graph = model.graph
        self.removed = removed
        self.axes = axes
        self.taken = used_names(model.graph)
        self.replaced: list[Value] = []

    def lost(self, value: Value | None) -> np.ndarray | None:
        if value is None:
            return None
        indices = self.removed.get(value)
        return indices if indices is not None and len(indices) else None

    def set_input(self, node: Node, index: int, array: np.ndarray, suffix: str) -> None:
        """Point input ``index`` of ``node`` at a new initializer holding ``array``."""
        old = node.inputs[index] if index < len(node.inputs) else None
        stem = (old.name if old is not None and old.name else node_label(node)) + suffix
        value = new_initializer(self.graph, unique_name(stem, self.taken), array)
        if index >= len(node.inputs):
            node.resize_inputs(index + 1)
        node.replace_input_with(index, value)
        if old is not None:
            self.replaced.append(old)

    def run(self) -> None:
        for node in list(self.graph):
            touched = [v for v in (*node.inputs, *node.outputs) if self.lost(v) is not None]
            if not touched:
                continue
            known = node.domain in ONNX_DOMAINS and (node.op_type in SOURCE_OPS or node.op_type in THROUGH_OPS)
            if not known:
                # The analysis blocks every group an unknown op touches: reaching here is a bug.
                raise RuntimeError(f"channel removal reached {node.op_type} '{node_label(node)}', which the analysis blocks")
            getattr(self, f"_op_{node.op_type}", self._elementwise_constants)(node)
        for value, indices in self.removed.items():
            if len(indices):
                dims = list(value.shape)
                dims[self.axes[value]] = dims[self.axes[value]] - len(indices)
                if dims[self.axes[value]] <= 0:
                    raise RuntimeError(f"channel removal would leave '{value.name}' without channels")
                value.shape = ir.Shape(dims)
        remove_unused_initializers(self.replaced)

    # -- weighted ops ------------------------------------------------------------------------------
    def _op_Conv(self, node: Node) -> None:
        out_lost, in_lost = self.lost(node.outputs[0]), self.lost(node.inputs[0])
        weight = constant_array(node.inputs[1])
        new = weight
        group = int_attr(node, "group", 1)
        if out_lost is not None:
            new = np.delete(new, out_lost, axis=0)
        if in_lost is not None:
            if group == 1:
                new = np.delete(new, in_lost, axis=1)
            else:
                per_group_in = weight.shape[1]
                gone, rest = divmod(len(in_lost), per_group_in)
                if rest:
                    raise RuntimeError(f"grouped Conv '{node_label(node)}' would lose part of a group")
                node.attributes["group"] = ir.AttrInt64("group", group - gone)
        if new is not weight:
            self.set_input(node, 1, new, "_pruned")
        bias = constant_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        if bias is not None and out_lost is not None:
            self.set_input(node, 2, np.delete(bias, out_lost, axis=0), "_pruned")

    def _op_Gemm(self, node: Node) -> None:
        out_lost, in_lost = self.lost(node.outputs[0]), self.lost(node.inputs[0])
        weight = constant_array(node.inputs[1])
        trans_b = int_attr(node, "transB", 0)
        features = weight.shape[0] if trans_b else weight.shape[1]
        new = weight
        if out_lost is not None:
            new = np.delete(new, out_lost, axis=0 if trans_b else 1)
        if in_lost is not None:
            new = np.delete(new, in_lost, axis=1 if trans_b else 0)
        if new is not weight:
            self.set_input(node, 1, new, "_pruned")
        bias = constant_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        if bias is not None and out_lost is not None and bias.ndim and bias.shape[-1] == features:
            self.set_input(node, 2, np.delete(bias, out_lost, axis=bias.ndim - 1), "_pruned")

    def _op_MatMul(self, node: Node) -> None:
        out_lost, in_lost = self.lost(node.outputs[0]), self.lost(node.inputs[0])
        weight = constant_array(node.inputs[1])
        new = weight
        if out_lost is not None:
            new = np.delete(new, out_lost, axis=1)
        if in_lost is not None:
            new = np.delete(new, in_lost, axis=0)
        if new is not weight:
            self.set_input(node, 1, new, "_pruned")

    # -- pass-through ops with per-channel constants -----------------------------------------------
    def _op_BatchNormalization(self, node: Node) -> None:
        lost = self.lost(node.outputs[0])
        for index in range(1, 5):
            self.set_input(node, index, np.delete(constant_array(node.inputs[index]), lost, axis=0), "_pruned")

    def _elementwise_constants(self, node: Node) -> None:
        """Slice constant inputs that carry one entry per output channel (PRelu slope, Add bias)."""
        y = node.outputs[0]
        lost = self.lost(y)
        if lost is None or node.op_type not in _ELEMENTWISE_WITH_CONSTANTS:
            return
        rank, axis = len(dims_of(y) or ()), self.axes[y]
        channels = dims_of(y)[axis] if dims_of(y) else None
        for index, value in enumerate(node.inputs):
            array = constant_array(value)
            if array is None or value in self.removed:
                continue
            aligned = axis - (rank - array.ndim)
            if aligned >= 0 and array.shape[aligned] == channels and channels != 1:
                self.set_input(node, index, np.delete(array, lost, axis=aligned), "_pruned")

    def _op_Split(self, node: Node) -> None:
        x = node.inputs[0]
        lost = self.lost(x)
        axis = self.axes[x]
        rank = len(dims_of(x))
        if lost is None or int_attr(node, "axis", 0) % rank != axis:
            return
        sizes = np.array([dims_of(out)[axis] for out in node.outputs], dtype=np.int64)
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        new_sizes = sizes - np.array([np.count_nonzero((lost >= lo) & (lost < hi)) for lo, hi in zip(bounds, bounds[1:])])
        opset = self.model.opset_imports.get("", self.model.opset_imports.get("ai.onnx", 1))
        if opset >= 13:
            node.attributes.pop("num_outputs", None)
            self.set_input(node, 1, new_sizes, "_split_pruned")
        else:
            node.attributes["split"] = ir.AttrInt64s("split", [int(s) for s in new_sizes])

    def _op_Reshape(self, node: Node) -> None:
        y = node.outputs[0]
        if self.lost(y) is None:
            return
        shape = constant_array(node.inputs[1])
        axis = self.axes[y]
        new_dim = dims_of(y)[axis] - len(self.lost(y))
        if int(shape[axis]) in (0, -1):
            return  # copied from the input / inferred: follows the pruned input by itself
        new = shape.copy()
        new[axis] = new_dim
        self.set_input(node, 1, new, "_pruned")

    def _op_Resize(self, node: Node) -> None:
        y = node.outputs[0]
        sizes = constant_array(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
        if sizes is None or not sizes.size or self.lost(y) is None:
            return
        new = sizes.copy()
        new[self.axes[y]] = dims_of(y)[self.axes[y]] - len(self.lost(y))
        self.set_input(node, 3, new, "_pruned")


_ELEMENTWISE_WITH_CONSTANTS = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Mean", "Sum", "PRelu", "Pow"})


def remove_channels(model: Model, removed: dict[Value, np.ndarray], axes: dict[Value, int]) -> None:
    """Delete ``removed[value]`` channels (along ``axes[value]``) from every member tensor.

    Mutates ``model`` in place (new initializers replace sliced ones; old ones are dropped when
    unused). ``removed`` must come from :meth:`ChannelGroup.removal` of eligible groups.
    """
    _Rewriter(model, removed, axes).run()
