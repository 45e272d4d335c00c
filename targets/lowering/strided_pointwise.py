"""Strided 1x1 convs as a subsampling slice followed by a stride-1 1x1 conv (x86 CPUs).

A 1x1 conv with stride s and no padding reads only every s-th row and column of its input::

    conv1x1(x, w, stride=s)[n, f, i, j] = sum_c w[f, c] * x[n, c, s*i, s*j]
                                        = conv1x1(x[:, :, ::s, ::s], w, stride=1)[n, f, i, j]

so the rewrite, on the Relax module before fusion, is exact for every dtype (float and the
integer-only form's u8 x i8 -> i32). ResNet's downsample shortcuts are such convs. Without it the
conv rules re-lay out their whole input before the dot products (the fp32 rule's channels-last
copy, the int8 rules' NCHW2c/NCHW4c packs: ``cache_read`` copies the region the conv touches,
which for a stride-2 1x1 conv is the whole image), four times the pixels the conv uses; the
stride-1 conv goes to the pointwise kernels instead (the pixel GEMM, the pixel-vectorized int8
rules, flat_pixels), which read NCHW directly. The slice is a separate kernel (FuseOps does not
fuse an injective producer into a conv) that copies the s*s-th part of the input.

Measured on one Zen 3 core, ResNet-18 batch 1 (python -m benchmarks.layer_profile, the rewrite off
vs on, separate runs on a noisy VM, so compare the ratios to ONNX Runtime of the same run):

    shortcut conv     fp32 ms (ratio to ORT fp32)             int8-w7 ms (ratio to ORT int8)
    64->128 @56       0.30-0.47 (1.7-2.6x) -> 0.22 (1.10x)      0.187 (1.86x) -> 0.149 (0.90x)
    128->256 @28      0.24-0.42 (1.5-2.4x) -> 0.28 (1.71x)      0.140 (1.61x) -> 0.146 (1.00x)
    256->512 @14      0.22-0.30 (1.1-1.5x) -> 0.25 (1.16x)      0.106 (1.20x) -> 0.110 (0.77x)

plus the three slices, 0.085 ms together in fp32.
Targets: x86 CPUs (``schedules.common.is_x86_cpu``); the ARM boards' conv rules pack their input
the same way, but nothing was timed there, so they keep the strided conv.
"""

from __future__ import annotations

import tvm
from tvm import relax

from targets.lowering.relax_rewrites import static_shape, with_functions

__all__ = ["subsample_strided_pointwise"]


def _takes(call: relax.Call) -> bool:
    """A static NCHW 1x1 conv with a stride > 1, no padding, no dilation, groups == 1."""
    if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.conv2d"):
        return False
    attrs = call.attrs
    if (str(attrs.data_layout) != "NCHW" or str(attrs.kernel_layout) != "OIHW" or str(attrs.out_layout) != "NCHW"
            or int(attrs.groups) != 1):
        return False
    if any(int(p) for p in attrs.padding) or any(int(d) != 1 for d in attrs.dilation):
        return False
    if all(int(s) == 1 for s in attrs.strides):
        return False
    data, weight = call.args
    x_shape, w_shape = static_shape(data), static_shape(weight)
    return x_shape is not None and len(x_shape) == 4 and w_shape is not None and w_shape[2:] == [1, 1]


@relax.expr_functor.mutator
class _SubsampleRewriter(relax.PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.rewritten = 0

    def visit_call_(self, call):  # noqa: N802 - PyExprMutator hook
        call = super().visit_call_(call)
        if not _takes(call):
            return call
        data, weight = call.args
        _, _, h, w = static_shape(data)
        sh, sw = (int(s) for s in call.attrs.strides)
        sub = self.builder_.emit(relax.op.strided_slice(data, axes=[2, 3], begin=[0, 0], end=[h, w], strides=[sh, sw]))
        out_dtype = str(call.attrs.out_dtype)  # "None" (void): the input's dtype
        self.rewritten += 1
        return relax.op.nn.conv2d(sub, weight, strides=[1, 1], padding=[0, 0, 0, 0], dilation=[1, 1], groups=1,
                                  data_layout="NCHW", kernel_layout="OIHW", out_layout="NCHW",
                                  out_dtype=None if out_dtype in ("None", "void", "") else out_dtype)


def subsample_strided_pointwise(mod: tvm.IRModule) -> tuple[tvm.IRModule, int]:
    """Rewrite every strided 1x1 conv of ``mod``'s Relax functions (module docstring). Returns
    (module, convs rewritten); ``mod`` itself is not modified."""
    rewritten = 0
    updates = {}
    for gvar, func in mod.functions_items():
        if not isinstance(func, relax.Function):
            continue
        rewriter = _SubsampleRewriter(mod)
        new_func = rewriter.visit_expr(func)
        if rewriter.rewritten:
            updates[gvar] = new_func
            rewritten += rewriter.rewritten
    return with_functions(mod, updates), rewritten
