"""Graph helpers shared by the low-rank passes (private to this package).

The rewrites keep the original node as the *last* factor (it keeps its output value, so the output's
name, shape and consumers are untouched) and insert the new factor nodes before it; the weights they
read are new initializers (tensors are never mutated in place).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from compiler.ir import DataType, Node, Value, ir

__all__ = ["FLOAT_DTYPES", "int_attr", "float_attr", "layer_label", "new_value", "static_dims", "cast_like"]

#: Weight dtypes the passes factorize (the SVD runs in float64 and is cast back).
FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def int_attr(node: Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_int()


def float_attr(node: Node, name: str, default: float) -> float:
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_float()


def layer_label(node: Node, index: int) -> str:
    """The node's name, else ``<op>_<index>`` (the cost model's label for an unnamed node)."""
    return node.name or f"{node.op_type}_{index}"


def static_dims(value: Value | None) -> tuple[Any, ...] | None:
    """The dims of ``value`` (ints or symbolic), or None when its shape is unknown."""
    if value is None or value.shape is None:
        return None
    return tuple(value.shape)


def new_value(name: str, dims: Sequence[Any], dtype: DataType) -> Value:
    """A fresh intermediate value with a full type and shape (SHAPES_INFERRED keeps holding)."""
    return ir.Value(name=name, shape=ir.Shape(list(dims)), type=ir.TensorType(dtype))


def cast_like(array: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """A contiguous copy of ``array`` in ``weight``'s dtype (the factors are computed in float64)."""
    return np.ascontiguousarray(array, dtype=weight.dtype)
