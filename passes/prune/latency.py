"""Estimated time of a channel group as a function of its kept units (from ``ctx.cost_model``).

For group ``g`` with ``K`` units, keeping ``k`` of them keeps the fraction ``f = k / K`` of the
channels of every member tensor (units have the same width in each member). The nodes whose time
depends on ``f`` are those that read or write a member; each node's roofline work is scaled
rather than recomputed on a rewritten graph (cheap enough to tabulate every candidate ``k``):

- Conv (group 1) / Gemm / MatMul: ``MACs, ops *= f_out * f_in`` (a grouped Conv: ``f_out``, its
  per-group fan-in is fixed), weight bytes ``*= f_out * f_in``;
- every other op: ``ops *= f_out``; its constant inputs (BN statistics, biases) ``*= f_out``;
- activation bytes ``*= f`` for member tensors, unchanged otherwise;

then ``seconds = max(ops / peak, bytes / bandwidth) + overhead`` by the cost model itself
(:meth:`RooflineCostModel.time_node`). The table holds the other groups at full width (AIMET's
per-layer table assumption); the pass reports the final estimate from the real pruned graph.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable

from compiler.ir import Model, Node, Value, is_constant
from passes.prune.dependency import ChannelGroup, int_attr
from targets.cost_model import node_work

__all__ = ["group_time_table", "touching_nodes"]


def _nbytes(value: Value) -> int:
    shape = value.shape
    if shape is None and value.const_value is not None:
        shape = value.const_value.shape
    dtype = value.dtype if value.dtype is not None else (value.const_value.dtype if value.const_value is not None else None)
    if shape is None or dtype is None or not all(isinstance(d, int) for d in shape):
        return 0
    try:
        return math.ceil(math.prod(shape) * dtype.itemsize)
    except (TypeError, ValueError, AttributeError):  # string/undefined dtypes have no item size
        return 0


def scaled_seconds(cost_model, node: Node, index: int, fraction: Callable[[Value | None], float]) -> float:
    """Roofline seconds of ``node`` when each tensor ``v`` keeps ``fraction(v)`` of its channels."""
    work = node_work(node, index)
    if not work.launches_kernel:
        return 0.0
    f_out = fraction(node.outputs[0]) if node.outputs else 1.0
    f_in = fraction(node.inputs[0]) if node.inputs else 1.0
    weighted = node.op_type in ("Conv", "Gemm", "MatMul") and len(node.inputs) > 1 and is_constant(node.inputs[1])
    if weighted:
        grouped = node.op_type == "Conv" and int_attr(node, "group", 1) > 1
        compute = f_out if grouped else f_out * f_in
    else:
        compute = f_out
    total, seen = 0.0, set()
    for position, value in enumerate([*node.inputs, *node.outputs]):
        if value is None or id(value) in seen:
            continue
        seen.add(id(value))
        if is_constant(value):
            scale = compute if (weighted and position == 1) else f_out
        else:
            scale = fraction(value)
        total += _nbytes(value) * scale
    scaled = dataclasses.replace(work, macs=int(work.macs * compute), ops=int(work.ops * compute), bytes=int(total))
    return cost_model.time_node(scaled).seconds


def touching_nodes(model: Model, group: ChannelGroup) -> list[tuple[int, Node]]:
    """``(graph index, node)`` of every node that reads or writes a member of ``group``: the nodes
    whose time depends on the group's kept channels."""
    members = {id(m.value) for m in group.members}
    return [
        (index, node)
        for index, node in enumerate(model.graph)
        if any(v is not None and id(v) in members for v in (*node.inputs, *node.outputs))
    ]


def group_time_table(cost_model, model: Model, group: ChannelGroup, counts: Iterable[int]) -> dict[int, float]:
    """Estimated seconds of the nodes touching ``group`` for each kept unit count in ``counts``."""
    members = {id(m.value) for m in group.members}
    nodes = touching_nodes(model, group)
    table: dict[int, float] = {}
    for k in counts:
        share = k / group.size

        def fraction(value: Value | None, share: float = share) -> float:
            return share if value is not None and id(value) in members else 1.0

        table[k] = sum(scaled_seconds(cost_model, node, index, fraction) for index, node in nodes)
    return table
