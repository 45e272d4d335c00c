"""uint8 activations of the integer-only form shifted to int8 for ARM's ``sdot`` (exact).

AArch64's dot-product extension multiplies bytes of the same signedness only (``sdot`` int8 x int8,
``udot`` uint8 x uint8; the mixed ``usdot`` needs I8MM, which the Cortex-A76/A78 do not have). The
integer-only form (passes/quantize) feeds uint8 activations to int8 weights, so on such targets
this rewrite, applied to the Relax module before legalization and fusion, re-expresses each
``conv2d(x_u8, w_i8, out_dtype="int32")`` and ``matmul(a_u8, b_i8, out_dtype="int32")`` with a
constant weight as the int8 x int8 product the ``sdot`` rules take
(schedules/conv2d_int8.Conv2dInt8ArmDot, schedules/matmul_int8.MatmulInt8ArmDot)::

    x_s8 = int8(x_u8 ^ 0x80)                         = x_u8 - 128, in [-128, 127]
    conv(x_u8, w)[m] = conv(x_s8, w)[m] + 128 * sum_{c,kh,kw} w[m, c, kh, kw]
    (a_u8 @ b)[.., n] = (a_s8 @ b)[.., n] + 128 * sum_k b[k, n]

Exact in int32: the two sides are the same integer sum, the correction is a per-output-channel
constant folded at compile time, and |conv(x_s8, w)| <= 128 * 128 * K stays far inside int32 for
any realistic reduction length K. A conv's zero padding contributed x_u8 = 0, i.e. x_s8 = -128,
so the padding is made explicit (``pad`` of the shifted tensor with -128) and the rewritten conv
has none.

Cost: the shift (``eor`` + a no-op cast) is elementwise, so FuseOps fuses it into the epilogue of
the kernel that produced the activation when that kernel has no other consumer; otherwise it is a
separate pass over the activation bytes. The explicit pad is an injective op that FuseOps does not
fuse into a conv, so a padded conv gets a separate pad pass (the x86 path has the same for
ConvInteger inputs with a nonzero zero point). Both passes move each activation byte once, against
C_out * KH * KW multiply-adds per byte in the conv.

Only products the ``sdot`` rules can claim are rewritten (constant int8 weight; conv: NCHW/OIHW,
groups == 1, C and F multiples of 4; matmul: a 2-D [K, N] weight with K and N multiples of 4).
Everything else, depthwise convs included (``DepthwiseInt8`` takes uint8 x int8), stays as it was.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from targets.lowering.integer_ops import _constant, _dtype
from targets.lowering.relax_rewrites import function_bindings, u8_conv_weight, with_functions
from targets.lowering.schedules.common import ARM_SDOT_DEPTH, ARM_SDOT_LANES

__all__ = ["shift_uint8_activations"]

# int8(x ^ SIGN_BIT) == x - SIGN_BIT for every uint8 x (the XOR flips the top bit; the cast
# reinterprets the byte as two's complement)
SIGN_BIT = 128


def _conv_weight(call: relax.Call, bindings: dict) -> np.ndarray | None:
    """The int8 OIHW weight of a u8 x i8 -> i32 NCHW conv2d that the sdot rule can take, else None."""
    w = u8_conv_weight(call, bindings)
    if w is None or w.shape[1] % ARM_SDOT_DEPTH or w.shape[0] % ARM_SDOT_LANES:
        return None
    return w


def _matmul_weight(call: relax.Call, bindings: dict) -> np.ndarray | None:
    """The int8 [K, N] weight of a u8 x i8 -> i32 matmul that the sdot rule can take, else None."""
    if str(call.attrs.out_dtype) != "int32":
        return None
    a, b = call.args
    w = _constant(bindings.get(b, b))
    if _dtype(a) != "uint8" or w is None or w.dtype != np.int8 or w.ndim != 2:
        return None
    if w.shape[0] % ARM_SDOT_DEPTH or w.shape[1] % ARM_SDOT_LANES:
        return None
    return w


@relax.expr_functor.mutator
class _ShiftRewriter(relax.PyExprMutator):
    def __init__(self, mod, bindings):
        super().__init__(mod)
        self.bindings = bindings
        self.rewritten = 0

    def _shifted(self, x: relax.Expr) -> relax.Expr:
        """``int8(x ^ 0x80)``: the uint8 tensor ``x`` minus 128, as int8."""
        emit = self.builder_.emit
        flipped = emit(relax.op.bitwise_xor(x, relax.const(SIGN_BIT, "uint8")))
        return emit(relax.op.astype(flipped, "int8"))

    def visit_call_(self, call):  # noqa: N802 - PyExprMutator hook
        op = call.op.name if isinstance(call.op, tvm.ir.Op) else None
        if op == "relax.nn.conv2d" and (w := _conv_weight(call, self.bindings)) is not None:
            emit = self.builder_.emit
            # shift first: an elementwise op on the producer's output, which FuseOps can fuse
            # into the producer's epilogue; the pad (an injective op it cannot fuse there) after
            x = self._shifted(self.visit_expr(call.args[0]))
            top, left, bottom, right = (int(p) for p in call.attrs.padding)
            if top or left or bottom or right:
                # the border contributed x_u8 = 0 to the original conv, i.e. x_s8 = -128
                x = emit(relax.op.nn.pad(x, [0, 0, 0, 0, top, bottom, left, right], pad_value=float(-SIGN_BIT)))
            attrs = call.attrs
            acc = emit(relax.op.nn.conv2d(
                x, self.visit_expr(call.args[1]), strides=attrs.strides, padding=[0, 0, 0, 0],
                dilation=attrs.dilation, groups=1, out_dtype="int32"))
            correction = (SIGN_BIT * w.astype(np.int64).sum(axis=(1, 2, 3))).astype(np.int32)
            self.rewritten += 1
            return relax.op.add(acc, relax.const(correction.reshape(1, -1, 1, 1), "int32"))
        if op == "relax.matmul" and (w := _matmul_weight(call, self.bindings)) is not None:
            acc = self.builder_.emit(relax.op.matmul(
                self._shifted(self.visit_expr(call.args[0])), self.visit_expr(call.args[1]), out_dtype="int32"))
            correction = (SIGN_BIT * w.astype(np.int64).sum(axis=0)).astype(np.int32)
            self.rewritten += 1
            return relax.op.add(acc, relax.const(correction, "int32"))
        return super().visit_call_(call)


def shift_uint8_activations(mod: tvm.IRModule) -> tuple[tvm.IRModule, int]:
    """Rewrite every u8 x i8 -> i32 conv2d / matmul of ``mod``'s Relax functions that an ``sdot``
    rule can take into the int8 x int8 form (module docstring). Returns (module, products
    rewritten); ``mod`` itself is not modified."""
    rewritten = 0
    updates = {}
    for gvar, func in mod.functions_items():
        if not isinstance(func, relax.Function):
            continue
        rewriter = _ShiftRewriter(mod, function_bindings(func))
        new_func = rewriter.visit_expr(func)
        if rewriter.rewritten:
            rewritten += rewriter.rewritten
            updates[gvar] = new_func
    return with_functions(mod, updates), rewritten
