"""8-bit 1x1 convs on small images as convs over a flat, padded row of pixels (x86 AVX2 and
AVX-512 VNNI).

The pixel-vectorized int8 rules (schedules/conv1x1_int8.py) take a 1x1 stride-1 conv over its
flattened image in vectors of 8 pixels (16 with VNNI), and need H*W % 8 == 0 (% 16). MobileNetV2's 14x14 expansions
(196 pixels) miss that and go to the channel-vectorized rules, whose per-output write-back (a
channel-to-pixel transpose and one byte store per output) then costs as much as the dot products.
This rewrite, on the Relax module before fusion, runs such a conv on a 1 x P' image instead,
P' = H*W rounded up to a multiple of the vector (8 or 16)::

    x [N, C, H, W]  -> reshape [N, C, 1, H*W] -> pad with 0 to [N, C, 1, P']
    y = conv1x1(x', w) followed by its elementwise epilogue (bias, zero-point correction, the
        requantizer chain, clip, cast: every op whose other operands are constants), on P' pixels
    y [N, F, 1, P'] -> strided_slice to H*W pixels -> reshape [N, F, H, W]

Exact: a 1x1 stride-1 conv and an elementwise epilogue with per-channel constants compute every
pixel independently, so the first H*W pixels of the padded result are the original ones; the
P' - H*W padded pixels are computed and dropped. The reshapes are views. The pad of the input is
a small separate kernel (C*P' bytes; FuseOps often merges it with the pad before it). The slice
fuses into the conv's function, where the pixel rule keeps it as a plain copy after its
vectorized write-back (``common.fuse_epilogue(keep_slice=True)``): inlined, it would predicate
the last pixel vector and TVM would scalarize the write-back (measured 0.13 -> 0.18 ms, slower
than before the rewrite).

Measured on one Zen 3 core, in MobileNetV2 (the rewrite on vs off, lowered twice and timed in
alternation, 60 runs each, kernels timed one by one): 64->384 @14 0.131 -> 0.092 ms, 96->576 @14
0.233 -> 0.173 ms, the input pads 0.002 ms each; whole model int8-w7 8.82 -> 8.57-8.63 ms, int8
11.22 -> 10.76-10.80 ms.

Which convs, per target (``POLICIES``, keyed by the pixel vector):

* AVX2 without VNNI (``schedules.common.has_avx2_int8``, 8-pixel vectors): every such 1x1 conv
  with C a multiple of 4 and at least 49 pixels (7x7 -> 56: at most 1/7 padding), projections and
  any C included, since the AVX2 pixel rule takes any C. Measured on one Zen 3 core, single layers
  interleaved, ms, channel-vectorized rule -> pixel rule on the padded row: 576->96 @14 0.307 ->
  0.266, 384->64 @14 0.148 -> 0.130, 320->1280 @7 0.776 -> 0.637, 160->960 @7 0.381 -> 0.327,
  960->160 @7 0.236 -> 0.219; whole MobileNetV2 (``benchmarks.ab``, one pinned core, 80-100
  paired rounds, outputs identical) int8 1.50-1.52x -> 1.39-1.44x of ONNX Runtime int8, int8-w7
  1.25x -> 1.17x, int8 batch 8 1.53x -> 1.45x. (Until 2026-12-08
  it took only the expansions of at least 64 pixels with C <= 256: on 7x7 the 160->960 expansion
  alone measured within noise for the whole int8-w7 model.)
* AVX-512 VNNI (16-pixel vectors of ``conv1x1_int8.Conv1x1Int8PixelsVNNI``: 196 -> 208 pixels):
  expansions (F > C) with C <= conv1x1_int8.MAX_CHANNELS and at least 64 pixels. Measured on one
  Sapphire Rapids-class core, 64->384 @14 0.056 -> 0.037 ms, 96->576 @14 0.092-0.100 ->
  0.065-0.067 ms; the projections (384->64 and 576->96 @14, 960->160 and 960->320 @7) measured no
  faster on the padded rows (Zen 4, see conv1x1_int8).
"""

from __future__ import annotations

from typing import NamedTuple

import tvm
from tvm import relax

from targets.lowering.integer_ops import _shape
from targets.lowering.relax_rewrites import rewrite_conv_epilogue_chains, u8_conv_weight
from targets.lowering.schedules.common import AVX2_LANES, MADDUBS_DEPTH, VNNI_LANES
from targets.lowering.schedules.conv1x1_int8 import MAX_CHANNELS

__all__ = ["flatten_small_image_1x1", "POLICIES"]


class Policy(NamedTuple):
    """Which 1x1 convs a target's rewrite takes (module docstring)."""

    min_pixels: int  # images below this many pixels are left alone (too much padding)
    expansions_only: bool  # only F > C
    max_channels: int | None  # at most this many input channels (None: any)


POLICIES = {
    AVX2_LANES: Policy(min_pixels=49, expansions_only=False, max_channels=None),
    VNNI_LANES: Policy(min_pixels=64, expansions_only=True, max_channels=MAX_CHANNELS),
}


def _takes(call: relax.Call, bindings, lanes: int) -> bool:
    """True for a u8 x i8 -> i32 1x1 stride-1 unpadded NCHW conv this rewrite applies to on a
    target with ``lanes``-pixel vectors (POLICIES)."""
    attrs = call.attrs
    if any(int(p) for p in attrs.padding) or any(int(s) != 1 for s in attrs.strides) or any(int(d) != 1 for d in attrs.dilation):
        return False
    w = u8_conv_weight(call, bindings)
    if w is None:
        return False
    shape = _shape(call.args[0])
    f, c, kh, kw = w.shape
    pixels = shape[2] * shape[3]
    policy = POLICIES[lanes]
    return ((kh, kw) == (1, 1) and c % MADDUBS_DEPTH == 0 and pixels % lanes != 0 and pixels >= policy.min_pixels
            and (f > c or not policy.expansions_only)
            and (policy.max_channels is None or c <= policy.max_channels))


def flatten_small_image_1x1(mod: tvm.IRModule, lanes: int = AVX2_LANES) -> tuple[tvm.IRModule, int]:
    """Rewrite every qualifying 8-bit 1x1 conv of ``mod`` (module docstring, ``POLICIES[lanes]``)
    onto a row of a multiple of ``lanes`` pixels (the pixel rule's vector: 8 on AVX2, 16 with
    VNNI). Returns (module, convs rewritten); ``mod`` itself is not modified."""

    def run_conv(emit, call, visit):
        n, c, h, w = _shape(call.args[0])
        pixels = h * w
        padded_pixels = -(-pixels // lanes) * lanes
        row = emit(relax.op.reshape(visit(call.args[0]), [n, c, 1, pixels]))
        row = emit(relax.op.nn.pad(row, [0, 0, 0, 0, 0, 0, 0, padded_pixels - pixels], pad_value=0.0))
        return emit(relax.Call(call.op, [row, visit(call.args[1])], call.attrs, call.ty_args))

    def crop(emit, value, var):
        n, f, h, w = _shape(var)
        cropped = emit(relax.op.strided_slice(value, axes=[3], begin=[0], end=[h * w]))
        return relax.op.reshape(cropped, [n, f, h, w])

    return rewrite_conv_epilogue_chains(mod, lambda call, b: _takes(call, b, lanes), run_conv, crop)
