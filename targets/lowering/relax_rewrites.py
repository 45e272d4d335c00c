"""Helpers shared by the Relax-module rewrites that run before fusion (requant_float.py,
signed_activations.py, flat_pixels.py)."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from targets.lowering.integer_ops import _constant, _dtype, _shape


def static_shape(expr: relax.Expr) -> list[int] | None:
    """The static shape of a tensor expression; None for a symbolic one or a scalar (PrimType)."""
    try:
        return _shape(expr)
    except (TypeError, ValueError, AttributeError):
        return None


def u8_conv_weight(call: relax.Call, bindings: dict) -> np.ndarray | None:
    """The constant int8 OIHW weight of ``call`` when it is a ``conv2d(x_u8, w_i8,
    out_dtype="int32")`` over a static NCHW input with groups == 1 (the integer-only form's convs
    the rewrites re-express), else None. ``bindings``: function_bindings of the caller."""
    attrs = call.attrs
    if (str(attrs.out_dtype) != "int32" or int(attrs.groups) != 1 or str(attrs.data_layout) != "NCHW"
            or str(attrs.kernel_layout) != "OIHW" or str(attrs.out_layout) != "NCHW"):
        return None
    data, weight = call.args
    w = _constant(bindings.get(weight, weight))
    shape = static_shape(data)
    if _dtype(data) != "uint8" or w is None or w.dtype != np.int8 or w.ndim != 4 or shape is None or len(shape) != 4:
        return None
    return w


def function_bindings(func: relax.Function) -> dict:
    """var -> bound value for every variable binding of ``func``'s blocks (the rewrites look up
    the producer of an operand through it)."""
    return {binding.var: binding.value for block in func.body.blocks for binding in block.bindings
            if isinstance(binding, relax.VarBinding)}


def with_functions(mod: tvm.IRModule, updates: dict) -> tvm.IRModule:
    """A copy of ``mod`` with the functions ``updates`` (global var -> function) replaced and the
    bindings the rewrites left unused removed; ``mod`` itself when there is nothing to replace."""
    if not updates:
        return mod
    mod = mod.clone()  # the caller's module stays as it was
    for gvar, func in updates.items():
        mod[gvar] = func
    return relax.transform.DeadCodeElimination()(mod)
