"""Helpers shared by the Relax-module rewrites that run before fusion (requant_float.py,
signed_activations.py, flat_pixels.py, wide_rows.py)."""

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


# elementwise ops an epilogue chain may hold (the integer-only form's requantizers, both the int64
# chain and requant_float's int32/float64 forms)
_ELEMENTWISE = frozenset(
    f"relax.{name}" for name in (
        "add", "subtract", "multiply", "right_shift", "left_shift", "maximum", "minimum", "clip", "astype",
        "floor", "round", "bitwise_xor",
    )
)


def _is_pixel_invariant_constant(expr, bindings) -> bool:
    """A scalar constant (Clip's bounds) or a constant tensor that is the same for every pixel
    (shape [.., 1, 1], a per-channel requantization constant), or a var bound to one: it
    broadcasts over a padded or re-shaped image as it did over the original one."""
    value = bindings.get(expr, expr)
    if not isinstance(value, tvm.ir.expr.Constant):
        return False
    shape = static_shape(value)
    return shape is None or len(shape) < 2 or shape[-2:] == [1, 1]


def _free_vars(expr) -> list:
    return list(relax.analysis.free_vars(expr)) if not isinstance(expr, relax.Var) else [expr]


def elementwise_epilogue_chains(func: relax.Function, bindings: dict, takes) -> dict:
    """conv var -> [chain vars in order]: each ``relax.nn.conv2d`` binding for which
    ``takes(call, bindings)`` holds, then the elementwise ops after it whose other operands are
    pixel-invariant constants, each the single use of the previous value. A rewrite that computes
    the conv on a padded image can run the whole chain there and crop once at its end."""
    uses: dict = {}
    consumers: dict = {}

    def count(expr, binding_var):
        for var in _free_vars(expr):
            uses[var] = uses.get(var, 0) + 1
            consumers[var] = binding_var

    for block in func.body.blocks:
        for binding in block.bindings:
            count(binding.value, binding.var)
    count(func.body.body, None)
    chains = {}
    for var, value in bindings.items():
        if not (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op)
                and value.op.name == "relax.nn.conv2d" and takes(value, bindings)):
            continue
        chain = [var]
        while uses.get(chain[-1]) == 1 and consumers.get(chain[-1]) is not None:
            nxt = consumers[chain[-1]]
            call = bindings.get(nxt)
            if not (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op) and call.op.name in _ELEMENTWISE):
                break
            if not all(arg.same_as(chain[-1]) or _is_pixel_invariant_constant(arg, bindings) for arg in call.args):
                break
            chain.append(nxt)
        chains[var] = chain
    return chains


@relax.expr_functor.mutator
class _ChainRewriter(relax.PyExprMutator):
    """Re-emits each chain of :func:`rewrite_conv_epilogue_chains` on the enlarged image."""

    def __init__(self, mod, chains: dict, run_conv, crop):
        super().__init__(mod)
        self.run_conv, self.crop = run_conv, crop
        self.start = chains
        self.member = {var for chain in chains.values() for var in chain}
        self.end = {chain[-1] for chain in chains.values()}
        self.enlarged: dict = {}  # original chain var -> its value on the enlarged image
        self.rewritten = 0

    def visit_var_binding_(self, binding):  # noqa: N802 - PyExprMutator hook
        var = binding.var
        if var not in self.member:
            return super().visit_var_binding_(binding)
        call = binding.value
        if var in self.start:
            value = self.run_conv(self.builder_.emit, call, self.visit_expr)
            self.rewritten += 1
        else:
            args = [self.enlarged[arg] if arg in self.enlarged else self.visit_expr(arg) for arg in call.args]
            value = self.builder_.emit(relax.Call(call.op, args, call.attrs, call.ty_args))
        self.enlarged[var] = value
        if var in self.end:
            restored = self.crop(self.builder_.emit, value, var)
            self.builder_.emit_normalized(relax.VarBinding(var, self.builder_.normalize(restored)))


def rewrite_conv_epilogue_chains(mod: tvm.IRModule, takes, run_conv, crop) -> tuple[tvm.IRModule, int]:
    """Run every conv that ``takes(call, bindings)`` accepts, and its elementwise epilogue chain
    (:func:`elementwise_epilogue_chains`), on an enlarged image, then crop once at the chain's end.

    ``run_conv(emit, call, visit)`` emits the conv on the enlarged image (``visit`` maps the
    original operands into the new function) and returns its value; the chain's ops are
    re-emitted on the enlarged values; ``crop(emit, value, var)`` returns the expression, of the
    original shape, bound to the chain's last var ``var``. Exact when every output pixel is
    computed independently of the added ones (flat_pixels.py, wide_rows.py). Returns (module,
    convs rewritten); ``mod`` itself is not modified."""
    rewritten = 0
    updates = {}
    for gvar, func in mod.functions_items():
        if not isinstance(func, relax.Function):
            continue
        chains = elementwise_epilogue_chains(func, function_bindings(func), takes)
        if not chains:
            continue
        rewriter = _ChainRewriter(mod, chains, run_conv, crop)
        updates[gvar] = rewriter.visit_expr(func)
        rewritten += rewriter.rewritten
    return with_functions(mod, updates), rewritten
