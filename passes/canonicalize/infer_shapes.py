"""``infer-shapes``: annotate every value with the dtype and shape ONNX shape inference derives."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator

from compiler.context import CompileContext
from compiler.ir import Model, ir, structural_fingerprint
from compiler.pass_base import Fact, Pass, PassResult, Tolerance, register_pass
from passes.canonicalize._graph_utils import all_nodes, common_passes

# ShapeInferencePass reports a failed inference only as a warning on this logger and leaves the
# model unchanged; we listen to it so that a failure is an error instead of a silently false fact.
_LIBRARY_LOGGER = "onnx_ir.passes.common.shape_inference"


class _FailureCollector(logging.Handler):
    """Keeps the library's failure reports: warnings that carry an exception."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.messages.append(f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}")


@contextlib.contextmanager
def _library_failures() -> Iterator[_FailureCollector]:
    logger = logging.getLogger(_LIBRARY_LOGGER)
    collector = _FailureCollector()
    logger.addHandler(collector)
    try:
        yield collector
    finally:
        logger.removeHandler(collector)


def _restore_initializer_order(graph: ir.Graph, order: list[str]) -> None:
    """Put the initializers back in ``order``.

    The library detaches large initializers while calling the C API and re-adds them at the end,
    which reorders the serialized model although nothing meaningful changed.
    """
    if list(graph.initializers) == order:
        return
    rank = {name: index for index, name in enumerate(order)}
    values = sorted(graph.initializers.values(), key=lambda v: rank.get(v.name, len(rank)))
    for value in values:
        graph.initializers.pop(value.name)
    for value in values:
        graph.initializers[value.name] = value


def _values_without_shape(model: Model) -> list[str]:
    """Names of node outputs (main graph, subgraphs, functions) that still have no shape."""
    return [
        value.name
        for node in all_nodes(model)
        for value in node.outputs
        if value.name and value.shape is None
    ]


@register_pass
@dataclasses.dataclass(frozen=True)
class InferShapesPass(Pass):
    """Annotate values with dtypes and shapes from ONNX shape inference (with data propagation).

    Needs: nothing.
    Provides: SHAPES_INFERRED.
    Preserves: every fact. Only value annotations change, never nodes or weights.

    Wraps ``onnx_ir.passes.common.ShapeInferencePass``, which strips large initializers before
    calling the ONNX C API (protobuf's 2 GiB limit) and merges inferred types back by value name;
    we put the initializers back in their original order afterwards.
    ``data_prop`` propagates constant shape tensors (``Shape -> Gather -> Reshape``) so dims stay
    concrete. Non-strict mode (the default) skips nodes without a shape function (custom domains)
    instead of giving up on the whole graph; those values are listed in a note.

    Invariant afterwards: every value whose shape ONNX can infer carries dtype and shape.

    Before -> After (ONNX text)::

        y = Relu(x)                      # value_info: none
        y = Relu(x)                      # value_info: float[1,3] y

    Attributes:
        data_prop: propagate constant shape data through shape-computing ops.
        strict: fail on any node whose inference fails (instead of skipping it).

    Raises:
        RuntimeError: shape inference failed for the model as a whole (it is then invalid ONNX).
    """

    name = "infer-shapes"
    needs = frozenset()
    provides = frozenset({Fact.SHAPES_INFERRED})
    preserves = frozenset(Fact)
    tolerance = Tolerance.EXACT

    data_prop: bool = True
    strict: bool = False

    def run(self, model: Model, ctx: CompileContext) -> PassResult:
        fingerprint = structural_fingerprint(model)
        initializer_order = list(model.graph.initializers)
        unknown_before = len(_values_without_shape(model))
        library_pass = common_passes.ShapeInferencePass(
            check_type=True, strict_mode=self.strict, data_prop=self.data_prop
        )
        with _library_failures() as failures:
            library_pass(model)
        _restore_initializer_order(model.graph, initializer_order)
        if failures.messages:
            raise RuntimeError("ONNX shape inference failed: " + "; ".join(failures.messages))
        unknown = _values_without_shape(model)
        stats = {"shapes_added": unknown_before - len(unknown), "values_without_shape": len(unknown)}
        notes = []
        if unknown:
            shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
            notes.append(
                f"{len(unknown)} value(s) have no inferred shape ({shown}): their ops have no "
                "ONNX shape function or a data-dependent output shape"
            )
        # The library's flag misses the shapes it copies onto initializers from their tensors, so
        # the serialized model decides.
        return PassResult(model, structural_fingerprint(model) != fingerprint, stats, notes)
