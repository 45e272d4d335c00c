"""Accuracy report for quantized compiles: per-layer output SQNR and final-output agreement.

``layer_sqnr`` compares every float tensor of the original model with the 8-bit tensor that stands
for it in the quantized model, so a user sees which layer hurts. The mapping comes from the
``edgekiln.quant_map`` model metadata that the ``quantize`` pass writes
(``passes.quantize.integer.QUANT_MAP_KEY``): ``{original tensor: [quantized tensor, scale, zero
point]}``. Both models run in ONNX Runtime with those tensors added as extra outputs (the same
helper calibration uses); the quantized tensor is dequantized as ``scale * (q - zero_point)`` and

    SQNR_dB = 10 log10(sum(x^2) / sum((x - x_dq)^2))        (inf when exact)

is summed over every element of every batch. A tensor after a folded Relu/Clip (or the Add of a
MatMul's bias) is attributed to the layer that produced it (the Conv/Gemm/MatMul), with the folded
ops listed under ``fused``.

``output_agreement`` compares the final outputs: top-1 agreement (argmax over the last axis),
cosine similarity and the largest absolute difference.

Example (from the repository root)::

    from compiler.quant_report import layer_sqnr, output_agreement
    rows = layer_sqnr(float_model, quantized_model, feeds_list)
    rows[0]   # the worst layer: {'node': 'conv2', 'op_type': 'Conv', 'sqnr_db': 31.2, ...}
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np

from compiler.ir import Model, Node, Value, constant_array
from passes.quantize.calibrate import _sweeps
from passes.quantize.integer import QUANT_MAP_KEY

__all__ = ["QUANT_MAP_KEY", "layer_sqnr", "output_agreement", "quant_map", "sqnr_db"]

_ACTIVATIONS = ("Relu", "Clip")
_REQUANTIZING = ("Conv", "Gemm", "MatMul", "Add", "Sum", "Mul", "Div", "GlobalAveragePool")


def quant_map(quantized: Model) -> dict[str, tuple[str, float, int]]:
    """The ``{original tensor: (quantized tensor, scale, zero point)}`` record of a quantized model.

    Raises:
        ValueError: the model carries no (or a malformed) record, i.e. it was not produced by the
            ``quantize`` pass.
    """
    text = quantized.metadata_props.get(QUANT_MAP_KEY) if quantized.metadata_props else None
    if not text:
        raise ValueError(f"the quantized model has no '{QUANT_MAP_KEY}' metadata (was it produced by the 'quantize' pass?)")
    try:
        return {str(k): (str(v[0]), float(v[1]), int(v[2])) for k, v in json.loads(text).items()}
    except (ValueError, TypeError, IndexError, AttributeError):
        raise ValueError(f"model metadata '{QUANT_MAP_KEY}' is not a JSON object of name -> [name, scale, zero point]") from None


def sqnr_db(signal: float, noise: float) -> float:
    """``10 log10(signal / noise)`` for summed squares; inf when exact, -inf for a zero signal."""
    if noise <= 0.0:
        return math.inf
    if signal <= 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _single_use(value: Value) -> bool:
    return len(value.uses()) == 1 and not value.is_graph_output()


def _layer_of(value: Value) -> tuple[Node | None, list[str]]:
    """The node a tensor's error is charged to, and the ops folded after it (see module docstring)."""
    node = value.producer()
    fused: list[str] = []
    if node is None:
        return None, fused
    if node.domain in ("", "ai.onnx") and node.op_type in _ACTIVATIONS and node.inputs and node.inputs[0] is not None:
        head = node.inputs[0].producer()
        if head is not None and head.op_type in _REQUANTIZING and _single_use(node.inputs[0]):
            fused.insert(0, node.op_type)
            node = head
    if node.op_type == "Add" and len(node.inputs) == 2:
        # MatMul + Add(constant bias): the Add is folded into the integer layer
        dyn = [v for v in node.inputs if v is not None and constant_array(v) is None]
        if len(dyn) == 1 and dyn[0].producer() is not None and dyn[0].producer().op_type == "MatMul" and _single_use(dyn[0]):
            fused.insert(0, "Add")
            node = dyn[0].producer()
    return node, fused


def _tensors(model: Model) -> dict[str, Value]:
    values = {v.name: v for v in model.graph.inputs if v.name}
    values.update({v.name: v for node in model.graph for v in node.outputs if v.name})
    return values


