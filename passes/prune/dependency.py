"""Channel dependency analysis: which channels of which tensors must be removed together.

Removing output channel ``c`` of a Conv is only correct when every tensor that carries ``c`` loses
it too: the BatchNorm/ReLU/pool after it, the other branch of a residual ``Add`` (whose channel
``c`` is summed with it), the depthwise Conv that filters it, the ``Concat`` slot it lands in, the
``Gemm`` features it becomes after a ``Flatten``, and finally the input channel ``c`` of every
consumer that reads it. This module finds those couplings.

Model (Torch-Pruning's DepGraph, at the level of single channels)
-----------------------------------------------------------------
An *atom* is one channel of one activation tensor: ``(value, index)`` along the value's channel
axis. Every operator the analysis understands states which atoms of its inputs and outputs are the
same channel (a *tie*). The ties form an undirected ``networkx.Graph`` over atoms (a throwaway view,
discarded after the analysis); each connected component is one *unit*: a set of atoms that can only
be removed all together. Units that touch the same tensors (same set of values, same atom count in
each) form a :class:`ChannelGroup`: one prunable "layer" with ``size`` units.

Ties per operator (channel axis ``a``; ``C`` channels):

- **Conv** (group 1), **Gemm**, **MatMul** with a constant weight are *sources* (their output
  channels are new: weight rows, bias) and *sinks* (their input channels only select weight
  columns); no tie crosses them.
- **grouped / depthwise Conv** (``g > 1``, ``C_in/g = k`` inputs and ``M/g = m`` outputs per
  group): input atoms ``j*k .. j*k+k-1`` and output atoms ``j*m .. j*m+m-1`` are one unit (group
  ``j``). Removing a unit removes a whole group; ``group`` becomes ``g - removed``. A depthwise Conv
  (``k = 1``) is the common case: channel ``c`` passes through.
- **BatchNormalization**, element-wise unary ops (Relu, Clip, Sigmoid, ...), pools, Pad (no padding
  on ``a``), Resize (scale 1 on ``a``), Identity/Dropout/Cast: output atom ``c`` = input atom ``c``.
- **Add/Sub/Mul/Div/...** (numpy broadcasting): every input whose dim on the (right-aligned) channel
  axis equals ``C`` is tied atom by atom to the output - a residual ``Add`` ties the channels of
  both branches. Constant inputs with ``C`` entries there are sliced; size-1 dims broadcast.
- **Concat** on ``a``: input ``i`` atom ``c`` = output atom ``offset_i + c``; on another axis: all
  inputs and the output tied atom by atom. **Split** is the mirror image.
- **Flatten** (or a **Reshape** that is a flatten, static shapes) of ``[.., C, rest..]`` starting at
  axis ``f <= a``: input atom ``c`` = output features ``(o*C + c)*inner + j`` for every outer index
  ``o < prod(dims[f:a])`` and ``j < inner = prod(dims[a+1:])`` - e.g. ``[N, C, H, W] -> [N, C*H*W]``
  maps channel ``c`` to features ``c*H*W .. (c+1)*H*W - 1`` of the Gemm that reads it.

Eligibility. A value is *blocked* (with a reason) when its channels cannot be removed: it is a
graph input or output, one of its readers is an op the analysis does not understand (or uses it in
an unsupported way, e.g. a Reshape with an unknown mapping, LayerNormalization over the channels),
or a tied tensor comes from such an op. A group that touches any blocked value is ineligible and
keeps its reason; it is never pruned. So an unknown operator can cost pruning opportunities, never
correctness.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import networkx as nx
import numpy as np

from compiler.ir import Model, Node, Value, constant_array

__all__ = [
    "ChannelGroup",
    "Member",
    "analyze",
    "node_label",
    "SOURCE_OPS",
    "THROUGH_OPS",
    "ELEMENTWISE_OPS",
    "POOL_OPS",
]

ONNX_DOMAINS = ("", "ai.onnx")

#: Ops that create channels (weight rows) and consume them (weight columns).
SOURCE_OPS = frozenset({"Conv", "Gemm", "MatMul"})
#: Per-element unary ops: channel c of the output depends only on channel c of the first input.
#: Extra inputs (Clip min/max, Dropout ratio) must be absent or constant scalars.
UNARY_OPS = frozenset(
    """Abs Cast Ceil Celu Clip Cos Dropout Elu Erf Exp Floor Gelu HardSigmoid HardSwish Identity
    LeakyRelu Log Mish Neg Reciprocal Relu Round Selu Shrink Sigmoid Sign Sin Softplus Softsign Sqrt
    Tanh ThresholdedRelu""".split()
)
#: Broadcasting element-wise ops with several inputs.
ELEMENTWISE_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Mean", "Sum", "PRelu", "Pow"})
#: Pools: work on spatial axes only (channel axis 1 passes through).
POOL_OPS = frozenset(
    {"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
)
#: Every op that may sit on a tied channel path; the surgery (``surgery.py``) rewrites exactly these.
THROUGH_OPS = UNARY_OPS | ELEMENTWISE_OPS | POOL_OPS | frozenset(
    {"BatchNormalization", "Concat", "Split", "Flatten", "Reshape", "Pad", "Resize"}
)


def node_label(node: Node) -> str:
    """A human name for a node: its name, else its first output's name."""
    return node.name or (node.outputs[0].name if node.outputs else node.op_type)


