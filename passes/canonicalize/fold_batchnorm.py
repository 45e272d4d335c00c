"""``fold-batchnorm``: fold inference-mode BatchNormalization into the preceding Conv or Gemm."""

from __future__ import annotations

import dataclasses

import numpy as np

from compiler.context import CompileContext
from compiler.ir import Model, Node, Value, constant_array, ir
from compiler.pass_base import Fact, Pass, PassResult, Tolerance, register_pass
from passes.canonicalize._graph_utils import (
    is_onnx_op,
    new_initializer,
    remove_unused_initializers,
    unique_name,
    used_names,
)

_FLOAT_DTYPES = (np.float16, np.float32, np.float64)


@dataclasses.dataclass
class _Match:
    """A foldable ``producer -> BatchNormalization`` pair with its constant arrays."""

    producer: Node  # the Conv or Gemm
    weight: np.ndarray
    bias: np.ndarray | None  # Conv B / Gemm C; None when absent
    scale: np.ndarray  # gamma / sqrt(var + eps), float64, one per output channel
    shift: np.ndarray  # beta - mean * scale, float64


def _int_attr(node: Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_int()


def _float_attr(node: Node, name: str, default: float) -> float:
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_float()


def _match(bn: Node, opset: int) -> _Match | str:
    """The fold plan for ``bn``, or the reason it cannot be folded."""
    if len(bn.inputs) != 5 or any(v is None for v in bn.inputs):
        return "it does not have the five inputs X, scale, B, mean, var"
    if _int_attr(bn, "training_mode", 0) != 0 or (opset < 7 and _int_attr(bn, "is_test", 0) == 0):
        return "it is in training mode (batch statistics)"
    if _int_attr(bn, "spatial", 1) != 1:
        return "spatial=0 (per-activation statistics)"
    if any(out.uses() or out.is_graph_output() for out in bn.outputs[1:]):
        return "its running-statistics outputs are used (training form)"
    x = bn.inputs[0]
    producer = x.producer()
    if producer is None or not (is_onnx_op(producer, "Conv") or is_onnx_op(producer, "Gemm")):
        source = "a graph input" if producer is None else f"{producer.op_type} '{producer.name}'"
        return f"no preceding Conv or Gemm (its input comes from {source})"
    if producer.graph is not bn.graph:
        return f"{producer.op_type} '{producer.name}' is in another graph"
    if len(x.uses()) != 1 or x.is_graph_output():
        return f"the output '{x.name}' of {producer.op_type} '{producer.name}' has other consumers"
    stats = [constant_array(v) for v in bn.inputs[1:]]
    for value, array in zip(bn.inputs[1:], stats):
        if array is None:
            return f"'{value.name}' is not a constant initializer"
    weight = constant_array(producer.inputs[1]) if len(producer.inputs) > 1 else None
    if weight is None:
        return f"the weight of {producer.op_type} '{producer.name}' is not a constant initializer"
    if weight.dtype.type not in _FLOAT_DTYPES:
        return f"the weight of {producer.op_type} '{producer.name}' is {weight.dtype}, not float"
    bias_value = producer.inputs[2] if len(producer.inputs) > 2 else None
    bias = constant_array(bias_value)
    if bias_value is not None and bias is None:
        return f"the bias of {producer.op_type} '{producer.name}' is not a constant initializer"
    if is_onnx_op(producer, "Conv"):
        channels = weight.shape[0]  # W is (M, C/group, k...): output channels lead for any group
    else:
        channels = weight.shape[0] if _int_attr(producer, "transB", 0) else weight.shape[1]
    gamma, beta, mean, var = (np.asarray(a, dtype=np.float64) for a in stats)
    if any(a.shape != (channels,) for a in (gamma, beta, mean, var)):
        return f"its statistics do not have shape ({channels},) like the {producer.op_type} output channels"
    scale = gamma / np.sqrt(var + _float_attr(bn, "epsilon", 1e-5))
    return _Match(producer, weight, bias, scale, beta - mean * scale)


def _folded_conv(match: _Match) -> tuple[np.ndarray, np.ndarray]:
    """W' = W * s per output channel (axis 0); b' = (b - mean) * s + beta = b * s + shift."""
    w = match.weight.astype(np.float64)
    s = match.scale.reshape((-1,) + (1,) * (w.ndim - 1))
    b = 0.0 if match.bias is None else match.bias.astype(np.float64)
    return (w * s).astype(match.weight.dtype), (b * match.scale + match.shift).astype(match.weight.dtype)


def _folded_gemm(match: _Match) -> tuple[np.ndarray, np.ndarray]:
    """Y = alpha*A*B' + beta*C: scale B's output columns; C' = beta*C * s + shift (beta becomes 1).

    B is (K, N) with transB=0 and (N, K) with transB=1; the channel is N either way. C broadcasts
    to (M, N); ``C * s`` broadcasts along its last axis, so every allowed C shape stays allowed.
    """
    node = match.producer
    w = match.weight.astype(np.float64)
    w = w * match.scale[:, None] if _int_attr(node, "transB", 0) else w * match.scale[None, :]
    c = 0.0 if match.bias is None else _float_attr(node, "beta", 1.0) * match.bias.astype(np.float64)
    return w.astype(match.weight.dtype), (c * match.scale + match.shift).astype(match.weight.dtype)


def _rewrite(bn: Node, match: _Match, taken: set[str]) -> list[Value]:
    """Point the producer at new weights, bypass and remove ``bn``; returns the replaced values."""
    producer = match.producer
    graph = producer.graph
    old_inputs = [v for v in (*producer.inputs[1:3], *bn.inputs[1:]) if v is not None]
    if is_onnx_op(producer, "Conv"):
        weight, bias = _folded_conv(match)
    else:
        weight, bias = _folded_gemm(match)
        producer.attributes.pop("beta", None)  # C' already includes beta; default beta is 1
    stem = producer.name or producer.outputs[0].name
    producer.replace_input_with(1, new_initializer(graph, unique_name(f"{stem}_weight_bnfolded", taken), weight))
    if len(producer.inputs) < 3:
        producer.resize_inputs(3)
    producer.replace_input_with(2, new_initializer(graph, unique_name(f"{stem}_bias_bnfolded", taken), bias))

    x, y = bn.inputs[0], bn.outputs[0]
    if y.is_graph_output():
        # The producer output takes over the graph output and its name (names must stay stable).
        name = y.name
        y.replace_all_uses_with(x, replace_graph_outputs=True)
        y.name = None
        x.name = name
        x.type = x.type if x.type is not None else y.type
        x.shape = x.shape if x.shape is not None else y.shape
    else:
        y.replace_all_uses_with(x)
    bn.graph.remove(bn, safe=True)
    return old_inputs


@register_pass
@dataclasses.dataclass(frozen=True)
class FoldBatchNormPass(Pass):
    """Fold ``BatchNormalization`` (inference form) into the Conv or Gemm that feeds it.

    Needs: CONSTANTS_LIFTED (weights and statistics are read from initializers only).
    Provides: BN_FOLDED.
    Preserves: SHAPES_INFERRED, CONSTANTS_LIFTED, CONSTANTS_FOLDED, NO_IDENTITY, DEAD_CODE_FREE,
        TOPO_SORTED. Only a BN node disappears; the producer's output keeps BN's shape (and name
        when it was a graph output); the replaced initializers are deleted when nothing else reads
        them; new weights are initializers, not Constant nodes.

    With ``s = gamma / sqrt(var + eps)`` per output channel c::

        BN(Conv(x, W, b))[c]  = Conv(x, W', b')[c],  W'[c] = W[c] * s[c],  b' = (b - mean) * s + beta
        BN(Gemm(A, B, C))[:, c] = Gemm(A, B', C'),   B'[:, c] = B[:, c] * s[c]  (B[c, :] if transB)
                                                     C' = (beta_gemm * C - mean) * s + beta

    A missing Conv bias or Gemm C is b = 0. Any Conv group count works: W's axis 0 is the output
    channel. New tensors are computed in float64 and stored in the weight's dtype; the old ones are
    never modified (another node may share them). Ineligible BNs stay, with a note saying why:
    training mode, non-constant statistics or weights, a producer output with other consumers, or
    no Conv/Gemm producer.

    Before -> After (ONNX text)::

        c = Conv (x, W, b)                    y = Conv (x, W_bnfolded, b_bnfolded)
        y = BatchNormalization (c, g, be, m, v)
    """

    name = "fold-batchnorm"
    needs = frozenset({Fact.CONSTANTS_LIFTED})
    provides = frozenset({Fact.BN_FOLDED})
    preserves = frozenset(
        {
            Fact.SHAPES_INFERRED,
            Fact.CONSTANTS_LIFTED,
            Fact.CONSTANTS_FOLDED,
            Fact.NO_IDENTITY,
            Fact.DEAD_CODE_FREE,
            Fact.TOPO_SORTED,
        }
    )
    tolerance = Tolerance.FP32_REWRITE

    def run(self, model: Model, ctx: CompileContext) -> PassResult:
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        taken = used_names(model.graph)
        notes: list[str] = []
        folded = 0
        replaced: list[Value] = []
        for bn in list(ir.traversal.RecursiveGraphIterator(model.graph)):
            if not is_onnx_op(bn, "BatchNormalization"):
                continue
            match = _match(bn, opset)
            label = f"BatchNormalization '{bn.name or bn.outputs[0].name}'"
            if isinstance(match, str):
                notes.append(f"{label} not folded: {match}")
                continue
            replaced += _rewrite(bn, match, taken)
            folded += 1
            notes.append(f"{label} folded into {match.producer.op_type} '{match.producer.name}'")
        removed = remove_unused_initializers(replaced)
        stats = {"folded": folded, "kept": len(notes) - folded, "initializers_removed": removed}
        return PassResult(model, folded > 0, stats, notes)
