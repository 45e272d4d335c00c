"""``export-qdq``: the QuantizeLinear/DequantizeLinear (QDQ) form for ONNX Runtime and TensorRT.

The graph stays float; quantization is expressed by Q/DQ pairs that those runtimes fuse into
integer kernels (``--format qdq``). Same calibration, observers and qparams as ``quantize``:

* every float graph input, and every activation read by a quantizable op (Conv, Gemm, MatMul, Add,
  Concat, MaxPool, GlobalAveragePool, AveragePool), gets ``x -> QuantizeLinear -> DequantizeLinear``
  with its calibrated per-tensor (scale, zero point); the pair is shared by all such consumers;
* a Conv/Gemm/MatMul constant weight becomes an int8 initializer (symmetric, per output channel,
  [-127, 127] or [-7, 7]) read through ``DequantizeLinear(W_q, s_w, axis=c)``; the output-channel
  axis is 0 for Conv and for Gemm with transB=1, 1 for Gemm with transB=0 and for MatMul;
* a Conv bias becomes int32 = round(b / (s_x * s_w)) read through ``DequantizeLinear(b_q, s_x*s_w,
  axis=0)`` (ONNX Runtime's QDQ Conv fusion expects exactly this); Gemm/MatMul biases stay float.

Before -> after (ONNX text)::

    y = Conv (x, W, b)       xq = QuantizeLinear (x, s_x, zp_x);  xd = DequantizeLinear (xq, s_x, zp_x)
                             Wd = DequantizeLinear <axis=0> (W_q, s_w)
                             bd = DequantizeLinear <axis=0> (b_q, s_x*s_w)
                             y  = Conv (xd, Wd, bd)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from compiler.context import CompileContext
from compiler.ir import DataType, Model, Node, Value, ir
from compiler.pass_base import Fact, Pass, PassResult, Tolerance, register_pass
from passes.quantize.bias_correction import bias_correction, input_channel_axis
from passes.quantize.calibrate import collect_statistics
from passes.quantize.emit import Emitter
from passes.quantize.integer import check_quantize_options, label, prepare_graph
from passes.quantize.layers import FLOAT_TYPES, Layer, is_onnx, match_layer
from passes.quantize.qparams import activation_qparams, quantize_bias, quantize_weight

__all__ = ["ExportQdqPass", "QDQ_OPS"]

#: Ops whose float activation inputs get a Q/DQ pair.
QDQ_OPS = ("Conv", "Gemm", "MatMul", "Add", "Concat", "MaxPool", "GlobalAveragePool", "AveragePool")


def _int_attr(node: Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_int()


def _weight_axis(layer: Layer) -> int:
    """Output-channel axis of the weight *as stored in the node* (not the normalised layout)."""
    if is_onnx(layer.node, "Conv"):
        return 0
    if is_onnx(layer.node, "Gemm"):
        return 0 if _int_attr(layer.node, "transB", 0) else 1
    return 1


def _normalised_dequantized(layer: Layer, w_q: np.ndarray, scales: np.ndarray, axis: int) -> np.ndarray:
    """s_w * W_q brought into ``layer.weight``'s layout (Gemm: transposed, alpha applied)."""
    shape = [1] * w_q.ndim
    shape[axis] = -1
    w = w_q.astype(np.float64) * scales.astype(np.float64).reshape(shape)
    if is_onnx(layer.node, "Gemm"):
        w = w.T if _int_attr(layer.node, "transB", 0) else w
        alpha = layer.node.attributes.get("alpha")
        w = w * (alpha.as_float() if alpha is not None else 1.0)
    return w


