"""Estimated cost of a layer, dense or factorized, from the target's cost model.

A factorized layer does not exist yet when its rank is chosen, so its nodes are built *detached*:
fresh values carrying only shapes and dtypes (never the graph's own values, whose use lists would
otherwise gain phantom consumers), fed to :func:`targets.cost_model.node_work` and timed by
``ctx.cost_model.time_node``. The dense layer is timed the same way, so both sides see the same
formulas (kernel overhead per node included: that is what makes a factorization with a small rank
slower on a target with a large launch cost, even below the break-even ``r < mn / (m + n)``).

Without a cost model (unit tests of pure passes) the cost is the MAC count, labelled as such; the
``auto`` rank mode refuses to decide on MACs alone (it leaves layers dense with a note).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from compiler.ir import DataType, Node, ir
from targets.cost_model import node_work

__all__ = ["LayerCost", "ShapedOp", "concrete"]


def concrete(dims: Sequence[Any]) -> tuple[int, ...]:
    """Static dims; a symbolic dim (a batch size) counts as 1 for the estimate, on both sides alike."""
    return tuple(d if isinstance(d, int) else 1 for d in dims)


@dataclasses.dataclass(frozen=True)
class ShapedOp:
    """A node to be estimated: op type, input shapes (None for an omitted input), output shape."""

    op_type: str
    inputs: tuple[tuple[int, ...] | None, ...]
    output: tuple[int, ...]
    attributes: tuple[tuple[str, int], ...] = ()

    def node(self, dtype: DataType) -> Node:
        values = []
        for index, shape in enumerate(self.inputs):
            if shape is None:
                values.append(None)
                continue
            value = ir.Value(name=f"in{index}", shape=ir.Shape(shape), type=ir.TensorType(dtype))
            values.append(value)
        out = ir.Value(name="out", shape=ir.Shape(self.output), type=ir.TensorType(dtype))
        attrs = [ir.AttrInt64(k, v) for k, v in self.attributes]
        return ir.Node("", self.op_type, values, attrs, outputs=[out], name=self.op_type)


class LayerCost:
    """Seconds (estimated by ``cost_model``) or MACs (no cost model) of a list of shaped ops."""

    def __init__(self, cost_model: Any | None, dtype: DataType = DataType.FLOAT):
        self.cost_model = cost_model
        self.dtype = dtype

    @property
    def estimates_time(self) -> bool:
        return self.cost_model is not None

    def __call__(self, ops: Sequence[ShapedOp]) -> float:
        total = 0.0
        for op in ops:
            work = node_work(op.node(self.dtype))
            total += self.cost_model.time_node(work).seconds if self.cost_model is not None else float(work.macs)
        return total

    def describe(self, value: float) -> str:
        """``0.21 ms`` (an estimate) or ``1.5 MMACs``."""
        if self.cost_model is not None:
            return f"{value * 1e3:.3g} ms"
        return f"{value / 1e6:.3g} MMACs"

    def describe_change(self, dense: float, factorized: float) -> str:
        """``0.21 -> 0.12 ms estimated`` or ``1.5 -> 0.4 MMACs``."""
        if self.cost_model is not None:
            return f"{dense * 1e3:.3g} -> {factorized * 1e3:.3g} ms estimated"
        return f"{dense / 1e6:.3g} -> {factorized / 1e6:.3g} MMACs"
