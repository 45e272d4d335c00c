"""ONNX -> Relax with TVM's ONNX frontend, after checking that it can convert every operator.

The frontend's own check reports only a set of operator names (no node, no order) and ignores
domains and subgraphs, so we check first and name the first unsupported node in graph order. If a
converter fails anyway, the error names the operator and node being converted.

Weights stay constants in the Relax module (``keep_params_in_input=False``), so they end up
embedded in the exported library. The converter table is read through the frontend's
``_get_convert_map()`` on every call, so converters added by wrapping it (integer ops, see
shared/research/tvm-0.27.md §4) are seen by the check too.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Mapping, Sequence

import onnx
import tvm
from tvm.relax.frontend.onnx import onnx_frontend

from compiler.errors import LoweringError, OptionError, UnsupportedModelError
from targets.lowering.errors import one_line
from targets.lowering.int4 import rewrite_packed_weights
from targets.lowering.integer_ops import install_converters

# Our converters for the integer-only form (ConvInteger) join the frontend's table before any
# check or import reads it.
install_converters()

# The frontend ignores node domains. These are the domains whose ops its table describes: the
# standard one and com.microsoft (its table holds contrib ops such as SkipLayerNormalization).
_IMPORTER_DOMAINS = {"", "ai.onnx", "com.microsoft"}
# Ops the frontend handles without a table entry.
_BUILTIN_OPS = {"If", "Constant"}


def _walk(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` in order, descending into subgraphs (If/Loop/Scan bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _walk(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _walk(sub)


def _node_label(node: onnx.NodeProto) -> str:
    return node.name or (f"output {node.output[0]}" if node.output else "unnamed")


def check_supported(model: onnx.ModelProto) -> None:
    """Raise UnsupportedModelError naming the first node the TVM Relax ONNX importer cannot convert."""
    convert_map = onnx_frontend._get_convert_map()
    local_functions = {(f.domain, f.name) for f in model.functions}
    for node in _walk(model.graph):
        supported = node.domain in _IMPORTER_DOMAINS and (
            node.op_type in convert_map or node.op_type in _BUILTIN_OPS
        )
        if supported:
            continue
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        hint = ""
        if (node.domain, node.op_type) in local_functions:
            hint = " (it is a model-local function: inline functions before lowering)"
        raise UnsupportedModelError(
            f"operator '{op}' (node '{_node_label(node)}') is not supported by the TVM Relax ONNX importer{hint}"
        )


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are real inputs (an initializer listed as an input is a constant here,
    because the importer binds initializers first)."""
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def static_shapes(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    """The shape of every graph input: ``input_shapes`` where given, else the model's static dims.

    Lowering is static-shape only (schedules and memory planning need concrete sizes), so a
    symbolic dim without a given shape is an OptionError naming the input.
    """
    inputs = graph_inputs(model)
    names = {value.name for value in inputs}
    unknown = sorted(set(input_shapes) - names)
    if unknown:
        raise OptionError(f"input shape given for unknown input(s) {unknown} (model inputs: {sorted(names)})")
    shapes: dict[str, list[int]] = {}
    for value in inputs:
        if value.name in input_shapes:
            shape = [int(d) for d in input_shapes[value.name]]
        else:
            dims = value.type.tensor_type.shape.dim
            if not value.type.tensor_type.HasField("shape") or any(not d.HasField("dim_value") for d in dims):
                shown = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
                raise OptionError(f"input '{value.name}' has symbolic dims {shown}; give its shape")
            shape = [d.dim_value for d in dims]
        if any(d <= 0 for d in shape):
            raise OptionError(f"input '{value.name}' shape {shape} must have positive dims")
        shapes[value.name] = shape
    return shapes


def _opset(model: onnx.ModelProto) -> int:
    """The default-domain opset, as the frontend's own ``from_onnx`` detects it."""
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return opset.version
    return 1


class _TrackingImporter(onnx_frontend.ONNXGraphImporter):
    """The frontend's importer, remembering the node being converted so a failure can name it."""

    current: tuple[str, str] | None = None

    def _convert_operator(self, op_name, inputs, attrs, opset):
        self.current = (op_name, attrs.get("tvm_custom", {}).get("name", ""))
        result = super()._convert_operator(op_name, inputs, attrs, opset)
        self.current = None
        return result


def import_onnx(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]], notes: list[str] | None = None) -> tvm.IRModule:
    """Relax module of ``model`` with static input shapes; weights embedded as constants.

    Packed int4 weights stay packed (``targets.lowering.int4``); what that did is appended to
    ``notes`` when given. Raises UnsupportedModelError (unsupported op), OptionError (bad shapes)
    or LoweringError (a converter failed: names the operator and node).
    """
    model, int4_notes = rewrite_packed_weights(model)
    if notes is not None:
        notes.extend(int4_notes)
    check_supported(model)
    shapes = static_shapes(model, input_shapes)
    if model.ir_version < 3:
        raise UnsupportedModelError(f"ONNX IR version {model.ir_version} is too old for the TVM importer (needs >= 3)")
    importer = _TrackingImporter(shapes, "float32", keep_params_in_input=False, sanitize=True)
    # The frontend prints "Error converting operator ..." with the whole input IR to stdout before
    # re-raising; the LoweringError below says the same in one line.
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return importer.from_onnx(model.graph, _opset(model))
    except Exception as exc:
        if importer.current is not None:
            op, node = importer.current
            where = f"operator '{op}' (node '{node}')"
        else:
            where = "the graph"
        raise LoweringError(f"TVM ONNX import failed at {where}: {one_line(exc)}") from exc
