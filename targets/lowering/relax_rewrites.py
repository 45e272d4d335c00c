"""Helpers shared by the Relax-module rewrites that run before fusion (requant_float.py,
signed_activations.py, flat_pixels.py)."""

from __future__ import annotations

import tvm
from tvm import relax


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
