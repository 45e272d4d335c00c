"""``fold-constants``: evaluate subgraphs whose inputs are all constants, ahead of time."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import onnxscript.optimizer

from compiler.context import CompileContext
from compiler.ir import Model, Value, ir, structural_fingerprint
from compiler.pass_base import Fact, Pass, PassResult, Tolerance, register_pass
from passes.canonicalize._graph_utils import all_nodes

# onnxscript's public module alias for its constant folder; we reuse its size limits and blacklist
# (QuantizeLinear/DequantizeLinear survive, so quantization parameters stay visible).
_folding = onnxscript.optimizer.constant_folding
DEFAULT_INPUT_SIZE_LIMIT: int = _folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT
DEFAULT_OUTPUT_SIZE_LIMIT: int = _folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT
NOT_FOLDED_OPS: tuple[str, ...] = tuple(_folding.DEFAULT_CONSTANT_FOLD_BLACKLIST)


@contextlib.contextmanager
def _overridable_initializers_hidden(graph: ir.Graph) -> Iterator[list[Value]]:
    """Hide the values of initializers that are also graph inputs while the folder runs.

    Such an initializer is only a default: the caller may feed another tensor. onnxscript's generic
    folding path refuses graph inputs, but its per-op shortcuts (Reshape -> Identity, Dropout ->
    Identity, Gather of a shape) read ``const_value`` directly. Without a ``const_value`` they see
    a run-time value. Afterwards the tensors come back, and an initializer the folder dropped from
    the graph because its last consumer was folded is registered again (the input keeps its default).
    """
    hidden = [(value, value.const_value) for value in graph.inputs if value.is_initializer()]
    for value, _ in hidden:
        value.const_value = None
    try:
        yield [value for value, _ in hidden]
    finally:
        for value, tensor in hidden:
            value.const_value = tensor
            if value.name not in graph.initializers:
                graph.register_initializer(value)


@register_pass
@dataclasses.dataclass(frozen=True)
class FoldConstantsPass(Pass):
    """Replace every node whose inputs are all constants by an initializer holding its output.

    Needs: nothing (run ``lift-constants`` first so Constant nodes count as constants everywhere).
    Provides: CONSTANTS_FOLDED.
    Preserves: TOPO_SORTED only. Replacement nodes are inserted where the folded node stood, but
        the folder may create ``Constant``/``Identity`` nodes (CONSTANTS_LIFTED, NO_IDENTITY),
        leave producers of folded-away inputs dead (DEAD_CODE_FREE), add values without shapes
        (SHAPES_INFERRED), and turn a computed Conv weight into an initializer that makes a BN
        foldable (BN_FOLDED).

    For a node ``y = f(c1, ..., cn)`` with every ``ci`` constant, ``y`` becomes the initializer
    ``f(c1, ..., cn)`` evaluated by the ONNX reference implementation (bit-exact for integer and
    shape arithmetic; float results can differ from ONNX Runtime's kernels in the last ulp, hence
    the FP32_REWRITE tolerance). Wraps ``onnxscript.optimizer.fold_constants`` and repeats it until
    nothing changes (at most ``max_rounds``), because one round does not revisit the Constant nodes
    its own shortcuts create (``Shape(x)`` with a static shape -> Constant). Constants are
    initializers that are not graph inputs, and Constant node outputs. Not folded: nodes in
    ``NOT_FOLDED_OPS``, random ops, control flow, multi-output nodes, inputs above
    ``input_size_limit`` elements, outputs above ``output_size_limit`` elements. Graph output names
    are kept: a folded output becomes an initializer under the output's name.

    Before -> After (ONNX text)::

        <float[2] a = {1, 2}, float[2] b = {3, 4}>       <float[2] s = {4, 6}>
        s = Add (a, b)                                   y = Mul (x, s)
        y = Mul (x, s)

    Attributes:
        input_size_limit: skip a node if one of its constant inputs has more elements than this.
        output_size_limit: skip a node if its output would have more elements than this.
        max_rounds: most folding rounds before giving up on a fixpoint (a note says so).
    """

    name = "fold-constants"
    needs = frozenset()
    provides = frozenset({Fact.CONSTANTS_FOLDED})
    preserves = frozenset({Fact.TOPO_SORTED})
    tolerance = Tolerance.FP32_REWRITE

    input_size_limit: int = DEFAULT_INPUT_SIZE_LIMIT
    output_size_limit: int = DEFAULT_OUTPUT_SIZE_LIMIT
    max_rounds: int = 8

    def run(self, model: Model, ctx: CompileContext) -> PassResult:
        # The folder's own flag is not exact: it also rewrites value types and shapes (Cast,
        # Identity, Constant outputs) without reporting it. The serialized form is the truth.
        fingerprint = structural_fingerprint(model)
        nodes_before = set(all_nodes(model))
        initializers_before = set(model.graph.initializers)
        notes: list[str] = []
        rounds, converged = 0, False
        with _overridable_initializers_hidden(model.graph) as overridable:
            while rounds < self.max_rounds and not converged:
                rounds += 1
                result = onnxscript.optimizer.fold_constants(
                    model,
                    input_size_limit=self.input_size_limit,
                    output_size_limit=self.output_size_limit,
                )
                converged = not result.modified
        if not converged:
            notes.append(f"stopped after {rounds} rounds; more constants may be foldable")
        for value in overridable:
            if value.uses():
                notes.append(f"initializer '{value.name}' is also a graph input: treated as a run-time value")
        nodes_after = set(all_nodes(model))
        stats = {
            "folded": len(nodes_before - nodes_after),
            "nodes_added": len(nodes_after - nodes_before),
            "initializers_added": len(set(model.graph.initializers) - initializers_before),
            "rounds": rounds,
        }
        return PassResult(model, structural_fingerprint(model) != fingerprint, stats, notes)
