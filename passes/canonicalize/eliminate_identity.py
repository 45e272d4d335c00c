"""``eliminate-identity``: remove Identity and inference-mode Dropout nodes."""

from __future__ import annotations

import dataclasses

from compiler.context import CompileContext
from compiler.ir import Model, Node, ir
from compiler.pass_base import Fact, Pass, PassResult, Tolerance, register_pass
from passes.canonicalize._graph_utils import constant_array, is_onnx_op


def _dropout_is_identity(node: Node, opset: int) -> str | None:
    """None when ``node`` (a Dropout) computes ``y = x``; otherwise the reason it may not.

    Dropout-1..6 is in test mode only with ``is_test=1``; 7..11 has no training switch (inference
    runtimes treat it as identity); 12+ takes an optional ``training_mode`` input that must be
    absent or a constant false. An initializer that is a graph input is not a constant.
    """
    if opset < 7:
        attr = node.attributes.get("is_test")
        return None if attr is not None and attr.as_int() == 1 else "is_test is not 1 (training mode)"
    training = node.inputs[2] if len(node.inputs) > 2 else None
    if training is not None:
        flag = constant_array(training)
        if flag is None:
            return f"training_mode '{training.name}' is not a constant"
        if bool(flag.reshape(-1)[0]):
            return "training_mode is true"
    mask = node.outputs[1] if len(node.outputs) > 1 else None
    if mask is not None and (mask.uses() or mask.is_graph_output()):
        return f"its mask output '{mask.name}' is used"
    return None


def _graph_output_blocker(node: Node) -> str | None:
    """Why ``y = node(x)`` must stay when ``y`` is an output of the node's graph, else None.

    ``x`` then takes over ``y``'s name, which is impossible when ``x`` is a graph input or
    initializer (ONNX forbids an input as an output and its name must not change), when ``x``
    already is a graph output (it would lose its own name), or when ``x`` comes from an outer
    scope (renaming it would rename a value of the enclosing graph).
    """
    x, y = node.inputs[0], node.outputs[0]
    if not y.is_graph_output():
        return None
    producer = x.producer()
    if producer is None:
        return f"output '{y.name}' is a graph input or initializer passed through"
    if producer.graph is not node.graph:
        return f"output '{y.name}' passes through a value of an enclosing graph"
    if x.is_graph_output():
        return f"output '{y.name}' duplicates graph output '{x.name}'"
    return None


def _bypass(node: Node) -> None:
    """Rewire the consumers of ``node``'s output to its input and delete the node."""
    x, y = node.inputs[0], node.outputs[0]
    if x.type is None:
        x.type = y.type
    if x.shape is None:
        x.shape = y.shape
    if y.is_graph_output():
        name = y.name
        y.replace_all_uses_with(x, replace_graph_outputs=True)
        y.name = None
        x.name = name  # graph output names are part of the signature
    else:
        y.replace_all_uses_with(x)
    node.graph.remove(node, safe=True)


@register_pass
@dataclasses.dataclass(frozen=True)
class EliminateIdentityPass(Pass):
    """Remove ``Identity`` and inference-mode ``Dropout`` nodes, rewiring consumers to the input.

    Needs: nothing.
    Provides: NO_IDENTITY.
    Preserves: SHAPES_INFERRED, CONSTANTS_LIFTED, CONSTANTS_FOLDED, TOPO_SORTED, QDQ_FORM,
        INTEGER_ONLY. Not DEAD_CODE_FREE (a Dropout's ratio/training_mode producers may become
        unused) nor BN_FOLDED (a ``Conv -> Identity -> BN`` chain becomes foldable).

    Invariant: both ops compute ``y = x`` (Dropout in inference: ratio ignored, mask all true), so
    every use of ``y`` may read ``x``. When ``y`` is a graph output, ``x`` is renamed to ``y``'s
    name so the signature stays the same; where that is impossible the node stays, with a note.
    Identity is handled in subgraphs and model-local functions too.

    Not wrapped from ``onnx_ir.passes.common.IdentityEliminationPass``: it does not know Dropout,
    and when ``x`` is itself a graph output it renames ``x``, changing that output's name.

    Before -> After (ONNX text)::

        h = Identity (x)                      y = Relu (x)
        d = Dropout <ratio=0.5> (h)
        y = Relu (d)
    """

    name = "eliminate-identity"
    needs = frozenset()
    provides = frozenset({Fact.NO_IDENTITY})
    preserves = frozenset(
        {
            Fact.SHAPES_INFERRED,
            Fact.CONSTANTS_LIFTED,
            Fact.CONSTANTS_FOLDED,
            Fact.TOPO_SORTED,
            Fact.QDQ_FORM,
            Fact.INTEGER_ONLY,
        }
    )
    tolerance = Tolerance.EXACT

    def run(self, model: Model, ctx: CompileContext) -> PassResult:
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        graphs: list[ir.Graph | ir.Function] = [model.graph, *model.functions.values()]
        nodes = [node for graph in graphs for node in ir.traversal.RecursiveGraphIterator(graph)]
        stats = {"identity": 0, "dropout": 0}
        notes: list[str] = []
        for node in nodes:
            if is_onnx_op(node, "Identity"):
                kind = "identity"
            elif is_onnx_op(node, "Dropout"):
                kind = "dropout"
            else:
                continue
            if not node.inputs or node.inputs[0] is None:
                continue  # malformed; leave it for the checker to report
            reason = _dropout_is_identity(node, opset) if kind == "dropout" else None
            reason = reason or _graph_output_blocker(node)
            if reason:
                notes.append(f"{node.op_type} '{node.name or node.outputs[0].name}' kept: {reason}")
                continue
            _bypass(node)
            stats[kind] += 1
        return PassResult(model, stats["identity"] + stats["dropout"] > 0, stats, notes)
