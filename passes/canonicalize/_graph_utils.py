"""Small graph queries shared by the canonicalize passes (private to this package).

Kept here so each pass module holds only its own rewrite. The IR comes from :mod:`compiler.ir`.
``onnx_ir.passes.common`` (the library passes we wrap) is not re-exported there, so this module is
the one place in the package that imports it, as ``common_passes``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx_ir.passes.common as common_passes

from compiler.ir import Model, Node, Value, ir

__all__ = [
    "common_passes",
    "all_nodes",
    "constant_array",
    "constant_tensor",
    "is_onnx_op",
    "new_initializer",
    "node_order",
    "remove_unused_initializers",
    "unique_name",
    "used_names",
]

ONNX_DOMAINS = ("", "ai.onnx")


def is_onnx_op(node: Node, op_type: str) -> bool:
    """True when ``node`` is the standard-domain operator ``op_type``."""
    return node.op_type == op_type and node.domain in ONNX_DOMAINS


def all_nodes(model: Model) -> Iterator[Node]:
    """Every node of the main graph, its subgraphs and the model-local functions, in order."""
    yield from ir.traversal.RecursiveGraphIterator(model.graph)
    for function in model.functions.values():
        yield from ir.traversal.RecursiveGraphIterator(function)


def node_order(model: Model) -> list[int]:
    """Identities of all nodes in iteration order: equal lists mean no node moved or changed."""
    return [id(node) for node in all_nodes(model)]


def constant_tensor(value: Value | None) -> ir.TensorProtocol | None:
    """The tensor of a value that cannot change at run time, else None.

    Constants are initializers and ``Constant`` node outputs. An initializer that is also a graph
    input is *not* a constant: the caller may feed another value (DESIGN.md, house rules).
    """
    if value is None or value.is_graph_input():
        return None
    try:
        return ir.convenience.get_const_tensor(value)
    except ValueError:  # malformed Constant node (several attributes/outputs): not a constant
        return None


def constant_array(value: Value | None) -> np.ndarray | None:
    """``constant_tensor`` as a numpy array (None when the value is not a constant)."""
    tensor = constant_tensor(value)
    return None if tensor is None else tensor.numpy()


def used_names(graph: ir.Graph) -> set[str]:
    """All value names in ``graph`` and its subgraphs (inputs, initializers, node outputs)."""
    names = {v.name for v in graph.inputs if v.name}
    names.update(name for name in graph.initializers if name)
    for node in ir.traversal.RecursiveGraphIterator(graph):
        names.update(v.name for v in node.outputs if v.name)
    return names


def unique_name(base: str, taken: set[str]) -> str:
    """``base`` or ``base_1``, ``base_2``... whichever is free; the result is added to ``taken``."""
    name, suffix = base, 0
    while name in taken:
        suffix += 1
        name = f"{base}_{suffix}"
    taken.add(name)
    return name


def remove_unused_initializers(candidates: list[Value]) -> int:
    """Drop those of ``candidates`` that are initializers nobody reads any more.

    Graph inputs and graph outputs are kept (they are part of the signature). Returns the count.
    """
    removed = 0
    for value in dict.fromkeys(candidates):  # dedupe, keep order
        graph = value.graph
        if (
            value.is_initializer()
            and graph is not None
            and graph.initializers.get(value.name) is value
            and not value.uses()
            and not value.is_graph_input()
            and not value.is_graph_output()
        ):
            del graph.initializers[value.name]
            removed += 1
    return removed


def new_initializer(graph: ir.Graph, name: str, array: np.ndarray) -> Value:
    """Register a new initializer holding a fresh tensor (never a mutated existing one)."""
    tensor = ir.tensor(array, name=name)
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
    graph.register_initializer(value)
    return value
