"""``topological-sort``: order nodes so that every value is produced before it is used."""

from __future__ import annotations

import dataclasses

from compiler.context import CompileContext
from compiler.ir import Model
from compiler.pass_base import Fact, Pass, PassResult, Tolerance, register_pass
from passes.canonicalize._graph_utils import common_passes, node_order


@register_pass
@dataclasses.dataclass(frozen=True)
class TopologicalSortPass(Pass):
    """Stable topological sort of the graph, its subgraphs and model-local functions.

    Needs: nothing.
    Provides: TOPO_SORTED.
    Preserves: every fact; only the order of nodes changes, never what they compute.

    Invariant afterwards: for every node, each input is a graph input, an initializer, an
    outer-scope value or the output of an earlier node of the same graph. The sort is stable
    (nodes already in order keep their relative order), so a sorted graph is left untouched.
    Wraps ``onnx_ir.passes.common.TopologicalSortPass``; ``modified`` compares the node order of
    all graphs (the library's flag ignores subgraphs, which ``Graph.sort`` also reorders).

    Raises:
        ValueError: the graph has a cycle.

    Before -> After (ONNX text)::

        y = Relu (h)                          h = Neg (x)
        h = Neg (x)                           y = Relu (h)
    """

    name = "topological-sort"
    needs = frozenset()
    provides = frozenset({Fact.TOPO_SORTED})
    preserves = frozenset(Fact)
    tolerance = Tolerance.EXACT

    def run(self, model: Model, ctx: CompileContext) -> PassResult:
        before = node_order(model)
        common_passes.TopologicalSortPass()(model)
        moved = sum(a != b for a, b in zip(before, node_order(model)))
        return PassResult(model, moved > 0, {"moved": moved}, [])
