"""8-bit stride-1 depthwise convs whose output rows are not whole vectors computed on wider rows
(x86 AVX2 without VNNI: 8 int32 lanes; AVX-512 VNNI: 16).

``schedules/depthwise_int8.DepthwiseInt8`` vectorizes a depthwise conv along the output row (8
int32 lanes on AVX2). A row of 14 or 28 columns (MobileNetV2's 14x14 and 28x28 layers) is a
partial vector: every tap then loads 14 (6 of the second vector) bytes, which LLVM assembles from
8-, 4- and 2-byte pieces (vmovq + vpinsrd + vpinsrw per load), and those loads dominate the
kernel. This rewrite, on the Relax module before fusion, pads such a conv's input on the right so
its output row is a whole number of vectors, runs the elementwise epilogue (bias, requantizer,
clip, cast) on the wider rows, and crops the result::

    y = conv2d(x, w, padding=(t, l, b, r))              [N, C, OH, OW]
 -> y = conv2d(x, w, padding=(t, l, b, r + OW' - OW))   [N, C, OH, OW'], OW' = OW rounded up to 8
    epilogue on [N, C, OH, OW']
    strided_slice to OW columns                         [N, C, OH, OW]

Exact: the extra columns are computed from the zero padding and dropped; the kept ones see the
same inputs as before. The extra padding is part of the conv's own padded copy, so no kernel is
added; the crop stays a plain copy after the vectorized write-back
(``common.fuse_epilogue(keep_slice=True)``).

Measured on one Zen 3 core, single layers through build.prepare (float64 requantizer), the
rewrite off -> on, interleaved: 384 ch @14 0.198 -> 0.125 ms, 576 ch @14 0.181 -> 0.128 ms, 192 ch
@28 0.211 -> 0.140 ms. MobileNetV2 int8-w7, whole model, two interleaved A/Bs of 80 runs: median
10.27 -> 9.82 and 9.83 -> 9.58 ms, fastest run 9.40 -> 8.77 and 9.31 -> 8.84 ms (ONNX Runtime int8
8.07 and 7.46 ms in the same runs). 7-wide rows (one partial vector; 960 ch @7 and @8 both took
0.124 ms) are left alone.

AVX-512 (16 int32 lanes; ``DepthwiseInt8`` then splits a 56-wide row into 4 vectors of 14 and a
28-wide one into 2): measured on one Zen 4 core, single layers through build.prepare, off -> on,
interleaved, ms: 144 ch @56 0.285 -> 0.260, 192 ch @28 0.095 -> 0.095; 14-wide rows (one partial
vector, not rewritten) 576 ch @14 0.101 -> 0.104, 384 ch @14 0.053 -> 0.055 when widened to 16.
"""

from __future__ import annotations

import tvm
from tvm import relax

from targets.lowering.integer_ops import _constant, _dtype, _shape
from targets.lowering.relax_rewrites import rewrite_conv_epilogue_chains, static_shape
from targets.lowering.schedules.common import AVX2_LANES

__all__ = ["widen_depthwise_rows"]


def _takes(call: relax.Call, bindings, lanes: int) -> bool:
    """True for a u8 x constant-i8 -> i32 stride-1 NCHW depthwise conv (groups == C == F, weight
    [F, 1, KH, KW]) whose output rows are longer than one vector and not a multiple of it."""
    attrs = call.attrs
    if (str(attrs.out_dtype) != "int32" or str(attrs.data_layout) != "NCHW" or str(attrs.kernel_layout) != "OIHW"
            or str(attrs.out_layout) != "NCHW" or any(int(s) != 1 for s in attrs.strides)
            or any(int(d) != 1 for d in attrs.dilation)):
        return False
    data, weight = call.args
    w = _constant(bindings.get(weight, weight))
    shape = static_shape(data)
    if _dtype(data) != "uint8" or w is None or str(w.dtype) != "int8" or w.ndim != 4 or shape is None or len(shape) != 4:
        return False
    channels = shape[1]
    if int(attrs.groups) != channels or w.shape[0] != channels or w.shape[1] != 1:
        return False
    out_width = _shape(call)[3]
    return out_width > lanes and out_width % lanes != 0


def widen_depthwise_rows(mod: tvm.IRModule, lanes: int = AVX2_LANES) -> tuple[tvm.IRModule, int]:
    """Rewrite every qualifying 8-bit stride-1 depthwise conv of ``mod`` (module docstring) to
    output rows of a multiple of ``lanes`` int32 columns (8 on AVX2, 16 with AVX-512). Returns
    (module, convs rewritten); ``mod`` itself is not modified."""

    def run_conv(emit, call, visit):
        attrs = call.attrs
        out_width = _shape(call)[3]
        extra = -(-out_width // lanes) * lanes - out_width
        top, left, bottom, right = (int(p) for p in attrs.padding)
        return emit(relax.op.nn.conv2d(
            visit(call.args[0]), visit(call.args[1]), strides=attrs.strides,
            padding=[top, left, bottom, right + extra], dilation=attrs.dilation, groups=attrs.groups,
            data_layout=attrs.data_layout, kernel_layout=attrs.kernel_layout, out_layout=attrs.out_layout,
            out_dtype=attrs.out_dtype))

    def crop(emit, value, var):
        return relax.op.strided_slice(value, axes=[3], begin=[0], end=[_shape(var)[3]])

    return rewrite_conv_epilogue_chains(mod, lambda call, b: _takes(call, b, lanes), run_conv, crop)