def layer_sqnr(original: Model, quantized: Model, feeds_list: Sequence[dict[str, np.ndarray]]) -> list[dict]:
    """Per-layer SQNR of the quantized model against the float one, worst layer first.

    Args:
        original: the float model (before ``quantize``; after the same canonicalization).
        quantized: the model ``quantize`` produced (carries the ``QUANT_MAP_KEY`` metadata).
        feeds_list: input batches (e.g. the calibration or evaluation data split into batches).

    Returns:
        One dict per original float tensor with an 8-bit stand-in, sorted by ``sqnr_db`` ascending:
        ``node`` (the layer's node name, or the tensor name for a graph input), ``op_type``
        (``"input"`` for a graph input), ``fused`` (folded ops), ``tensor``, ``quantized``,
        ``scale``, ``zero_point``, ``sqnr_db`` (float; inf when exact), ``elements``.

    Raises:
        ValueError: ``quantized`` has no quantization record, or ``feeds_list`` is empty.
        passes.quantize.calibrate.CalibrationError: a batch does not run.
    """
    if not feeds_list:
        raise ValueError("layer_sqnr needs at least one input batch")
    mapping = quant_map(quantized)
    float_values, quant_values = _tensors(original), _tensors(quantized)
    pairs = {name: entry for name, entry in mapping.items() if name in float_values and entry[0] in quant_values}
    names = sorted(pairs)
    signal = dict.fromkeys(names, 0.0)
    noise = dict.fromkeys(names, 0.0)
    elements = dict.fromkeys(names, 0)
    mismatched: set[str] = set()
    float_sweep = _sweeps(original, feeds_list, names)
    quant_sweep = _sweeps(quantized, feeds_list, list(dict.fromkeys(pairs[n][0] for n in names)))
    for x_arrays, q_arrays in zip(float_sweep(), quant_sweep()):
        for name in names:
            qname, scale, zero_point = pairs[name]
            x = np.asarray(x_arrays[name], dtype=np.float64)
            q = np.asarray(q_arrays[qname])
            if x.shape != q.shape:
                mismatched.add(name)
                continue
            xq = scale * (q.astype(np.float64) - zero_point)
            signal[name] += float(np.sum(x * x))
            noise[name] += float(np.sum((x - xq) ** 2))
            elements[name] += x.size
    rows = []
    for name in names:
        if name in mismatched:
            continue
        qname, scale, zero_point = pairs[name]
        node, fused = _layer_of(float_values[name])
        rows.append({
            "node": (node.name or name) if node is not None else name,
            "op_type": node.op_type if node is not None else "input",
            "fused": fused,
            "tensor": name,
            "quantized": qname,
            "scale": scale,
            "zero_point": zero_point,
            "sqnr_db": sqnr_db(signal[name], noise[name]),
            "elements": elements[name],
        })
    rows.sort(key=lambda r: (r["sqnr_db"], r["node"]))
    return rows


def output_agreement(original: Model, quantized: Model, feeds_list: Sequence[dict[str, np.ndarray]]) -> dict:
    """How close the quantized model's final outputs are to the float model's.

    Outputs are matched by name (``quantize`` keeps the graph output names). The headline numbers
    are for the first output: ``top1_agreement`` (share of rows whose argmax over the last axis
    agrees, in [0, 1]), ``cosine`` (of the flattened outputs over all batches) and ``max_abs``.
    ``outputs`` has the same numbers for every matched float output.

    Raises:
        ValueError: no float output of ``original`` is an output of ``quantized``, or no batches.
    """
    if not feeds_list:
        raise ValueError("output_agreement needs at least one input batch")
    quant_outputs = {v.name for v in quantized.graph.outputs}
    names = [v.name for v in original.graph.outputs
             if v.name in quant_outputs and v.dtype is not None and v.dtype.is_floating_point()]
    if not names:
        raise ValueError("the quantized model has none of the float model's float outputs")
    acc = {n: {"agree": 0, "rows": 0, "dot": 0.0, "xx": 0.0, "yy": 0.0, "max_abs": 0.0} for n in names}
    for x_arrays, y_arrays in zip(_sweeps(original, feeds_list, names)(), _sweeps(quantized, feeds_list, names)()):
        for n in names:
            x = np.asarray(x_arrays[n], dtype=np.float64)
            y = np.asarray(y_arrays[n], dtype=np.float64).reshape(x.shape)
            a = acc[n]
            if x.ndim >= 1 and x.size:
                rx, ry = x.reshape(-1, x.shape[-1]), y.reshape(-1, x.shape[-1])
                a["agree"] += int(np.sum(rx.argmax(axis=-1) == ry.argmax(axis=-1)))
                a["rows"] += rx.shape[0]
            a["dot"] += float(np.sum(x * y))
            a["xx"] += float(np.sum(x * x))
            a["yy"] += float(np.sum(y * y))
            a["max_abs"] = max(a["max_abs"], float(np.max(np.abs(x - y), initial=0.0)))
    per = {}
    for n, a in acc.items():
        norm = math.sqrt(a["xx"] * a["yy"])
        cosine = a["dot"] / norm if norm > 0 else (1.0 if a["xx"] == a["yy"] == 0 else 0.0)
        per[n] = {"top1_agreement": a["agree"] / a["rows"] if a["rows"] else float("nan"),
                  "cosine": cosine, "max_abs": a["max_abs"]}
    return {**per[names[0]], "outputs": per}
