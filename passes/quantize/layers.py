"""Graph matching shared by the integer rewrite and the QDQ export.

* ``dynamic_values``: which values depend on a graph input (everything else is a constant, or is
  computed from constants only and is left alone).
* ``match_layer``: a Conv / Gemm / MatMul with a constant weight, normalised to the layout the
  integer form stores (Conv ``[C_out, C_in/g, k...]``, Gemm/MatMul ``[K, N]``) with its float bias
  (Gemm's ``alpha`` and ``beta * C`` folded in; a MatMul's following ``Add`` of a constant vector
  taken as its bias), or the reason it does not qualify.
* ``match_activation``: a Relu / Clip right after a producer, whose clamp the requantizer absorbs.
* ``match_scale``: a Mul / Div of an activation by a constant scalar (its factor).
* ``match_gelu``: the exact GELU, as the ``Gelu`` op or as torch exports it,
  ``x * (Erf(x / sqrt2) + 1) * 0.5``, which the integer rewrite replaces by I-BERT's i-GELU.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from compiler.ir import DataType, Model, Node, Value, constant_array

__all__ = ["Activation", "Layer", "dynamic_values", "is_onnx", "match_activation", "match_gelu", "match_layer", "match_scale",
           "single_consumer"]

FLOAT_TYPES = (DataType.FLOAT,)


def is_onnx(node: Node, *op_types: str) -> bool:
    return node.domain in ("", "ai.onnx") and node.op_type in op_types


def dynamic_values(model: Model) -> set[int]:
    """ids of the values that depend on a graph input (graph inputs included), in one forward sweep.

    Needs topological order. An initializer that is also a graph input is dynamic (callers may feed it).
    """
    dynamic = {id(v) for v in model.graph.inputs}
    for node in model.graph:
        if any(v is not None and id(v) in dynamic for v in node.inputs):
            dynamic.update(id(v) for v in node.outputs)
    return dynamic


def single_consumer(value: Value) -> Node | None:
    """The only node reading ``value`` (once), when it is not also a graph output."""
    uses = value.uses()
    if len(uses) != 1 or value.is_graph_output():
        return None
    return uses[0].node


def _int_attr(node: Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_int()


def _float_attr(node: Node, name: str, default: float) -> float:
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_float()


@dataclasses.dataclass
class Layer:
    """A weighted layer in the normalised layout of the integer form."""

    node: Node
    kind: str  # "conv" | "matmul" (Gemm is a matmul with its weight stored [K, N])
    x: Value  # the activation input
    weight: np.ndarray  # float64; conv [C_out, C_in/g, k...], matmul [K, N]
    bias: np.ndarray | None  # float64 [C_out] / [N]
    output: Value  # the value the layer's result replaces (after a fused bias Add)
    bias_add: Node | None = None  # the MatMul's bias Add, consumed by the rewrite
    groups: int = 1

    @property
    def weight_axis(self) -> int:
        """The output-channel axis of ``weight``."""
        return 0 if self.kind == "conv" else 1

    @property
    def channels(self) -> int:
        return self.weight.shape[self.weight_axis]

    @property
    def label(self) -> str:
        return f"{self.node.op_type} '{self.node.name or self.node.outputs[0].name}'"


def _vector(array: np.ndarray, channels: int) -> np.ndarray | None:
    """``array`` as a per-channel vector [channels] when it broadcasts that way (shapes (), (N,), (1,N))."""
    if array.size == 1:
        return np.full(channels, float(array.reshape(())), dtype=np.float64)
    if array.shape[-1] == channels and array.size == channels:
        return array.reshape(channels).astype(np.float64)
    return None


def match_layer(node: Node, dynamic: set[int]) -> Layer | str | None:
    """The layer plan of ``node``, a reason string when it is a Conv/Gemm/MatMul that does not
    qualify, or None when it is not one of those ops at all."""
    if not is_onnx(node, "Conv", "Gemm", "MatMul"):
        return None
    x = node.inputs[0]
    if x is None or id(x) not in dynamic or x.dtype not in FLOAT_TYPES:
        return "its data input is not a float32 activation"
    w_value = node.inputs[1] if len(node.inputs) > 1 else None
    weight = constant_array(w_value)
    if weight is None:
        return "its weight is not a constant initializer"
    if not np.issubdtype(weight.dtype, np.floating):
        return f"its weight is {weight.dtype}, not float"
    weight = weight.astype(np.float64)
    b_value = node.inputs[2] if len(node.inputs) > 2 else None
    bias = constant_array(b_value)
    if b_value is not None and bias is None:
        return "its bias is not a constant initializer"

    if is_onnx(node, "Conv"):
        if weight.ndim < 3:
            return "its weight has fewer than 3 dims"
        groups = _int_attr(node, "group", 1)
        vector = None if bias is None else _vector(bias, weight.shape[0])
        if bias is not None and vector is None:
            return f"its bias has shape {list(bias.shape)}, not [{weight.shape[0]}]"
        return Layer(node, "conv", x, weight, vector, node.outputs[0], groups=groups)

    if is_onnx(node, "Gemm"):
        if _int_attr(node, "transA", 0):
            return "transA=1 (the activation would need a transpose)"
        w = weight.T if _int_attr(node, "transB", 0) else weight
        w = w * _float_attr(node, "alpha", 1.0)  # alpha folds into the weight before quantizing
        vector = None
        if bias is not None:
            vector = _vector(bias * _float_attr(node, "beta", 1.0), w.shape[1])
            if vector is None:
                return f"its C has shape {list(bias.shape)}, not broadcastable per output column"
        return Layer(node, "matmul", x, w, vector, node.outputs[0])

    # MatMul: constant [K, N] weight; a following Add of a constant [N] vector becomes the bias.
    if weight.ndim != 2:
        return f"its weight has {weight.ndim} dims (only [K, N] is supported)"
    if x.shape is not None and len(x.shape) < 2:
        return "its activation is a vector"
    layer = Layer(node, "matmul", x, weight, None, node.outputs[0])
    add = single_consumer(node.outputs[0])
    if add is not None and is_onnx(add, "Add"):
        other = add.inputs[1] if add.inputs[0] is node.outputs[0] else add.inputs[0]
        c = constant_array(other)
        vector = None if c is None or c.ndim > 1 else _vector(c, weight.shape[1])
        if vector is not None and np.issubdtype(c.dtype, np.floating):
            layer.bias, layer.bias_add, layer.output = vector, add, add.outputs[0]
    return layer


@dataclasses.dataclass
class Activation:
    """A clamp that follows a producer: y = clip(x, lo, hi) (Relu: [0, inf))."""

    node: Node
    lo: float
    hi: float


def match_activation(value: Value) -> Activation | None:
    """The Relu / Clip that is the only consumer of ``value``, with constant bounds; else None."""
    node = single_consumer(value)
    if node is None or node.inputs[0] is not value:
        return None
    if is_onnx(node, "Relu"):
        return Activation(node, 0.0, float("inf"))
    if not is_onnx(node, "Clip"):
        return None
    bounds = [-float("inf"), float("inf")]
    if "min" in node.attributes or "max" in node.attributes:  # opset < 11: attributes
        bounds = [_float_attr(node, "min", bounds[0]), _float_attr(node, "max", bounds[1])]
    for index in (1, 2):
        if len(node.inputs) > index and node.inputs[index] is not None:
            array = constant_array(node.inputs[index])
            if array is None or array.size != 1:
                return None
            bounds[index - 1] = float(array.reshape(()))
    return Activation(node, bounds[0], bounds[1])


def _scalar(value: Value | None) -> float | None:
    """The float value of a constant floating-point scalar (any shape of size 1), else None."""
    array = constant_array(value)
    if array is None or array.size != 1 or not np.issubdtype(array.dtype, np.floating):
        return None
    scalar = float(array.reshape(()))
    return scalar if math.isfinite(scalar) else None


def match_scale(node: Node, x: Value) -> float | None:
    """The factor c of ``y = Mul(x, c)`` / ``Mul(c, x)`` / ``Div(x, c)`` (1 / c) with c a constant
    scalar, else None. The output shape must be x's (a size-1 constant of higher rank would
    broadcast x up)."""
    if len(node.inputs) != 2 or x not in node.inputs:
        return None
    if node.outputs[0].shape is not None and x.shape is not None and list(node.outputs[0].shape) != list(x.shape):
        return None
    if is_onnx(node, "Mul"):
        return _scalar(node.inputs[1] if node.inputs[0] is x else node.inputs[0])
    if is_onnx(node, "Div") and node.inputs[0] is x and node.inputs[1] is not x:
        divisor = _scalar(node.inputs[1])
        return None if not divisor else 1.0 / divisor
    return None


def _near(value: float | None, target: float) -> bool:
    return value is not None and abs(value - target) <= 1e-5 * abs(target)


def match_gelu(node: Node, dynamic: set[int]) -> tuple[list[Node], Value, float] | None:
    """The nodes of an exact GELU starting at ``node``, its input x and the erf divisor (sqrt 2).

    Recognised: ``Gelu`` (approximate="none") and the decomposition
    ``d = x / c (or x * (1/c)); e = Erf(d); a = e + 1; m = x * a; y = m * 0.5`` (any operand order),
    every intermediate read only by the next node.
    """
    x = node.inputs[0] if node.inputs else None
    if x is None or id(x) not in dynamic or x.dtype not in FLOAT_TYPES:
        return None
    if is_onnx(node, "Gelu"):
        approximate = node.attributes.get("approximate")
        if approximate is not None and approximate.as_string() != "none":
            return None
        return [node], x, math.sqrt(2.0)
    if not is_onnx(node, "Div", "Mul"):
        return None
    factor = match_scale(node, x)
    if factor is None or factor <= 0:
        return None
    erf = single_consumer(node.outputs[0])
    if erf is None or not is_onnx(erf, "Erf"):
        return None
    add = single_consumer(erf.outputs[0])
    if add is None or not is_onnx(add, "Add") or not _near(match_scale_add(add, erf.outputs[0]), 1.0):
        return None
    mul = single_consumer(add.outputs[0])
    if mul is None or not is_onnx(mul, "Mul") or {id(v) for v in mul.inputs} != {id(x), id(add.outputs[0])}:
        return None
    half = single_consumer(mul.outputs[0])
    if half is None or not is_onnx(half, "Mul") or not _near(match_scale(half, mul.outputs[0]), 0.5):
        return None
    return [node, erf, add, mul, half], x, 1.0 / factor


def match_scale_add(node: Node, x: Value) -> float | None:
    """The constant scalar c of ``Add(x, c)`` / ``Add(c, x)``, else None."""
    if not is_onnx(node, "Add") or len(node.inputs) != 2 or x not in node.inputs:
        return None
    return _scalar(node.inputs[1] if node.inputs[0] is x else node.inputs[0])