@register_pass
@dataclasses.dataclass(frozen=True)
class ExportQdqPass(Pass):
    """Rewrite into the QDQ form (see the module docstring). Options as ``quantize``.

    Needs: CONSTANTS_LIFTED, BN_FOLDED, SHAPES_INFERRED. Provides: QDQ_FORM.
    Preserves: SHAPES_INFERRED, CONSTANTS_LIFTED, BN_FOLDED, TOPO_SORTED, NO_IDENTITY.
    """

    name = "export-qdq"
    needs = frozenset({Fact.CONSTANTS_LIFTED, Fact.BN_FOLDED, Fact.SHAPES_INFERRED})
    provides = frozenset({Fact.QDQ_FORM})
    preserves = frozenset({Fact.SHAPES_INFERRED, Fact.CONSTANTS_LIFTED, Fact.BN_FOLDED, Fact.TOPO_SORTED, Fact.NO_IDENTITY})
    tolerance = Tolerance.LOSSY

    bits: int = 8
    observer: str = "minmax"
    percentile: float = 99.99
    activations: str = "uint8"
    bias_correction: bool = False

    def run(self, model: Model, ctx: CompileContext) -> PassResult:
        check_quantize_options(self.bits, self.observer, self.percentile, self.activations, ctx)
        graph = model.graph
        taken = {v.name for v in graph.inputs if v.name} | set(graph.initializers)
        taken |= {v.name for node in graph for v in node.outputs if v.name}
        emit = Emitter(graph, taken)
        dynamic, dyn_float = prepare_graph(model, emit)
        if not dyn_float:
            return PassResult(model, False, {}, ["no float activations: nothing to quantize"])
        original = list(graph)
        layers = [layer for layer in (match_layer(n, dynamic) for n in original) if isinstance(layer, Layer)]

        # Which activations get a Q/DQ pair: float graph inputs, and inputs of the quantizable ops.
        def wanted(value: Value | None) -> bool:
            return value is not None and id(value) in dynamic and value.dtype in FLOAT_TYPES

        targets: dict[int, Value] = {id(v): v for v in graph.inputs if wanted(v) and v.uses()}
        for node in original:
            if is_onnx(node, *QDQ_OPS):
                for value in node.inputs:  # constant weights are not dynamic: only activations
                    if wanted(value):
                        targets[id(value)] = value
        means = [(l.x.name, input_channel_axis(l)) for l in layers] if self.bias_correction else []
        stats = collect_statistics(model, ctx.calibration, [v.name for v in targets.values()], self.observer, self.percentile, means)
        notes = [f"calibrated {len(stats.ranges)} tensors on {stats.batches} batches with observer '{self.observer}'"]

        # Activation pairs, inserted right after the producer (graph inputs: at the start).
        qparams = {}
        dq_of: dict[int, Value] = {}
        for value in targets.values():
            qp = activation_qparams(*stats.ranges[value.name], self.activations)
            qparams[id(value)] = qp
            q = emit.quantize_linear(value, qp, f"{value.name}_q")
            dq_of[id(value)] = emit.dequantize_linear(q, qp, f"{value.name}_dq")
            producer = value.producer()
            if producer is None:
                emit.flush_at_start()
            else:
                graph.insert_after(producer, emit.pending)
                emit.pending = []
        for node in original:
            quantizable = is_onnx(node, *QDQ_OPS)
            for index, value in enumerate(node.inputs):
                if value is None or id(value) not in dq_of:
                    continue
                # Graph inputs are read through their pair by every consumer; other activations
                # only by the quantizable ops (a Conv -> Relu edge stays float, as ORT fuses it).
                if value.producer() is None or quantizable:
                    node.replace_input_with(index, dq_of[id(value)])

        replaced: list[Value] = []
        for layer in layers:
            replaced += self._quantize_layer(layer, emit, qparams, stats.channel_means, notes)
        for value in dict.fromkeys(replaced):
            if value.is_initializer() and not value.uses() and not value.is_graph_input() and not value.is_graph_output():
                del graph.initializers[value.name]
        stats_out = {"activation_pairs": len(dq_of), "quantized_weights": len(layers)}
        return PassResult(model, True, stats_out, notes)

    def _quantize_layer(self, layer: Layer, emit: Emitter, qparams: dict, means: dict, notes: list[str]) -> list[Value]:
        """Weight (and Conv bias) through DequantizeLinear; returns the float initializers replaced."""
        node = layer.node
        base = node.name or node.outputs[0].name
        w_value = node.inputs[1]
        weight = w_value.const_value.numpy()
        axis = _weight_axis(layer)
        w_q, scales = quantize_weight(weight, axis, self.bits)
        old = [w_value]
        w_dq = emit.op(
            "DequantizeLinear", [emit.constant(f"{base}_w_q", w_q), emit.constant(f"{base}_w_scale", scales)],
            DataType.FLOAT, w_value.shape, f"{base}_w_dq", {"axis": axis},
        )
        correction = None
        if self.bias_correction:
            dq = _normalised_dequantized(layer, w_q, scales, axis)
            correction = bias_correction(layer, dq, means[(layer.x.name, input_channel_axis(layer))])
        x_scale = qparams[id(layer.x)].scale
        if is_onnx(node, "Conv") and (layer.bias is not None or correction is not None):
            bias = (layer.bias if layer.bias is not None else 0.0) + (correction if correction is not None else 0.0)
            b_q = quantize_bias(bias, x_scale, scales, where=label(node))
            b_scale = (np.float64(x_scale) * scales.astype(np.float64)).astype(np.float32)
            b_dq = emit.op(
                "DequantizeLinear", [emit.constant(f"{base}_b_q", b_q), emit.constant(f"{base}_b_scale", b_scale)],
                DataType.FLOAT, ir.Shape([b_q.shape[0]]), f"{base}_b_dq", {"axis": 0},
            )
            if len(node.inputs) < 3:
                node.resize_inputs(3)
            else:
                old.append(node.inputs[2])
            node.replace_input_with(2, b_dq)
        elif correction is not None:
            self._float_bias_correction(layer, correction, emit, old, notes)
        emit.flush_before(node)
        node.replace_input_with(1, w_dq)
        notes.append(f"{label(node)}: int{self.bits} weights per channel (axis {axis})"
                     + (", bias corrected" if correction is not None else ""))
        return old

    @staticmethod
    def _float_bias_correction(layer: Layer, correction: np.ndarray, emit: Emitter, old: list[Value], notes: list[str]) -> None:
        """Gemm: C' = beta*C + corr with beta=1; MatMul: the following constant Add absorbs corr."""
        node = layer.node
        base = node.name or node.outputs[0].name
        if is_onnx(node, "Gemm"):
            bias = (layer.bias if layer.bias is not None else 0.0) + correction
            if len(node.inputs) < 3:
                node.resize_inputs(3)
            elif node.inputs[2] is not None:
                old.append(node.inputs[2])
            node.replace_input_with(2, emit.constant(f"{base}_bias_corrected", bias.astype(np.float32)))
            node.attributes.pop("beta", None)  # beta is folded into the new C (default beta = 1)
        elif layer.bias_add is not None:
            add = layer.bias_add
            index = 1 if add.inputs[0] is node.outputs[0] else 0
            old.append(add.inputs[index])
            add.replace_input_with(index, emit.constant(f"{base}_bias_corrected", (layer.bias + correction).astype(np.float32)))
        else:
            notes.append(f"{label(node)}: no bias to correct (MatMul without a following constant Add)")
