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
from compiler.layer_decisions import LayerDecision
from targets.cost_model import node_work

__all__ = ["LayerCost", "ShapedOp", "concrete", "decision_for"]


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


def decision_for(label: str, op: str, shape: str, decision: Any, dense: float, cost: LayerCost, error_of: str,
                 full_rank: int, alternatives: Sequence[Any] = ()) -> LayerDecision:
    """The report row of one layer the rank selection looked at (:class:`passes.lowrank.rank.Decision`).

    ``dense`` and the chosen candidate's cost are seconds when ``cost`` estimates time (they go to
    the ``estimated_ms`` columns), MACs otherwise (kept in ``details``). ``nodes_after`` is the
    layer itself until the caller rewrites it.
    """
    chosen = decision.chosen
    details: dict[str, Any] = {"shape": shape, "full_rank": full_rank}
    if not cost.estimates_time:
        details["macs_before"] = dense
        if chosen is not None:
            details["macs_after"] = chosen.cost
    others = [o for o in alternatives if o is not chosen]
    if others:
        details["alternatives"] = [
            {"form": o.form, "ranks": list(o.ranks), "estimate": cost.describe(o.cost), "error": o.error} for o in others
        ]
    row = LayerDecision(
        layer=label,
        op=op,
        status="factorized" if chosen is not None else "dense",
        before=f"{op} {shape}",
        after=chosen.label if chosen is not None else f"{op} {shape}",
        reason=decision.reason or None if chosen is None else None,
        estimated_ms_before=dense * 1e3 if cost.estimates_time else None,
        estimated_ms_after=(chosen.cost if chosen is not None else dense) * 1e3 if cost.estimates_time else None,
        error=chosen.error if chosen is not None else None,
        error_kind=f"relative {error_of} error" if chosen is not None else None,
        nodes=[label],
        nodes_after=[label],
        details=details,
    )
    if chosen is not None:
        row.details.update({"form": chosen.form, "ranks": list(chosen.ranks)})
    return row
