"""``quantize``: calibrate, then rewrite the float graph into the integer-only (HAWQ-V3 dyadic) form.

The emitted patterns are exactly those of the ``passes.quantize`` package docstring; this module
decides, node by node in topological order, which pattern applies:

=====================================  ==============================================================
float node                             integer form
=====================================  ==============================================================
graph input (float)                    QuantizeLinear
Conv / Gemm / MatMul (const weight)    ConvInteger | MatMulInteger -> Add(int32 bias) -> Requantize
  [+ Add(const) after MatMul]            (the Add's constant becomes the bias)
  [+ Relu / Clip]                        (folded into the requantizer's clamp)
Add of two activations [+ Relu/Clip]   per-branch rescale, one shift
Add of an activation and a constant    per-branch rescale, the constant's branch precomputed (int64)
Mul / Div by a constant scalar         one-branch rescale with a signed multiplier
MatMul of two activations              MatMulInteger(a_q, b_q, zp_a, zp_b) -> Requantize
  [+ Mul/Div by a constant scalar]       (the scalar folded into the multiplier)
Gather(constant table, int indices)    Gather of the table quantized at compile time
GELU (Gelu, or x*(Erf(x/c)+1)*0.5)     I-BERT i-GELU (``ibert``)
Softmax                                I-BERT i-exp Softmax (``ibert``)
LayerNormalization                     integer LayerNorm with a Newton integer square root (``ibert``)
Concat of activations                  per-input rescale to the output scale, Concat on 8 bits
GlobalAveragePool [+ Relu/Clip]        ReduceSum(Cast INT32) - N*zp -> Requantize(s_x / (N s_out))
MaxPool, Reshape, Flatten, Transpose,  the same op on the 8-bit tensor (scale and zero point pass
Squeeze, Unsqueeze, Split, Slice,        through); Identity is dropped
Gather (on the activation)
Shape, Size                            read the 8-bit tensor (same shape)
anything else                          float island: DequantizeLinear -> op -> QuantizeLinear (the
                                         Q/DQ are added where the island meets integer values)
graph output                           DequantizeLinear (keeps the output's name)
=====================================  ==============================================================

Each activation's scale and zero point come from the calibrated range of the float value it
replaces (for a folded Relu/Clip: the range of the activation's output). Values computed from
constants only are left alone.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from compiler.context import CompileContext
from compiler.ir import DataType, Model, Node, Value, constant_array, ir
from compiler.pass_base import Fact, Pass, PassResult, Tolerance, register_pass
from passes.quantize.bias_correction import bias_correction, dequantized, input_channel_axis
from compiler.layer_grams import GramRequest, input_grams
from passes.quantize.calibrate import Statistics, collect_statistics
from passes.quantize.gptq import MAX_DIM as GPTQ_MAX_DIM
from passes.quantize.gptq import gptq_layer_codes, output_error
from passes.quantize import ibert
from passes.quantize.emit import Emitter
from passes.quantize.int4 import emit_packed_weight
from passes.quantize.layers import (
    FLOAT_TYPES,
    Layer,
    dynamic_values,
    is_onnx,
    match_activation,
    match_gelu,
    match_layer,
    match_scale,
)
from passes.quantize.observers import OBSERVERS
from passes.quantize.qparams import (
    ActivationQParams,
    DyadicError,
    activation_qparams,
    dyadic,
    dyadic_array,
    dyadic_bounded,
    quantize_bias,
    WEIGHT_ZERO_POINT_U8,
    quantize_weight,
    WEIGHT_BITS,
    weight_qmax,
    shared_shift_multipliers,
)
from passes.quantize.layers import single_consumer

__all__ = ["BITS_MAP_KEY", "QUANT_MAP_KEY", "QuantizeIntegerPass", "check_quantize_options", "island_reason", "label", "layer_bit_map", "prepare_graph"]

#: Model metadata key through which ``mixed-precision`` hands its per-layer choices to ``quantize``:
#: a JSON object ``{node name: 8 | 4 | "float"}``. ``quantize`` reads it (its ``bits_map`` option
#: wins per layer) and removes it from the model it rewrites.
BITS_MAP_KEY = "edgekiln.quantize.bits_map"

#: Model metadata key where ``quantize`` records, for the accuracy report (``compiler.quant_report``),
#: which 8-bit tensor stands for which original float tensor: a JSON object
#: ``{original tensor name: [quantized tensor name, scale, zero point]}``.
QUANT_MAP_KEY = "edgekiln.quant_map"

PASS_THROUGH = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Split", "Slice", "Gather")
_ACT_DTYPES = {"uint8": DataType.UINT8, "int8": DataType.INT8}
#: Weight rounding modes (the ``rounding`` option).
ROUNDINGS = ("nearest", "gptq")

# Why common ops have no integer form here (anything else gets the generic reason).
_ISLAND_REASONS = {
    "LogSoftmax": "exp/log has no integer form in the spec",
    "Gelu": "only the exact (erf) GELU has an integer form",
    "Sigmoid": "exp has no integer form in the spec",
    "Tanh": "tanh has no integer form in the spec",
    "Erf": "erf has an integer form only inside the exact GELU pattern",
    "Div": "division of activations has no integer form in the spec",
    "Sqrt": "square root has no integer form in the spec",
    "Pow": "power has no integer form in the spec",
    "AveragePool": "only GlobalAveragePool has an integer form",
    "ReduceMean": "only GlobalAveragePool has an integer form",
    "BatchNormalization": "a BatchNormalization that was not folded into a Conv/Gemm",
    "Dropout": "Dropout takes float types only (eliminate-identity removes inference Dropout)",
}


def label(node: Node) -> str:
    """How notes and errors name a node: op type and name (or first output's name when unnamed)."""
    return f"{node.op_type} '{node.name or (node.outputs[0].name if node.outputs else '')}'"


def island_reason(node: Node) -> str:
    return _ISLAND_REASONS.get(node.op_type, f"no integer form for {node.op_type} in the integer-only spec")


def check_quantize_options(bits: int, observer: str, percentile: float, activations: str, ctx: CompileContext) -> None:
    """Reject bad options and targets that cannot run int8 (one line, naming the option)."""
    if bits not in WEIGHT_BITS:
        raise ValueError(f"option bits={bits}: weights are quantized to 8, 7 or 4 bits")
    if observer not in OBSERVERS:
        raise ValueError(f"option observer={observer}: known observers are {', '.join(OBSERVERS)}")
    if not 50.0 < percentile <= 100.0:
        raise ValueError(f"option percentile={percentile}: must be in (50, 100]")
    if activations not in _ACT_DTYPES:
        raise ValueError(f"option activations={activations}: must be uint8 or int8")
    target = ctx.target
    if target is not None and not target.precisions.get("int8", False):
        raise ValueError(f"target '{getattr(target, 'name', target)}' does not list int8 in its precisions")


def layer_bit_map(model: Model, bits_map: tuple[str, ...] = ()) -> tuple[dict[str, int], set[str], str]:
    """Per-layer weight bits: the model's ``BITS_MAP_KEY`` metadata, then ``bits_map`` entries
    ``name@8`` / ``name@4`` / ``name@float`` over it. Returns ``(bits by node name, node names kept
    float, where the map came from)``.

    Raises:
        ValueError: a malformed entry or a bit width other than 8, 4 or float.
    """
    import json

    entries: dict[str, str] = {}
    source = []
    text = model.metadata_props.get(BITS_MAP_KEY) if model.metadata_props else None
    if text:
        try:
            entries.update({str(k): str(v) for k, v in json.loads(text).items()})
        except (ValueError, AttributeError):
            raise ValueError(f"model metadata '{BITS_MAP_KEY}' is not a JSON object of node name -> bits") from None
        source.append("model metadata (mixed-precision)")
    for item in bits_map:
        name, sep, value = item.rpartition("@")
        if not sep or not name:
            raise ValueError(f"option bits_map: entry '{item}' needs the form name@bits (bits 8, 4 or float)")
        entries[name] = value
    if bits_map:
        source.append("option bits_map")
    bits: dict[str, int] = {}
    floats: set[str] = set()
    for name, value in entries.items():
        value = value.strip().lower()
        if value in ("float", "fp32", "32"):
            floats.add(name)
        elif value in ("8", "4"):
            bits[name] = int(value)
        else:
            raise ValueError(f"bits map: layer '{name}' has bits '{value}'; expected 8, 4 or float")
    return bits, floats, " and ".join(source)


def prepare_graph(model: Model, emit: Emitter) -> tuple[set[int], list[Value]]:
    """Checks and normalisation shared by ``quantize`` and ``export-qdq``.

    Sorts the graph, names unnamed values (calibration fetches values by name) and returns the ids
    of dynamic values with the list of dynamic float values (graph inputs first, then node outputs).

    Raises:
        ValueError: opset below 13, control flow with subgraphs, or float types other than float32.
    """
    graph = model.graph
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
    if opset < 13:
        raise ValueError(f"quantization needs opset >= 13 (per-axis QuantizeLinear, ReduceSum axes input); the model has {opset}")
    for node in graph:
        if any(isinstance(a.value, ir.Graph) or (isinstance(a.value, list) and a.value and isinstance(a.value[0], ir.Graph))
               for a in node.attributes.values()):
            raise ValueError(f"{label(node)}: control flow with subgraphs is not supported by quantization")
    graph.sort()
    for node in graph:
        for value in node.outputs:
            if not value.name:
                value.name = emit.name(f"{node.op_type.lower()}_out")
    dynamic = dynamic_values(model)
    dyn_float = [v for v in (*graph.inputs, *(o for n in graph for o in n.outputs))
                 if id(v) in dynamic and v.dtype is not None and v.dtype.is_floating_point()]
    other = [v for v in dyn_float if v.dtype not in FLOAT_TYPES]
    if other:
        raise ValueError(f"value '{other[0].name}' is {other[0].dtype}; quantization handles float32 models only")
    return dynamic, dyn_float


@dataclasses.dataclass
class _Q:
    """A quantized stand-in for a float value."""

    value: Value
    qp: ActivationQParams


class _IntegerRewrite:
    """One run of the rewrite over one model (state that a frozen pass instance cannot hold)."""

    def __init__(self, model: Model, opts: QuantizeIntegerPass, ctx: CompileContext) -> None:
        self.model, self.graph, self.opts, self.ctx = model, model.graph, opts, ctx
        taken = {v.name for v in self.graph.inputs if v.name} | set(self.graph.initializers)
        taken |= {v.name for node in self.graph for v in node.outputs if v.name}
        self.emit = Emitter(self.graph, taken)
        self.qmap: dict[int, _Q] = {}
        self.fmap: dict[int, Value] = {}
        self.removed: list[Node] = []
        self.skip: set[int] = set()
        self.notes: list[str] = []
        self.stats = {"integer_layers": 0, "requantizers": 0, "fused_activations": 0, "integer_adds": 0,
                      "integer_concats": 0, "integer_pools": 0, "pass_through": 0, "integer_matmuls": 0,
                      "integer_scales": 0, "integer_embeddings": 0, "integer_gelus": 0, "integer_softmaxes": 0,
                      "integer_layer_norms": 0, "islands": 0}
        self.island_ops: list[str] = []
        self.layer_bits, self.float_layers, source = layer_bit_map(model, opts.bits_map)
        if source:
            self.notes.append(f"per-layer weight bits from {source}: {len(self.layer_bits)} integer layers mapped, "
                              f"{len(self.float_layers)} kept float")

    # -- setup -------------------------------------------------------------------------------------
    def run(self) -> PassResult:
        graph = self.graph
        self.dynamic, dyn_float = prepare_graph(self.model, self.emit)
        if not dyn_float:
            return PassResult(self.model, False, {}, ["no float activations: nothing to quantize"])

        self.layers = {id(n): match_layer(n, self.dynamic) for n in graph}
        means = []
        if self.opts.bias_correction:
            means = [(l.x.name, input_channel_axis(l)) for l in self.layers.values() if isinstance(l, Layer)]
        stats: Statistics = collect_statistics(
            self.model, self.ctx.calibration, [v.name for v in dyn_float], self.opts.observer, self.opts.percentile, means
        )
        self.ranges, self.means = stats.ranges, stats.channel_means
        self.grams = self._input_grams() if self.opts.rounding == "gptq" else {}
        self.notes.append(
            f"calibrated {len(self.ranges)} tensors on {stats.batches} batches with observer '{self.opts.observer}'"
            + (f" (p={self.opts.percentile})" if self.opts.observer == "percentile" else "")
        )

        original = list(graph)
        names = {id(v): v.name for v in dyn_float}  # before finish_outputs renames graph outputs
        for value in graph.inputs:
            if id(value) in self.dynamic and value.dtype in FLOAT_TYPES and value.uses():
                self.qmap[id(value)] = _Q(self.emit.quantize_linear(value, self.qparams(value), f"{value.name}_q"), self.qparams(value))
        self.emit.flush_at_start()
        for node in original:
            if id(node) in self.skip:
                continue
            self.handle(node)
            self.emit.flush_before(node)
        self.finish_outputs()
        self.emit.flush_at_end()
        self.cleanup()
        self.record_quant_map(names)
        if self.model.metadata_props and BITS_MAP_KEY in self.model.metadata_props:
            del self.model.metadata_props[BITS_MAP_KEY]  # consumed: the integer graph carries the bits
        self.stats["islands"] = len(self.island_ops)
        return PassResult(self.model, True, self.stats, self.notes)

    def record_quant_map(self, names: dict[int, str]) -> None:
        """Write ``QUANT_MAP_KEY``: each original float tensor with an 8-bit stand-in left in the graph."""
        import json

        present = {v.name for v in self.graph.inputs} | {v.name for n in self.graph for v in n.outputs}
        record = {names[key]: [q.value.name, float(q.qp.scale), int(q.qp.zero_point)]
                  for key, q in self.qmap.items() if key in names and q.value.name in present}
        self.model.metadata_props[QUANT_MAP_KEY] = json.dumps(record, sort_keys=True)

    def qparams(self, value: Value) -> ActivationQParams:
        lo, hi = self.ranges[value.name]
        return activation_qparams(lo, hi, self.opts.activations)

    # -- value lookup ------------------------------------------------------------------------------
    def is_dyn_float(self, value: Value | None) -> bool:
        return value is not None and id(value) in self.dynamic and value.dtype in FLOAT_TYPES

    def quant_of(self, value: Value) -> _Q:
        """The 8-bit stand-in for ``value``; quantizes a float (island) value on first need."""
        if id(value) not in self.qmap:
            qp = self.qparams(value)
            self.qmap[id(value)] = _Q(self.emit.quantize_linear(value, qp, f"{value.name}_q"), qp)
        return self.qmap[id(value)]

    def float_of(self, value: Value) -> Value:
        """A float value to read in place of ``value``; dequantizes an 8-bit one on first need."""
        if id(value) not in self.fmap:
            if id(value) in self.qmap:
                q = self.qmap[id(value)]
                self.fmap[id(value)] = self.emit.dequantize_linear(q.value, q.qp, f"{value.name}_dq")
            else:
                self.fmap[id(value)] = value
        return self.fmap[id(value)]

    # -- dispatch ----------------------------------------------------------------------------------
    def handle(self, node: Node) -> None:
        if self.is_embedding(node):
            return self.lower_embedding(node)
        if not any(self.is_dyn_float(v) for v in node.inputs):
            return  # constants-only or integer-only (e.g. shape arithmetic): untouched
        if node.name and node.name in self.opts.exclude:
            return self.island(node, "excluded by the 'exclude' option")
        if node.name and node.name in self.float_layers:
            return self.island(node, "kept float by the per-layer bit map")
        if is_onnx(node, "Shape", "Size"):
            value = node.inputs[0]
            node.replace_input_with(0, self.qmap[id(value)].value if id(value) in self.qmap else self.float_of(value))
            return None
        if is_onnx(node, "MatMul") and all(self.is_dyn_float(v) for v in node.inputs):
            return self.lower_matmul_activations(node)
        layer = self.layers.get(id(node))
        if isinstance(layer, Layer):
            return self.lower_layer(layer)
        gelu = match_gelu(node, self.dynamic)
        if gelu is not None:
            return self.lower_gelu(*gelu)
        if is_onnx(node, "Softmax"):
            return self.lower_softmax(node)
        if is_onnx(node, "LayerNormalization"):
            return self.lower_layer_norm(node)
        if is_onnx(node, "Add") and len(node.inputs) == 2 and sum(self.is_dyn_float(v) for v in node.inputs) == 1:
            other = node.inputs[1] if self.is_dyn_float(node.inputs[0]) else node.inputs[0]
            if constant_array(other) is not None and np.issubdtype(constant_array(other).dtype, np.floating):
                return self.lower_constant_add(node)
        scaled = [v for v in node.inputs if self.is_dyn_float(v)]
        if is_onnx(node, "Mul", "Div") and len(scaled) == 1 and match_scale(node, scaled[0]) is not None:
            return self.lower_scale(node, scaled[0])
        if isinstance(layer, str):
            return self.island(node, f"not lowered: {layer}")
        if is_onnx(node, "Add", "Sum") and len(node.inputs) == 2 and all(self.is_dyn_float(v) for v in node.inputs):
            return self.lower_add(node)
        if is_onnx(node, "Concat") and all(self.is_dyn_float(v) for v in node.inputs):
            return self.lower_concat(node)
        if is_onnx(node, "GlobalAveragePool"):
            spatial = list(node.inputs[0].shape or [])[2:]
            if spatial and all(isinstance(d, int) for d in spatial):
                return self.lower_gap(node, math.prod(spatial))
            return self.island(node, "its spatial dims are not static")
        if is_onnx(node, *PASS_THROUGH):
            return self.pass_through(node)
        if is_onnx(node, "Relu", "Clip"):
            return self.island(node, "not right after a requantizing producer (Conv/Gemm/MatMul/Add/GlobalAveragePool) with one consumer")
        if is_onnx(node, "Add", "Sum", "Concat"):
            return self.island(node, "an operand is a constant (only activations have an integer form)")
        return self.island(node, island_reason(node))

    def island(self, node: Node, reason: str) -> None:
        for index, value in enumerate(node.inputs):
            if self.is_dyn_float(value):
                node.replace_input_with(index, self.float_of(value))
        for value in node.outputs:
            self.fmap[id(value)] = value
        self.island_ops.append(node.op_type)
        self.notes.append(f"{label(node)} stays float (island): {reason}")

    # -- the integer patterns ----------------------------------------------------------------------
    def _clamp(self, produced: Value) -> tuple[Value, int, int, list[Node]]:
        """The value the requantizer replaces (after a folded Relu/Clip), and its clamp bounds."""
        activation = match_activation(produced)
        out = activation.node.outputs[0] if activation else produced
        qp = self.qparams(out)
        lo, hi = qp.qmin, qp.qmax
        folded: list[Node] = []
        if activation is not None:
            if math.isfinite(activation.lo):
                lo = max(lo, int(qp.quantize(activation.lo)))
            if math.isfinite(activation.hi):
                hi = min(hi, int(qp.quantize(activation.hi)))
            folded.append(activation.node)
            self.stats["fused_activations"] += 1
        return out, lo, hi, folded

    def _replaced(self, nodes: list[Node], out: Value, q: Value, qp: ActivationQParams) -> None:
        self.qmap[id(out)] = _Q(q, qp)
        self.removed.extend(nodes)
        self.skip.update(id(n) for n in nodes)
        self.stats["requantizers"] += 1

    def lower_layer(self, layer: Layer) -> None:
        node, label = layer.node, layer.label
        xq = self.quant_of(layer.x)
        out, lo, hi, folded = self._clamp(layer.output)
        qp_out = self.qparams(out)
        bits = self.layer_bits.get(node.name, self.opts.bits) if node.name else self.opts.bits
        w_q, w_scales = quantize_weight(layer.weight, layer.weight_axis, bits)
        note = ""
        gram = self.grams.get(id(node))
        if gram is not None:
            nearest = output_error(layer, w_q, w_scales, gram)
            w_q = gptq_layer_codes(layer, w_scales, gram, weight_qmax(bits))
            tuned = output_error(layer, w_q, w_scales, gram)
            note = f"; GPTQ rounding: calibration output error {tuned / nearest if nearest else 1.0:.3f}x of nearest"
        bias = layer.bias if layer.bias is not None else np.zeros(layer.channels)
        if self.opts.bias_correction:
            correction = bias_correction(layer, dequantized(layer, w_q, w_scales), self.means[(layer.x.name, input_channel_axis(layer))])
            bias = bias + correction
            steps = np.abs(correction) / qp_out.scale  # in output quantization steps
            note += f"; bias corrected by {float(steps.mean()):.3f} output steps on average"
        try:
            b_q = quantize_bias(bias, xq.qp.scale, w_scales, where=label)
            # Shift capped where the multiplier keeps NARROW_MIN_BITS (8)+ bits: the chain then runs in int32 lanes
            # (qparams.narrow_dyadic; the lowering proves it exact per channel or keeps float64).
            m, s = dyadic_array(np.float64(xq.qp.scale) * w_scales.astype(np.float64) / np.float64(qp_out.scale), narrow=True)
        except DyadicError as exc:
            raise ValueError(f"{label}: {exc}") from None
        rank = len(out.shape) if out.shape is not None else (layer.weight.ndim if layer.kind == "conv" else 2)
        param_shape = [layer.channels] + [1] * (rank - 2) if layer.kind == "conv" else [layer.channels]
        base = node.name or out.name
        weight_inputs = self._weight_operands(base, w_q, xq.qp, bits)
        x_zp = self.emit.scalar(f"x_zp_{xq.qp.dtype}", xq.qp.zero_point, xq.qp.np_dtype)
        operands = [xq.value, weight_inputs[0], x_zp, *weight_inputs[1:]]
        if layer.kind == "conv":
            attrs = [ir.Attr(a.name, a.type, a.value) for a in node.attributes.values()]
            acc = self.emit.op("ConvInteger", operands, DataType.INT32, out.shape, f"{base}_acc", attrs)
        else:
            acc = self.emit.op("MatMulInteger", operands, DataType.INT32, out.shape, f"{base}_acc")
        acc = self.emit.op("Add", [acc, self.emit.constant(f"{base}_b_q", b_q.reshape(param_shape))], DataType.INT32, out.shape, f"{base}_biased")
        y = self.emit.requantize_accumulator(acc, m.reshape(param_shape), s.reshape(param_shape), qp_out, lo, hi, base)
        nodes = [node] + ([layer.bias_add] if layer.bias_add is not None else []) + folded
        self._replaced(nodes, out, y, qp_out)
        self.stats["integer_layers"] += 1
        fused = "".join(f" + {n.op_type}" for n in nodes[1:])
        self.notes.append(
            f"{label}{fused} -> {'ConvInteger' if layer.kind == 'conv' else 'MatMulInteger'} int{bits} "
            f"x {layer.channels} channels, dyadic shifts {int(s.min())}..{int(s.max())}{note}"
            + (" (weights packed two per byte)" if len(weight_inputs) == 2 and weight_inputs[0].producer() is not None else "")
        )
        if len(weight_inputs) == 2 and weight_inputs[0].producer() is not None:
            self.stats["packed_int4_layers"] = self.stats.get("packed_int4_layers", 0) + 1

    def _input_grams(self) -> dict[int, np.ndarray]:
        """Input Grams of every quantized layer for GPTQ rounding, keyed by node id; layers wider
        than ``gptq.MAX_DIM`` keep nearest rounding (noted)."""
        requests, wide = [], []
        for node_id, layer in self.layers.items():
            if not isinstance(layer, Layer) or layer.node.name in self.float_layers:
                continue
            dim = int(np.prod(layer.weight.shape[1:])) if layer.kind == "conv" else layer.weight.shape[0]
            if dim > GPTQ_MAX_DIM:
                wide.append(layer.label)
                continue
            groups = layer.groups if layer.kind == "conv" else 1
            requests.append(GramRequest(str(node_id), layer.node, dim, groups))
        if wide:
            self.notes.append(f"GPTQ rounding skipped for {len(wide)} layer(s) wider than {GPTQ_MAX_DIM} inputs "
                              f"(nearest rounding): {', '.join(wide[:5])}{' ...' if len(wide) > 5 else ''}")
        grams = input_grams(self.model, self.ctx.calibration, requests)
        return {int(key): gram for key, gram in grams.items()}

    def _weight_operands(self, base: str, w_q: np.ndarray, x_qp: ActivationQParams, bits: int = 8) -> list[Value]:
        """The weight input(s) of ConvInteger/MatMulInteger for the symmetric codes ``w_q``.

        4-bit codes next to uint8 activations are stored packed, two per byte, and unpacked by a
        small integer subgraph with weight zero point 8 (``passes.quantize.int4``), unless the
        ``pack_int4`` option is off (then they take the 8-bit containers below).

        With uint8 activations the weight is stored offset-binary: uint8 ``w_q + 128`` with the
        scalar weight zero point 128 (same values: ``(w_q + 128) - 128``). Why: ONNX Runtime's
        u8 x s8 kernels on x86 without VNNI (AVX2 ``vpmaddubsw``) add pairs of products in int16
        with saturation (255 * 127 * 2 > 2^15), so a u8 x s8 graph is not exact there, while its
        u8 x u8 kernels widen to 16 bits first and are exact on every CPU. The TVM converters fold
        the constant zero point back into an int8 weight (targets/lowering/integer_ops.py), so the
        int8 dot-product kernels are unchanged. int8 activations keep int8 weights (s8 x s8 is
        exact in ONNX Runtime).
        """
        if x_qp.dtype != "uint8":
            return [self.emit.constant(f"{base}_w_q", w_q)]
        if bits == 4 and self.opts.pack_int4:
            return list(emit_packed_weight(self.emit, base, w_q))
        offset = (w_q.astype(np.int16) + WEIGHT_ZERO_POINT_U8).astype(np.uint8)
        return [self.emit.constant(f"{base}_w_q", offset), self.emit.scalar("w_zp_uint8", WEIGHT_ZERO_POINT_U8, np.uint8)]

    def lower_add(self, node: Node) -> None:
        a, b = node.inputs
        qa, qb = self.quant_of(a), self.quant_of(b)
        out, lo, hi, folded = self._clamp(node.outputs[0])
        qp_out = self.qparams(out)
        try:
            (m_a, m_b), shift = shared_shift_multipliers([qa.qp.scale / qp_out.scale, qb.qp.scale / qp_out.scale], narrow=True)
        except DyadicError as exc:
            raise ValueError(f"{label(node)}: {exc}") from None
        base = node.name or out.name
        y = self.emit.requantize_branches([(qa.value, qa.qp, m_a), (qb.value, qb.qp, m_b)], shift, qp_out, lo, hi, out.shape, base)
        self._replaced([node, *folded], out, y, qp_out)
        self.stats["integer_adds"] += 1
        self.notes.append(f"{label(node)}{''.join(' + ' + n.op_type for n in folded)} -> integer add with per-branch rescale")

    def lower_concat(self, node: Node) -> None:
        out = node.outputs[0]
        qp_out = self.qparams(out)
        base = node.name or out.name
        parts = []
        for index, value in enumerate(node.inputs):
            q = self.quant_of(value)
            if q.qp == qp_out:
                parts.append(q.value)
                continue
            try:
                (m,), shift = shared_shift_multipliers([q.qp.scale / qp_out.scale], narrow=True)
            except DyadicError as exc:
                raise ValueError(f"{label(node)} input {index}: {exc}") from None
            parts.append(self.emit.requantize_branches([(q.value, q.qp, m)], shift, qp_out, qp_out.qmin, qp_out.qmax, value.shape, f"{base}_in{index}"))
            self.stats["requantizers"] += 1
        attrs = [ir.Attr(a.name, a.type, a.value) for a in node.attributes.values()]
        y = self.emit.op("Concat", parts, _ACT_DTYPES[qp_out.dtype], out.shape, f"{base}_q", attrs)
        self.qmap[id(out)] = _Q(y, qp_out)
        self.removed.append(node)
        self.stats["integer_concats"] += 1
        self.notes.append(f"{label(node)} -> 8-bit Concat with per-input rescale")

    def lower_gap(self, node: Node, count: int) -> None:
        x = node.inputs[0]
        qx = self.quant_of(x)
        out, lo, hi, folded = self._clamp(node.outputs[0])
        qp_out = self.qparams(out)
        base = node.name or out.name
        try:
            m, s = dyadic(qx.qp.scale / (count * qp_out.scale))
        except DyadicError as exc:
            raise ValueError(f"{label(node)}: {exc}") from None
        wide = self.emit.op("Cast", [qx.value], DataType.INT32, x.shape, f"{base}_i32", {"to": int(DataType.INT32)})
        axes = self.emit.constant(f"{base}_axes", np.arange(2, len(x.shape), dtype=np.int64))
        total = self.emit.op("ReduceSum", [wide, axes], DataType.INT32, out.shape, f"{base}_sum", {"keepdims": 1})
        centered = self.emit.op("Sub", [total, self.emit.scalar("n_zp", count * qx.qp.zero_point, np.int32)], DataType.INT32, out.shape, f"{base}_c")
        y = self.emit.requantize_accumulator(centered, np.int64(m), np.int64(s), qp_out, lo, hi, base)
        self._replaced([node, *folded], out, y, qp_out)
        self.stats["integer_pools"] += 1
        self.notes.append(f"{label(node)} -> ReduceSum over {count} positions + requantize")

    def pass_through(self, node: Node) -> None:
        data = node.inputs[0]
        if id(data) not in self.qmap or (is_onnx(node, "MaxPool") and len(node.outputs) > 1 and (node.outputs[1].uses() or node.outputs[1].is_graph_output())):
            # Its input is a float island value (or MaxPool's Indices are used): run it in float.
            for index, value in enumerate(node.inputs):
                if self.is_dyn_float(value):
                    node.replace_input_with(index, self.float_of(value))
            for value in node.outputs:
                self.fmap[id(value)] = value
            return
        q = self.qmap[id(data)]
        out = node.outputs[0]
        self.removed.append(node)
        self.stats["pass_through"] += 1
        if is_onnx(node, "Identity"):
            self.qmap[id(out)] = q
            return
        attrs = [ir.Attr(a.name, a.type, a.value) for a in node.attributes.values()]
        dtype = _ACT_DTYPES[q.qp.dtype]
        if len(node.outputs) == 1:
            y = self.emit.op(node.op_type, [q.value, *node.inputs[1:]], dtype, out.shape, f"{node.name or out.name}_q", attrs)
            self.qmap[id(out)] = _Q(y, q.qp)
            return
        # Split: every part keeps the input's scale and zero point
        outputs = [ir.Value(name=self.emit.name(f"{o.name}_q"), type=ir.TensorType(dtype), shape=None if o.shape is None else ir.Shape(list(o.shape)))
                   for o in node.outputs]
        split = ir.Node("", node.op_type, [q.value, *node.inputs[1:]], attributes=attrs, outputs=outputs,
                        name=self.emit.name(f"{node.name or out.name}_q/{node.op_type}"))
        self.emit.pending.append(split)
        self.emit.created.append(split)
        for original, made in zip(node.outputs, outputs):
            self.qmap[id(original)] = _Q(made, q.qp)

    # -- transformer patterns ----------------------------------------------------------------------
    def is_embedding(self, node: Node) -> bool:
        """A Gather of rows of a constant float table by dynamic integer indices (an embedding)."""
        if not is_onnx(node, "Gather") or len(node.inputs) != 2:
            return False
        table, indices = node.inputs
        array = constant_array(table)
        return (array is not None and np.issubdtype(array.dtype, np.floating) and indices is not None
                and id(indices) in self.dynamic and not self.is_dyn_float(indices) and self.is_dyn_float(node.outputs[0]))

    def lower_embedding(self, node: Node) -> None:
        """Gather(table, idx) -> Gather(quantize(table), idx): the table is quantized once, per
        tensor, with the output's calibrated (scale, zero point), so the gathered rows are already
        the 8-bit activation (no float op, and no QuantizeLinear, at run time)."""
        out = node.outputs[0]
        qp = self.qparams(out)
        table = self.emit.constant(f"{node.name or out.name}_table_q", qp.quantize(constant_array(node.inputs[0])).astype(qp.np_dtype))
        attrs = [ir.Attr(a.name, a.type, a.value) for a in node.attributes.values()]
        y = self.emit.op("Gather", [table, node.inputs[1]], _ACT_DTYPES[qp.dtype], out.shape, f"{node.name or out.name}_q", attrs)
        self.qmap[id(out)] = _Q(y, qp)
        self.removed.append(node)
        self.stats["integer_embeddings"] += 1
        self.notes.append(f"{label(node)} -> Gather of an 8-bit table (quantized at the output's scale)")

    def lower_matmul_activations(self, node: Node) -> None:
        """MatMul of two activations: MatMulInteger(a_q, b_q, zp_a, zp_b) -> requantize with
        r = s_a s_b c / s_out, where c is a following Mul/Div by a constant scalar (folded, e.g.
        attention's 1/sqrt(d)) or 1."""
        a, b = node.inputs
        qa, qb = self.quant_of(a), self.quant_of(b)
        produced, factor, scale_node = node.outputs[0], 1.0, None
        consumer = single_consumer(produced)
        if consumer is not None and is_onnx(consumer, "Mul", "Div"):
            factor_found = match_scale(consumer, produced)
            if factor_found is not None and factor_found != 0:
                factor, scale_node, produced = factor_found, consumer, consumer.outputs[0]
        out, lo, hi, folded = self._clamp(produced)
        qp_out = self.qparams(out)
        base = node.name or out.name
        try:
            m, s = dyadic_bounded(qa.qp.scale * qb.qp.scale * factor / qp_out.scale, (1 << 31) - 1)
        except DyadicError as exc:
            raise ValueError(f"{label(node)}: {exc}") from None
        zps = [self.emit.scalar(f"x_zp_{q.qp.dtype}", q.qp.zero_point, q.qp.np_dtype) for q in (qa, qb)]
        acc = self.emit.op("MatMulInteger", [qa.value, qb.value, *zps], DataType.INT32, produced.shape, f"{base}_acc")
        y = self.emit.requantize_accumulator(acc, np.int64(m), np.int64(s), qp_out, lo, hi, base)
        self._replaced([node, *([scale_node] if scale_node else []), *folded], out, y, qp_out)
        self.stats["integer_matmuls"] += 1
        self.notes.append(f"{label(node)}{' + ' + scale_node.op_type + f' {factor:.6g}' if scale_node else ''} -> MatMulInteger of two "
                          f"8-bit activations, dyadic shift {s}")

    def lower_scale(self, node: Node, x: Value) -> None:
        """y = c x (Mul) or x / c (Div) by a constant scalar: one-branch rescale with the signed
        multiplier M = round(c s_x / s_y 2^S)."""
        factor = match_scale(node, x)
        qx = self.quant_of(x)
        out, lo, hi, folded = self._clamp(node.outputs[0])
        qp_out = self.qparams(out)
        base = node.name or out.name
        if factor == 0:
            return self.island(node, "multiplies by 0")
        try:
            m, s = dyadic_bounded(factor * qx.qp.scale / qp_out.scale, 1 << 8)
        except DyadicError as exc:
            raise ValueError(f"{label(node)}: {exc}") from None
        y = self.emit.requantize_branches([(qx.value, qx.qp, m)], s, qp_out, lo, hi, out.shape, base)
        self._replaced([node, *folded], out, y, qp_out)
        self.stats["integer_scales"] += 1
        self.notes.append(f"{label(node)} by {factor:.6g} -> integer rescale")

    def lower_constant_add(self, node: Node) -> None:
        """x + C with a constant float tensor C: the per-branch rescale of the residual Add with
        the constant's branch precomputed exactly at the pre-shift scale, round(C 2^S / s_out)."""
        x = node.inputs[0] if self.is_dyn_float(node.inputs[0]) else node.inputs[1]
        c = constant_array(node.inputs[1] if x is node.inputs[0] else node.inputs[0]).astype(np.float64)
        qx = self.quant_of(x)
        out, lo, hi, folded = self._clamp(node.outputs[0])
        qp_out = self.qparams(out)
        base = node.name or out.name
        try:
            (m,), s = shared_shift_multipliers([qx.qp.scale / qp_out.scale])
        except DyadicError as exc:
            raise ValueError(f"{label(node)}: {exc}") from None
        offset = np.rint(np.ldexp(c / qp_out.scale, s))
        if np.abs(offset).max(initial=0) >= 2.0 ** 60:
            return self.island(node, "its constant is too large for the output scale")
        y = self.emit.requantize_branches([(qx.value, qx.qp, m)], s, qp_out, lo, hi, out.shape, base, offset=offset.astype(np.int64))
        self._replaced([node, *folded], out, y, qp_out)
        self.stats["integer_adds"] += 1
        self.notes.append(f"{label(node)} -> integer add of a constant {list(c.shape)} at the pre-shift scale")

    def lower_gelu(self, nodes: list[Node], x: Value, divisor: float) -> None:
        """Exact GELU (the Gelu op or x * (erf(x / sqrt2) + 1) * 0.5) -> I-BERT i-GELU."""
        out = nodes[-1].outputs[0]
        qx, qp_out = self.quant_of(x), self.qparams(out)
        try:
            consts = ibert.gelu_constants(qx.qp.scale, max(qx.qp.zero_point - qx.qp.qmin, qx.qp.qmax - qx.qp.zero_point), qp_out.scale, divisor)
        except ibert.KernelRangeError as exc:
            return self.island(nodes[0], str(exc))  # the rest of the pattern follows as islands
        y = ibert.emit_gelu(self.emit, qx.value, qx.qp, qp_out, consts, nodes[0].name or out.name)
        self._replaced(nodes, out, y, qp_out)
        self.stats["integer_gelus"] += 1
        self.notes.append(f"GELU ({' + '.join(n.op_type for n in nodes)}) -> integer i-GELU (erf argument refined x{consts.k})")

    def lower_softmax(self, node: Node) -> None:
        x, out = node.inputs[0], node.outputs[0]
        rank = len(x.shape) if x.shape is not None else 0
        axis = node.attributes["axis"].as_int() if "axis" in node.attributes else -1
        if not rank or not isinstance(x.shape[axis % rank], int):
            return self.island(node, "its softmax axis has no static size")
        qx, qp_out = self.quant_of(x), self.qparams(out)
        try:
            consts = ibert.softmax_constants(qx.qp.scale, qp_out.scale, x.shape[axis % rank])
        except ibert.KernelRangeError as exc:
            return self.island(node, str(exc))
        y = ibert.emit_softmax(self.emit, qx.value, qx.qp, qp_out, axis % rank, consts, node.name or out.name)
        self._replaced([node], out, y, qp_out)
        self.stats["integer_softmaxes"] += 1
        self.notes.append(f"{label(node)} -> integer i-exp Softmax (argument refined x{consts.k}, reciprocal 2^-{consts.precision})")

    def lower_layer_norm(self, node: Node) -> None:
        x, out = node.inputs[0], node.outputs[0]
        rank = len(x.shape) if x.shape is not None else 0
        axis = (node.attributes["axis"].as_int() if "axis" in node.attributes else -1) % max(rank, 1)
        axes = list(range(axis, rank))
        gamma = constant_array(node.inputs[1])
        beta = constant_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        if any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
            return self.island(node, "its Mean/InvStdDev outputs are used")
        if gamma is None or (len(node.inputs) > 2 and node.inputs[2] is not None and beta is None):
            return self.island(node, "its scale/bias are not constants")
        if not rank or not all(isinstance(x.shape[a], int) for a in axes):
            return self.island(node, "its normalised axes have no static size")
        qx, qp_out = self.quant_of(x), self.qparams(out)
        eps = node.attributes["epsilon"].as_float() if "epsilon" in node.attributes else 1e-5
        try:
            consts = ibert.layer_norm_constants(qx.qp.scale, qp_out.scale, math.prod(x.shape[a] for a in axes), eps, gamma, beta,
                                                qx.qp.qmax - qx.qp.qmin)
        except ibert.KernelRangeError as exc:
            return self.island(node, str(exc))
        y = ibert.emit_layer_norm(self.emit, qx.value, qp_out, axes, consts, node.name or out.name)
        self._replaced([node], out, y, qp_out)
        self.stats["integer_layer_norms"] += 1
        self.notes.append(f"{label(node)} -> integer LayerNorm ({consts.iterations} Newton steps for the square root)")

    # -- outputs and cleanup -----------------------------------------------------------------------
    def finish_outputs(self) -> None:
        removed = {id(n) for n in self.removed}
        made: dict[int, Value] = {}
        for index, value in enumerate(list(self.graph.outputs)):
            producer = value.producer()
            if value.is_graph_input() or id(value) not in self.qmap or producer is None or id(producer) not in removed:
                continue  # a float island output, or a graph input passed through: unchanged
            if id(value) not in made:
                q = self.qmap[id(value)]
                name = value.name
                value.name = self.emit.name(f"{name}_float")
                dq = self.emit.dequantize_linear(q.value, q.qp, f"{name}_dq")
                self.emit.taken.discard(dq.name)
                dq.name = name
                made[id(value)] = dq
            self.graph.outputs[index] = made[id(value)]

    def cleanup(self) -> None:
        inputs = [v for n in self.removed for v in n.inputs if v is not None]
        self.graph.remove(list(dict.fromkeys(self.removed)), safe=True)
        for value in dict.fromkeys(inputs):
            if (value.is_initializer() and not value.uses() and not value.is_graph_input()
                    and not value.is_graph_output() and self.graph.initializers.get(value.name) is value):
                del self.graph.initializers[value.name]


@register_pass
@dataclasses.dataclass(frozen=True)
class QuantizeIntegerPass(Pass):
    """Calibrate on ``ctx.calibration`` and rewrite into the integer-only form (HAWQ-V3, dyadic).

    Options:
        bits: weight bits, 8 (codes in [-127, 127]), 7 ([-63, 63]: ONNX Runtime's reduce_range;
            the int8 convs on x86 CPUs without VNNI then run on the faster, still exact
            ``vpmaddubsw`` kernel) or 4 ([-7, 7]); stored offset-binary uint8 (+128, zero point
            128) next to uint8 activations, int8 next to int8 ones.
        observer: activation range observer, ``minmax`` | ``percentile`` | ``mse``.
        percentile: for ``observer=percentile``, the upper percentile (lower is 100 - p).
        activations: ``uint8`` (asymmetric, default) or ``int8`` (symmetric).
        bias_correction: add (W - W_dq) E[x] to each layer's bias (see ``bias_correction``).
        rounding: ``nearest`` (round each weight to its nearest code) or ``gptq`` (choose the
            codes that minimise each layer's output error on the calibration data, ``gptq``).
        exclude: node names kept float (as islands), e.g. a sensitive first or last layer.
        bits_map: per-layer weight bits, entries ``name@8`` / ``name@4`` / ``name@float``
            (``quantize{bits_map=conv1@4:fc@8}``); overrides ``bits`` for those layers and the
            ``BITS_MAP_KEY`` model metadata that ``mixed-precision`` writes (read, then removed).
        pack_int4: store 4-bit weights next to uint8 activations packed two per byte, unpacked by
            an integer subgraph (``passes.quantize.int4``; the artifact keeps them packed); false
            keeps them in 8-bit containers (codes in [-7, 7]).

    Needs: CONSTANTS_LIFTED (weights are initializers), BN_FOLDED (BN would be an island),
        SHAPES_INFERRED (dtypes of activations, static pool sizes).
    Provides: INTEGER_ONLY. Preserves: SHAPES_INFERRED (every new value has dtype and shape),
        CONSTANTS_LIFTED, BN_FOLDED, TOPO_SORTED, NO_IDENTITY.

    Before -> after (ONNX text, uint8 activations; see the package docstring for Requantize)::

        c = Conv (x, W, b)                 xq  = QuantizeLinear (x, s_x, zp_x)
        r = Relu (c)                       acc = ConvInteger (xq, W_u8, zp_x, 128)
        y = Gemm <transB=1> (f, V, d)      acc = Add (acc, b_q)
                                           rq  = Requantize (acc) with clamp [zp_r, 255]
                                           ...
                                           y   = DequantizeLinear (yq, s_y, zp_y)
    """

    name = "quantize"
    needs = frozenset({Fact.CONSTANTS_LIFTED, Fact.BN_FOLDED, Fact.SHAPES_INFERRED})
    provides = frozenset({Fact.INTEGER_ONLY})
    preserves = frozenset({Fact.SHAPES_INFERRED, Fact.CONSTANTS_LIFTED, Fact.BN_FOLDED, Fact.TOPO_SORTED, Fact.NO_IDENTITY})
    tolerance = Tolerance.LOSSY

    bits: int = 8
    observer: str = "minmax"
    percentile: float = 99.99
    activations: str = "uint8"
    bias_correction: bool = False
    rounding: str = "nearest"
    exclude: tuple[str, ...] = ()
    bits_map: tuple[str, ...] = ()
    pack_int4: bool = True

    def run(self, model: Model, ctx: CompileContext) -> PassResult:
        check_quantize_options(self.bits, self.observer, self.percentile, self.activations, ctx)
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"option rounding={self.rounding}: must be one of {', '.join(ROUNDINGS)}")
        layer_bit_map(model, self.bits_map)  # reject a malformed map before any work
        return _IntegerRewrite(model, self, ctx).run()