def dims_of(value: Value | None) -> tuple[int, ...] | None:
    """Static dims of ``value``, or None when its shape is missing or symbolic."""
    if value is None or value.shape is None:
        return None
    dims = tuple(value.shape)
    if not all(isinstance(d, int) for d in dims):
        return None
    return dims  # type: ignore[return-value]


def int_attr(node: Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_int()


def ints_attr(node: Node, name: str) -> list[int] | None:
    attr = node.attributes.get(name)
    return None if attr is None else list(attr.as_ints())


def _input(node: Node, index: int) -> Value | None:
    return node.inputs[index] if index < len(node.inputs) else None


def _origin(value: Value) -> str:
    """``'x' (a graph input)`` / ``'x' (from Relu 'r')``: where a tensor's channels come from."""
    producer = value.producer()
    if producer is None:
        where = "a graph input" if value.is_graph_input() else "no producer"
        return f"'{value.name}' ({where})"
    return f"'{value.name}' (from {producer.op_type} '{node_label(producer)}')"


@dataclasses.dataclass(frozen=True)
class Member:
    """One tensor of a group: its channel axis and, per unit, the channel indices it covers."""

    value: Value
    axis: int
    units: tuple[np.ndarray, ...]  # units[u] = sorted channel indices of this value in unit u

    @property
    def channels(self) -> int:
        return sum(len(u) for u in self.units)


@dataclasses.dataclass
class ChannelGroup:
    """Coupled channels: ``size`` units, each removable only as a whole across all ``members``.

    Attributes:
        name: the first source node's name (e.g. ``/layer1/layer1.0/conv1/Conv``).
        members: the tensors carrying these channels, in graph order.
        sources: Conv/Gemm/MatMul nodes whose output channels these are.
        sinks: Conv (group 1)/Gemm/MatMul nodes that read them as input channels.
        reason: why the group cannot be pruned, or None when it is eligible.
    """

    name: str
    members: list[Member]
    sources: list[Node]
    sinks: list[Node]
    reason: str | None = None

    @property
    def size(self) -> int:
        return len(self.members[0].units)

    @property
    def eligible(self) -> bool:
        return self.reason is None

    @property
    def primary(self) -> Member:
        """The member the group is counted in: the first source output (else the first member)."""
        outputs = {id(node.outputs[0]) for node in self.sources}
        return next((m for m in self.members if id(m.value) in outputs), self.members[0])

    @property
    def unit_width(self) -> int:
        """Channels of the primary tensor per unit (1, or k/m for a grouped Conv)."""
        return len(self.primary.units[0])

    def removal(self, units: Iterable[int]) -> dict[Value, np.ndarray]:
        """Channel indices to delete from each member tensor when ``units`` are removed."""
        chosen = sorted(set(int(u) for u in units))
        out: dict[Value, np.ndarray] = {}
        for member in self.members:
            if chosen:
                out[member.value] = np.sort(np.concatenate([member.units[u] for u in chosen]))
        return out


class _Analysis:
    """One sweep over the graph in topological order, collecting ties, blocks and roles."""

    def __init__(self, model: Model):
        self.model = model
        self.view = nx.Graph()  # atoms (value, index) with tie edges; discarded after analyze()
        self.axis: dict[Value, int] = {}
        self.channels: dict[Value, int] = {}
        self.order: dict[Value, int] = {}
        self.blocked: dict[Value, str] = {}
        self.accepted: set[tuple[int, int]] = set()  # (id(node), input index) understood
        self.sources: dict[Value, Node] = {}
        self.sinks: dict[Value, list[Node]] = {}

    # -- bookkeeping -----------------------------------------------------------------------------
    def member(self, value: Value, axis: int, channels: int) -> bool:
        """Make ``value`` a member with ``channels`` atoms on ``axis`` (False on a conflict)."""
        if value in self.axis:
            if self.axis[value] != axis or self.channels[value] != channels:
                self.block(value, f"'{value.name}' would need two different channel axes")
                return False
            return True
        self.axis[value] = axis
        self.channels[value] = channels
        self.order[value] = len(self.order)
        self.view.add_nodes_from((value, i) for i in range(channels))
        return True

    def force(self, value: Value, axis: int, channels: int, reason: str) -> bool:
        """Like :meth:`member` for a tensor that must shrink with its neighbours; a value that is
        not already a member (its channels have no removable origin) joins *blocked*."""
        if value in self.axis:
            return self.member(value, axis, channels)
        self.member(value, axis, channels)
        self.block(value, reason)
        return True

    def block(self, value: Value, reason: str) -> None:
        self.blocked.setdefault(value, reason)

    def tie(self, a: Value, i: int, b: Value, j: int) -> None:
        self.view.add_edge((a, i), (b, j))

    def tie_identity(self, a: Value, b: Value) -> None:
        self.view.add_edges_from(((a, i), (b, i)) for i in range(self.channels[a]))

    def accept(self, node: Node, index: int) -> None:
        self.accepted.add((id(node), index))

    def block_members(self, node: Node, reason: str) -> None:
        for value in node.inputs:
            if value is not None and value in self.axis:
                self.block(value, reason)

    # -- the sweep -------------------------------------------------------------------------------
    def run(self) -> None:
        for node in _topological(self.model):
            if node.domain not in ONNX_DOMAINS:
                self.block_members(node, f"{node.domain}::{node.op_type} '{node_label(node)}' is not understood")
                continue
            handler = getattr(self, f"_op_{node.op_type}", None)
            if handler is None:
                if node.op_type in UNARY_OPS:
                    handler = self._unary
                elif node.op_type in ELEMENTWISE_OPS:
                    handler = self._elementwise
                elif node.op_type in POOL_OPS:
                    handler = self._pool
            if handler is None:
                self.block_members(
                    node, f"{node.op_type} '{node_label(node)}' reads the channels and is not understood by the analysis"
                )
                continue
            handler(node)
        self._finish()

    def _finish(self) -> None:
        """Block graph outputs and values read by anything that did not accept them."""
        graph = self.model.graph
        for value in list(self.axis):
            if value.is_graph_output():
                self.block(value, f"'{value.name}' is a graph output (the signature is never pruned)")
            if value.is_graph_input():
                self.block(value, f"'{value.name}' is a graph input")
            for use in value.uses():
                node, index = use.node, use.idx
                if node.graph is not graph:
                    self.block(value, f"'{value.name}' is read inside a subgraph ({node.op_type} '{node_label(node)}')")
                elif (id(node), index) not in self.accepted and value not in self.blocked:
                    self.block(
                        value,
                        f"{node.op_type} '{node_label(node)}' reads '{value.name}' in a way the analysis does not understand",
                    )

    # -- producers and consumers with weights ------------------------------------------------------
    def _weighted(self, node: Node, weight: np.ndarray | None, bias_index: int) -> bool:
        bias = _input(node, bias_index)
        if weight is None:
            self.block_members(node, f"{node.op_type} '{node_label(node)}' has a weight that is not a constant")
            return False
        if bias is not None and constant_array(bias) is None:
            self.block_members(node, f"{node.op_type} '{node_label(node)}' has a bias that is not a constant")
            return False
        return True

    def _op_Conv(self, node: Node) -> None:
        x, y = node.inputs[0], node.outputs[0]
        weight = constant_array(_input(node, 1))
        if not self._weighted(node, weight, 2) or weight.ndim < 3:
            return
        group = int_attr(node, "group", 1)
        out_channels, per_group_in = weight.shape[:2]
        self.member(y, 1, out_channels)
        self.sources[y] = node
        label = node_label(node)
        if group == 1:
            if x in self.axis:
                if self.axis[x] != 1:
                    self.block(x, f"Conv '{label}' reads '{x.name}' on another channel axis")
                    return
                self.accept(node, 0)
                self.sinks.setdefault(x, []).append(node)
            return
        # Grouped / depthwise: group j couples its k inputs and m outputs into one unit.
        per_group_out = out_channels // group
        self.force(x, 1, group * per_group_in, f"grouped Conv '{label}' reads {_origin(x)}, whose channels cannot be removed")
        if self.axis.get(x) != 1:
            self.block(y, f"grouped Conv '{label}' reads '{x.name}' on another channel axis")
            return
        self.accept(node, 0)
        for j in range(group):
            anchor = (y, j * per_group_out)
            for i in range(j * per_group_in, (j + 1) * per_group_in):
                self.view.add_edge(anchor, (x, i))
            for o in range(j * per_group_out + 1, (j + 1) * per_group_out):
                self.view.add_edge(anchor, (y, o))

    def _op_Gemm(self, node: Node) -> None:
        a, y = node.inputs[0], node.outputs[0]
        weight = constant_array(_input(node, 1))
        if not self._weighted(node, weight, 2) or weight.ndim != 2:
            return
        features = weight.shape[0] if int_attr(node, "transB", 0) else weight.shape[1]
        self.member(y, 1, features)
        self.sources[y] = node
        if a in self.axis:
            if int_attr(node, "transA", 0) or self.axis[a] != 1:
                self.block(a, f"Gemm '{node_label(node)}' reads '{a.name}' transposed")
                return
            self.accept(node, 0)
            self.sinks.setdefault(a, []).append(node)

    def _op_MatMul(self, node: Node) -> None:
        a, b, y = node.inputs[0], node.inputs[1], node.outputs[0]
        weight = constant_array(b)
        if b in self.axis or weight is None or weight.ndim != 2:
            self.block_members(node, f"MatMul '{node_label(node)}' has no constant 2-D weight")
            return
        out_dims = dims_of(y)
        if out_dims is None or len(out_dims) < 2:
            self.block_members(node, f"MatMul '{node_label(node)}' has no static output rank")
            return
        self.member(y, len(out_dims) - 1, weight.shape[1])
        self.sources[y] = node
        if a in self.axis:
            a_dims = dims_of(a)
            if a_dims is None or self.axis[a] != len(a_dims) - 1:
                self.block(a, f"MatMul '{node_label(node)}' reads '{a.name}' on another axis than its channels")
                return
            self.accept(node, 0)
            self.sinks.setdefault(a, []).append(node)

    # -- pass-through ops --------------------------------------------------------------------------
    def _through(self, node: Node, required_axis: int | None = None) -> Value | None:
        """Tie output 0 to input 0 atom by atom; returns the input when it is a member."""
        x, y = node.inputs[0], node.outputs[0]
        if x not in self.axis:
            return None
        if required_axis is not None and self.axis[x] != required_axis:
            self.block(x, f"{node.op_type} '{node_label(node)}' works on another axis than the channels of '{x.name}'")
            return None
        for extra in node.outputs[1:]:
            if extra.uses() or extra.is_graph_output():
                self.block(x, f"{node.op_type} '{node_label(node)}' has a second output in use")
                return None
        self.member(y, self.axis[x], self.channels[x])
        self.tie_identity(x, y)
        self.accept(node, 0)
        return x

    def _unary(self, node: Node) -> None:
        for extra in node.inputs[1:]:
            array = constant_array(extra) if extra is not None else np.zeros(())
            if array is None or array.size != 1:
                self.block_members(node, f"{node.op_type} '{node_label(node)}' has a non-scalar parameter input")
                return
        self._through(node)

    def _pool(self, node: Node) -> None:
        self._through(node, required_axis=1)

    def _op_BatchNormalization(self, node: Node) -> None:
        x = node.inputs[0]
        if x not in self.axis:
            return
        params = [constant_array(v) for v in node.inputs[1:5]]
        if len(node.inputs) < 5 or any(p is None or p.shape != (self.channels[x],) for p in params):
            self.block(x, f"BatchNormalization '{node_label(node)}' has statistics that are not constant per channel")
            return
        self._through(node, required_axis=1)

    def _op_Pad(self, node: Node) -> None:
        x = node.inputs[0]
        if x not in self.axis:
            return
        rank = len(dims_of(x) or ())
        pads = constant_array(_input(node, 1)) if _input(node, 1) is not None else ints_attr(node, "pads")
        axes_value = _input(node, 3)
        axes = list(range(rank)) if axes_value is None else constant_array(axes_value)
        if pads is None or axes is None or rank == 0:
            self.block(x, f"Pad '{node_label(node)}' has pads that are not constant")
            return
        pads = [int(p) for p in np.asarray(pads).ravel()]
        axes = [int(a) % rank for a in np.asarray(axes).ravel()]
        channel = self.axis[x]
        if channel in axes:
            k = axes.index(channel)
            if pads[k] != 0 or pads[k + len(axes)] != 0:
                self.block(x, f"Pad '{node_label(node)}' pads the channel axis")
                return
        self._through(node)

    def _op_Resize(self, node: Node) -> None:
        x = node.inputs[0]
        if x not in self.axis:
            return
        if "axes" in node.attributes:
            self.block(x, f"Resize '{node_label(node)}' with an axes attribute")
            return
        scales, sizes = _input(node, 2), _input(node, 3)
        channel = self.axis[x]
        scale_array = constant_array(scales) if scales is not None else None
        size_array = constant_array(sizes) if sizes is not None else None
        if scale_array is not None and scale_array.size:
            if float(scale_array[channel]) != 1.0:
                self.block(x, f"Resize '{node_label(node)}' scales the channel axis")
                return
        elif size_array is None or not size_array.size:
            self.block(x, f"Resize '{node_label(node)}' has no constant scales or sizes")
            return
        self._through(node)

    def _elementwise(self, node: Node) -> None:
        members = [v for v in node.inputs if v is not None and v in self.axis]
        if not members:
            return
        y = node.outputs[0]
        out_dims = dims_of(y)
        label = f"{node.op_type} '{node_label(node)}'"
        if out_dims is None:
            self.block_members(node, f"{label} has no static output shape")
            return
        rank = len(out_dims)
        first = members[0]
        out_axis = self.axis[first] + rank - len(dims_of(first) or ())
        channels = self.channels[first]
        if out_dims[out_axis] != channels:
            self.block_members(node, f"{label} broadcasts the channels of '{first.name}'")
            return
        plan: list[tuple[int, Value, int]] = []  # (input index, value, aligned axis)
        for index, value in enumerate(node.inputs):
            if value is None:
                continue
            value_dims = dims_of(value) if value.shape is not None else None
            if value_dims is None and value.const_value is not None:
                value_dims = tuple(value.const_value.shape)
            if value_dims is None:
                self.block_members(node, f"{label}: shape of '{value.name}' unknown")
                return
            aligned = out_axis - (rank - len(value_dims))
            size = value_dims[aligned] if aligned >= 0 else 1
            if value in self.axis:
                if self.axis[value] != aligned or self.channels[value] != channels:
                    self.block_members(node, f"{label} combines '{value.name}' on another channel axis")
                    return
                plan.append((index, value, aligned))
            elif size == 1:
                continue  # broadcast along the channels: nothing to slice
            elif size != channels:
                self.block_members(node, f"{label}: '{value.name}' has {size} entries on the channel axis")
                return
            elif constant_array(value) is not None:
                continue  # a per-channel constant: the surgery slices it
            else:
                self.force(value, aligned, channels, f"{label} adds {_origin(value)}, whose channels cannot be removed")
                plan.append((index, value, aligned))
        self.member(y, out_axis, channels)
        for index, value, _ in plan:
            self.tie_identity(value, y)
            self.accept(node, index)

    def _op_Concat(self, node: Node) -> None:
        inputs = [v for v in node.inputs if v is not None]
        if not any(v in self.axis for v in inputs):
            return
        y = node.outputs[0]
        out_dims = dims_of(y)
        label = f"Concat '{node_label(node)}'"
        if out_dims is None:
            self.block_members(node, f"{label} has no static output shape")
            return
        rank = len(out_dims)
        concat_axis = int_attr(node, "axis", 0) % rank
        first = next(v for v in inputs if v in self.axis)
        channel = self.axis[first]
        if concat_axis == channel:
            offset = 0
            self.member(y, channel, out_dims[channel])
            for index, value in enumerate(node.inputs):
                value_dims = dims_of(value)
                if value_dims is None:
                    self.block_members(node, f"{label}: shape of '{value.name}' unknown")
                    return
                count = value_dims[channel]
                self.force(value, channel, count, f"{label} joins {_origin(value)}, whose channels cannot be removed")
                for c in range(count):
                    self.tie(value, c, y, offset + c)
                self.accept(node, index)
                offset += count
            return
        channels = self.channels[first]
        self.member(y, channel, channels)
        for index, value in enumerate(node.inputs):
            self.force(value, channel, channels, f"{label} stacks {_origin(value)}, whose channels cannot be removed")
            self.tie_identity(value, y)
            self.accept(node, index)

    def _op_Split(self, node: Node) -> None:
        x = node.inputs[0]
        if x not in self.axis:
            return
        x_dims = dims_of(x)
        sizes = [dims_of(out) for out in node.outputs]
        if x_dims is None or any(s is None for s in sizes):
            self.block(x, f"Split '{node_label(node)}' has no static output shapes")
            return
        channel = self.axis[x]
        split_axis = int_attr(node, "axis", 0) % len(x_dims)
        offset = 0
        for out, out_dims in zip(node.outputs, sizes):
            count = out_dims[channel]  # type: ignore[index]
            self.member(out, channel, count)
            if split_axis == channel:
                for c in range(count):
                    self.tie(x, offset + c, out, c)
                offset += count
            else:
                self.tie_identity(x, out)
        self.accept(node, 0)

    def _flatten_like(self, node: Node, start: int, out_rank: int) -> None:
        """Tie ``x``'s channel c to the flattened features (o*C + c)*inner + j (module docstring)."""
        x, y = node.inputs[0], node.outputs[0]
        dims = dims_of(x)
        channel = self.axis[x]
        if dims is None or start > channel:
            self.block(x, f"{node.op_type} '{node_label(node)}' merges the channels into the batch dims")
            return
        channels = self.channels[x]
        outer = math.prod(dims[start:channel])
        inner = math.prod(dims[channel + 1 :])
        self.member(y, out_rank - 1, outer * channels * inner)
        for o in range(outer):
            for c in range(channels):
                base = (o * channels + c) * inner
                self.view.add_edges_from(((x, c), (y, base + j)) for j in range(inner))
        self.accept(node, 0)

    def _op_Flatten(self, node: Node) -> None:
        x = node.inputs[0]
        if x not in self.axis:
            return
        rank = len(dims_of(x) or ())
        if rank == 0:
            self.block(x, f"Flatten '{node_label(node)}' has an input of unknown rank")
            return
        self._flatten_like(node, int_attr(node, "axis", 1) % rank if rank else 1, 2)

    def _op_Reshape(self, node: Node) -> None:
        x, y = node.inputs[0], node.outputs[0]
        if x not in self.axis:
            return
        x_dims, y_dims = dims_of(x), dims_of(y)
        label = f"Reshape '{node_label(node)}'"
        if x_dims is None or y_dims is None or constant_array(_input(node, 1)) is None:
            self.block(x, f"{label} with unknown mapping (shapes or target shape not static)")
            return
        self.accept(node, 1)
        if x_dims == y_dims:
            self._through(node)
            return
        start = len(y_dims) - 1
        if y_dims[:start] == x_dims[:start] and y_dims[start] == math.prod(x_dims[start:]):
            self._flatten_like(node, start, len(y_dims))
            return
        self.block(x, f"{label} with unknown mapping ({list(x_dims)} -> {list(y_dims)})")


def _topological(model: Model) -> list[Node]:
    """The main graph's nodes in a topological order (the stored order when it already is one)."""
    graph = model.graph
    nodes = list(graph)
    position = {id(n): i for i, n in enumerate(nodes)}
    dag = nx.DiGraph()
    dag.add_nodes_from(range(len(nodes)))
    for i, node in enumerate(nodes):
        for value in node.inputs:
            producer = value.producer() if value is not None else None
            if producer is not None and id(producer) in position:
                dag.add_edge(position[id(producer)], i)
    return [nodes[i] for i in nx.lexicographical_topological_sort(dag)]


def analyze(model: Model) -> list[ChannelGroup]:
    """The channel groups of ``model``'s main graph, in graph order (eligible and not).

    Needs inferred shapes (Flatten/Reshape/Concat/Split mappings) and lifted constants (weights are
    read from initializers). Never raises on unknown operators: they block their groups.
    """
    analysis = _Analysis(model)
    analysis.run()
    order = analysis.order
    buckets: dict[tuple, list[set]] = {}
    for component in nx.connected_components(analysis.view):
        counts: dict[Value, int] = {}
        for value, _ in component:
            counts[value] = counts.get(value, 0) + 1
        key = tuple(sorted((order[v], n) for v, n in counts.items()))
        buckets.setdefault(key, []).append(component)
    values_by_order = {i: v for v, i in order.items()}
    groups: list[ChannelGroup] = []
    for key, components in buckets.items():
        values = [values_by_order[i] for i, _ in key]
        per_unit = [
            {v: np.array(sorted(i for w, i in comp if w is v), dtype=np.int64) for v in values} for comp in components
        ]
        per_unit.sort(key=lambda unit: int(unit[values[0]][0]))
        members = [
            Member(v, analysis.axis[v], tuple(unit[v] for unit in per_unit)) for v in values
        ]
        sources = [analysis.sources[v] for v in values if v in analysis.sources]
        sinks = [node for v in values for node in analysis.sinks.get(v, [])]
        reason = next((analysis.blocked[v] for v in values if v in analysis.blocked), None)
        if reason is None and not sources:
            reason = "no Conv/Gemm/MatMul with constant weights produces these channels"
        name = node_label(sources[0]) if sources else values[0].name or "?"
        groups.append(ChannelGroup(name, members, sources, sinks, reason))
    groups.sort(key=lambda g: order[g.members[0].value])
    # A Split/Concat can give one source several groups: name each by its channel range too.
    names = [g.name for g in groups]
    for group in groups:
        if names.count(group.name) > 1:
            atoms = np.concatenate(group.primary.units)
            group.name = f"{group.name}[{int(atoms.min())}:{int(atoms.max()) + 1}]"
    return groups


def value_axes(groups: Sequence[ChannelGroup]) -> dict[Value, int]:
    """Channel axis of every member tensor of ``groups``."""
    return {m.value: m.axis for g in groups for m in g.members}
