"""Per-layer, per-precision sensitivity and cost tables for mixed precision (issue 5, HAWQ-V3 part 2).

For every layer the ``quantize`` pass would make integer (a Conv / Gemm / MatMul with a constant
weight, ``layers.match_layer``) and every precision choice:

* **sensitivity** (output perturbation, PD-Quant style): only that layer's weights are quantized,
  simulated in float (``W -> s_w * round(W / s_w)``, symmetric per output channel exactly as
  ``qparams.quantize_weight`` does it), every other layer and every activation stays fp32; the
  model runs in ONNX Runtime on ``ctx.calibration`` and the change of its outputs against fp32 is
  measured as the mean squared error of the float outputs (``metric="mse"``) or the mean KL
  divergence softmax(fp32) || softmax(perturbed) of the first output along its last axis
  (``metric="kl"``). The float choice has sensitivity 0 by definition. Per-layer sensitivities are
  assumed additive (the ILP's objective), as in HAWQ-V3. One ORT session serves the whole table:
  the layer weights are made overridable graph inputs (their initializers stay as defaults).
  The second-order estimator (Hessian trace x squared quantization error, HAWQ) is
  ``passes.quantize.hessian``, same table format.

* **costs** per choice (all estimates, labelled so):
    size     bytes of the layer's stored parameters: weights at ``w_bits`` (int4 counted packed,
             two per byte, as the ONNX graph and the artifact store it) + int32 bias; float: 4 bytes each.
    bops     MACs * w_bits * a_bits (activations are 8 bits in the integer form; float 32 x 32).
    latency  ``ctx.cost_model.time_node`` of the layer's integer kernel (ConvInteger / MatMulInteger:
             uint8 input, ``w_bits`` weight bytes, int32 accumulator out; precision ``int4`` with
             half the weight bytes only when the target lists int4 and the cost model has an int4
             peak; else what the artifact does (targets/lowering/int4.py): int8 compute on int8
             weights unpacked per inference, plus the unpack kernel and, for a conv, the per-call
             weight re-layout, so on such targets 4 bits save size, not time) plus its requantize
             epilogue modelled as one fused element-wise
             kernel (8 ops per output element, int32 in, 8-bit out, per-channel M/S/bias read);
             float fallback: the float node (fp32 bytes, fp32 peak) plus the DequantizeLinear /
             QuantizeLinear at the island's boundary.
  Only the layers' own costs are modelled: the rest of the graph does not depend on the choice, so
  latency and size budgets are about the quantizable layers (relative budgets ``0.7x`` are relative
  to those layers at uniform int8).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import onnx

from compiler.context import Feeds
from compiler.ir import Model, constant_array, to_proto
from compiler.verify import ort_session
from passes.quantize.layers import Layer, dynamic_values, match_layer
from passes.quantize.qparams import quantize_weight

__all__ = ["CHOICES", "LayerInfo", "find_layers", "layer_costs", "measure_sensitivity", "parse_choice"]

#: Precision choices: name -> weight bits (32 = float fallback, an island of the integer graph).
CHOICES = {"8": 8, "4": 4, "float": 32}
ACT_BITS = 8


def parse_choice(text: str | int) -> str:
    key = str(text).strip().lower().removeprefix("int")
    if key in ("fp32", "f32", "32"):
        key = "float"
    if key not in CHOICES:
        raise ValueError(f"precision choice {text!r}: expected 8, 4 or float")
    return key


@dataclasses.dataclass
class LayerInfo:
    """What mixed precision needs of one quantizable layer."""

    name: str  # node name (the key of the quantize pass's bit map)
    label: str
    op_type: str
    weight_name: str  # the raw initializer (its own layout)
    weight_axis: int  # output-channel axis of the raw initializer
    weight_elems: int
    channels: int
    macs: int
    x_elems: int
    out_elems: int
    fp32_bytes: int  # bytes the float node moves (node_work)


def _elems(value) -> int | None:
    shape = value.shape if value is not None else None
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return int(math.prod(shape))


def find_layers(model: Model) -> tuple[list[LayerInfo], list[str]]:
    """The layers ``quantize`` would make integer, and notes for those mixed precision skips."""
    from targets.cost_model import node_work

    dynamic = dynamic_values(model)
    layers: list[LayerInfo] = []
    skipped: list[str] = []
    seen: set[str] = set()
    for index, node in enumerate(model.graph):
        layer = match_layer(node, dynamic)
        if not isinstance(layer, Layer):
            continue
        if not node.name or node.name in seen:
            skipped.append(f"{layer.label}: no unique node name, keeps the quantize pass's default bits")
            continue
        w_value = node.inputs[1]
        if w_value.name is None or constant_array(w_value) is None or len(w_value.uses()) != 1:
            skipped.append(f"{layer.label}: weight shared or unnamed, keeps the default bits")
            continue
        raw = constant_array(w_value)
        if node.op_type == "Conv":
            axis = 0
        elif node.op_type == "Gemm":
            trans_b = node.attributes.get("transB")
            axis = 0 if trans_b is not None and trans_b.as_int() else 1
        else:
            axis = raw.ndim - 1
        work = node_work(node, index)
        x_elems, out_elems = _elems(layer.x), _elems(layer.output)
        if x_elems is None or out_elems is None or not work.known:
            skipped.append(f"{layer.label}: shapes not static, keeps the default bits")
            continue
        seen.add(node.name)
        layers.append(LayerInfo(node.name, layer.label, node.op_type, w_value.name, axis, int(raw.size), layer.channels,
                                int(work.macs), x_elems, out_elems, int(work.bytes)))
    return layers, skipped


def fake_quantized(weight: np.ndarray, axis: int, bits: int) -> np.ndarray:
    """dequant(quant(W)) per output channel, as the integer form stores it (float32)."""
    q, scales = quantize_weight(weight, axis, bits)
    shape = [1] * weight.ndim
    shape[axis % weight.ndim] = -1
    return (q.astype(np.float64) * scales.astype(np.float64).reshape(shape)).astype(weight.dtype)


def _overridable(model: Model, names: Sequence[str]) -> onnx.ModelProto:
    proto = to_proto(model)
    inputs = {i.name for i in proto.graph.input}
    for init in proto.graph.initializer:
        if init.name in names and init.name not in inputs:
            proto.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return proto


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _distance(ref: list[np.ndarray], got: list[np.ndarray], metric: str) -> float:
    if metric == "kl":
        p, q = _softmax(ref[0].astype(np.float64)), _softmax(got[0].astype(np.float64))
        kl = (p * (np.log(np.maximum(p, 1e-30)) - np.log(np.maximum(q, 1e-30)))).sum(axis=-1)
        return float(kl.mean())
    errs = [float(np.mean((r.astype(np.float64) - g.astype(np.float64)) ** 2)) for r, g in zip(ref, got)]
    return float(np.mean(errs)) if errs else 0.0


def measure_sensitivity(
    model: Model,
    layers: Sequence[LayerInfo],
    calibration: Sequence[Feeds],
    bits: Sequence[int] = (8, 4),
    metric: str = "mse",
) -> dict[str, dict[str, float]]:
    """``{layer name: {"8": s8, "4": s4, "float": 0.0}}``: output perturbation of each layer alone."""
    if metric not in ("mse", "kl"):
        raise ValueError(f"sensitivity metric {metric!r}: expected mse or kl")
    if not calibration:
        raise ValueError("sensitivity needs calibration data (ctx.calibration is empty)")
    names = [l.weight_name for l in layers]
    session = ort_session(_overridable(model, names))
    inputs = {i.name for i in session.get_inputs()}
    float_outputs = [o.name for o in session.get_outputs() if o.type == "tensor(float)"]
    if not float_outputs:
        raise ValueError("sensitivity needs a float model output")
    batches = [{k: v for k, v in feed.items() if k in inputs} for feed in calibration]
    reference = [session.run(float_outputs, feed) for feed in batches]
    weights = {v.name: constant_array(v) for v in model.graph.initializers.values() if v.name in names}
    table: dict[str, dict[str, float]] = {}
    for layer in layers:
        row = {"float": 0.0}
        for b in bits:
            override = {layer.weight_name: fake_quantized(weights[layer.weight_name], layer.weight_axis, b)}
            dist = [_distance(ref, session.run(float_outputs, {**feed, **override}), metric) for ref, feed in zip(reference, batches)]
            row[str(b)] = float(np.mean(dist))
        table[layer.name] = row
    return table


def _int4_compute(cost_model, target) -> bool:
    has_peak = "int4" in getattr(cost_model, "peak_gops", {})
    return has_peak and (target is None or bool(getattr(target, "supports", lambda p: False)("int4")))


def layer_costs(layer: LayerInfo, choice: str, cost_model=None, target=None) -> dict[str, float]:
    """``{"size": bytes, "bops": bit operations, "latency": seconds (estimate; 0 without a cost model)}``."""
    from targets.cost_model import NodeWork

    w_bits = CHOICES[choice]
    if choice == "float":
        size = 4 * layer.weight_elems + 4 * layer.channels
        bops = layer.macs * 32 * 32
    else:
        size = math.ceil(layer.weight_elems * w_bits / 8) + 4 * layer.channels
        bops = layer.macs * w_bits * ACT_BITS
    latency = 0.0
    if cost_model is not None:
        works: list[NodeWork] = []

        def work(name: str, op: str, macs: int, ops: int, params: int, nbytes: int, precision: str) -> NodeWork:
            return NodeWork(name=name, op_type=op, output_shapes=(), macs=macs, ops=ops, params=params, bytes=nbytes,
                            precision=precision, known=True)

        if choice == "float":
            works.append(work(layer.label, layer.op_type, layer.macs, 2 * layer.macs, layer.weight_elems, layer.fp32_bytes, "fp32"))
            works.append(work(f"{layer.label} dq", "DequantizeLinear", 0, layer.x_elems, 0, 5 * layer.x_elems, "fp32"))
            works.append(work(f"{layer.label} q", "QuantizeLinear", 0, layer.out_elems, 0, 5 * layer.out_elems, "fp32"))
        else:
            native4 = w_bits == 4 and _int4_compute(cost_model, target)
            precision = "int4" if native4 else "int8"
            # without int4 compute the kernel reads the unpacked int8 weights (targets/lowering/int4.py)
            weight_bytes = math.ceil(layer.weight_elems * w_bits / 8) if native4 or w_bits == 8 else layer.weight_elems
            kernel_bytes = layer.x_elems + weight_bytes + 4 * layer.out_elems
            op = "ConvInteger" if layer.op_type == "Conv" else "MatMulInteger"
            works.append(work(layer.label, op, layer.macs, 2 * layer.macs, layer.weight_elems, kernel_bytes, precision))
            if w_bits == 4 and not native4:
                # the per-inference unpack (read n/2 packed bytes, write n, ~3 ops each) and, for a
                # conv, the schedule's per-call weight re-layout (read and write n)
                n = layer.weight_elems
                works.append(work(f"{layer.label} int4 unpack", "Cast", 0, 3 * n, 0, math.ceil(n / 2) + n, "int8"))
                if layer.op_type == "Conv":
                    works.append(work(f"{layer.label} weight re-layout", "Transpose", 0, 0, 0, 2 * n, "int8"))
            works.append(work(f"{layer.label} requantize", "Requantize", 0, 8 * layer.out_elems, 0,
                              5 * layer.out_elems + 20 * layer.channels, "int32"))
        latency = sum(cost_model.time_node(w).seconds for w in works)
    return {"size": float(size), "bops": float(bops), "latency": float(latency)}
