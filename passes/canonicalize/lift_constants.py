"""``lift-constants``: turn ``Constant`` nodes into initializers."""

from __future__ import annotations

import dataclasses

from compiler.context import CompileContext
from compiler.ir import Model, Node
from compiler.pass_base import Fact, Pass, PassResult, Tolerance, register_pass
from passes.canonicalize._graph_utils import all_nodes, common_passes, is_onnx_op, node_order


def _why_kept(node: Node) -> str:
    if node.outputs[0].is_graph_output():
        return "it is a graph output"
    if len(node.attributes) != 1:
        return f"malformed (attributes {sorted(node.attributes)})"
    return "it is inside a model-local function, which holds no initializers"


@register_pass
@dataclasses.dataclass(frozen=True)
class LiftConstantsPass(Pass):
    """Replace every ``Constant`` node by an initializer holding the same tensor.

    Needs: nothing.
    Provides: CONSTANTS_LIFTED.
    Preserves: every fact. A constant moves from a node attribute to an initializer of the same
        name, dtype and shape, so what is typed, constant, folded, dead or sorted does not change.

    Many exporters (torch.onnx's dynamo path among them) store weights and shape tensors as
    ``Constant`` nodes; later passes read weights from initializers only. All attribute kinds are
    lifted: ``value`` (tensor), ``value_float(s)`` -> float32, ``value_int(s)`` -> int64,
    ``value_string(s)``; scalars become rank-0 tensors, lists rank-1. Wraps
    ``onnx_ir.passes.common.LiftConstantsToInitializersPass`` with ``lift_all_constants=True`` and
    no size threshold (its defaults keep small and non-tensor constants as nodes).

    Invariant afterwards: no ``Constant`` node remains except one whose output is a graph output
    (ONNX needs a node there to keep the output's name; it is reported in a note). Constants in
    subgraphs become initializers of their subgraph. Model-local functions keep their constants
    (functions cannot hold initializers). Sparse constants never reach here: onnx-ir cannot load
    them.

    Before -> After (ONNX text)::

        c = Constant <value_floats = [1.0, 2.0]> ()      # <float[2] c = {1.0, 2.0}>
        y = Add (x, c)                                   # y = Add (x, c)
    """

    name = "lift-constants"
    needs = frozenset()
    provides = frozenset({Fact.CONSTANTS_LIFTED})
    preserves = frozenset(Fact)
    tolerance = Tolerance.EXACT

    def run(self, model: Model, ctx: CompileContext) -> PassResult:
        before = node_order(model)
        library_pass = common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)
        library_pass(model)
        after = node_order(model)
        notes = [
            f"Constant '{node.outputs[0].name}' kept as a node: {_why_kept(node)}"
            for node in all_nodes(model)
            if is_onnx_op(node, "Constant")
        ]
        # Lifting removes the Constant node, so the node sequence changes exactly when it lifted.
        return PassResult(model, after != before, {"lifted": len(before) - len(after)}, notes)
