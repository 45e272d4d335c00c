"""``eliminate-dead-code``: remove nodes and initializers that no graph output depends on."""

from __future__ import annotations

import dataclasses

from compiler.context import CompileContext
from compiler.ir import Model, structural_fingerprint
from compiler.pass_base import Fact, Pass, PassResult, Tolerance, register_pass
from passes.canonicalize._graph_utils import all_nodes, common_passes


@register_pass
@dataclasses.dataclass(frozen=True)
class EliminateDeadCodePass(Pass):
    """Delete nodes whose outputs nobody uses, then initializers nobody reads.

    Needs: nothing.
    Provides: DEAD_CODE_FREE.
    Preserves: every fact but BN_FOLDED: deleting nodes cannot make a value non-constant,
        unsorted, unfolded or an Identity, but a Conv whose other consumer was dead may now feed
        its BatchNormalization alone, which makes that BN foldable.

    Invariant afterwards: every node has an output that is used or is a graph output, and every
    initializer is read, is a graph input (a default the caller may override) or a graph output.
    Wraps ``onnx_ir.passes.common.RemoveUnusedNodesPass``, which works backwards from the outputs
    (one sweep removes whole dead chains), recurses into subgraphs and functions, and also drops
    unused optional outputs (MaxPool ``Indices``, Dropout ``mask``) and trailing empty inputs.
    Its ``modified`` flag counts removed nodes only, so the optional-output cleanup would go
    unreported; ``modified`` is computed from the serialized model instead.

    Before -> After (ONNX text)::

        y = Relu (x)                          y = Relu (x)
        unused = Sigmoid (x)
    """

    name = "eliminate-dead-code"
    needs = frozenset()
    provides = frozenset({Fact.DEAD_CODE_FREE})
    preserves = frozenset(Fact) - {Fact.BN_FOLDED}
    tolerance = Tolerance.EXACT

    def run(self, model: Model, ctx: CompileContext) -> PassResult:
        fingerprint = structural_fingerprint(model)
        nodes_before = len(list(all_nodes(model)))
        initializers_before = len(model.graph.initializers)
        common_passes.RemoveUnusedNodesPass()(model)
        stats = {
            "nodes_removed": nodes_before - len(list(all_nodes(model))),
            "initializers_removed": initializers_before - len(model.graph.initializers),
        }
        return PassResult(model, structural_fingerprint(model) != fingerprint, stats, [])
