"""1x1 stride-1 NCHW conv2d uint8 x int8 -> int32 vectorized along pixels (AVX2 without VNNI, and
AVX-512 VNNI: ``Conv1x1Int8PixelsVNNI`` at the end of this docstring).

A 1x1 conv is the GEMM ``out[f, p] = sum_c W[f, c] * X[c, p]`` over the flattened image
(p = y * W + x). ``Conv2dInt8AVX2`` vectorizes it over output channels (8 channels x up to 8
columns per register tile): with few input channels (MobileNetV2's expansion convs, C = 16..96)
its reduction is a handful of steps per tile and the tile's write-back -- a channel-to-pixel
transpose of the int32 tile and the int64 requantization -- costs as much as the dot products
(measured: the 16->96 @112 took 2.47 ms, fp32 0.78 ms). This rule vectorizes along pixels, like
the fp32 ``Conv2dDirect._schedule_pixels``:

    data pack:   X[N, C, H, W] u8 -> Xp[N, C/2, H*W, 2] u8 per call (2 input channels of a pixel
                 adjacent: one int16 pair of vpmaddwd after vpmovzxbw; byte transposes of
                 2 channel rows x P pixels, common.transposing_copy)
    weight pack: W[F, C, 1, 1] i8 -> Wp[F/t, C/2, t, 2] **int16** at compile time (the pair of one
                 output channel is one 32-bit word: a single vpbroadcastd, no sign extension in
                 the kernel)
    parallel for (n, pixel chunk, f_outer):
      for pixel blocks of nb*8 pixels in the chunk:
        acc[t][nb*8] = 0                                        # int32 register tile
        for c2 in C/2:
          for fi in t (unrolled), pb in nb (unrolled):
            acc[fi][pb*8:+8] += vpmaddwd(zext16(Xp[n, c2, p0+pb*8 : +8, 0:2]),   # 8 pixels x 2 ch
                                         broadcast32(Wp[f_outer, c2, fi, 0:2]))  # one channel pair
        out[n, f, p0 : p0+nb*8] = epilogue(acc)   # contiguous stores, per-channel constants
                                                  # broadcast, vectorized along pixels

Exact: every product is u8 x i8 widened to int16, ``vpmaddwd`` sums two of them into int32
(|2 * 255 * 128| < 2^31) and ``vpaddd`` accumulates; the ``vpmaddubsw`` saturation is excluded as
in ``Conv2dInt8AVX2``. Claims x86 AVX2 targets without AVX-512 VNNI (``common.AVX2Dot``) and
convs with C % 2 == 0 and H*W % 8 == 0, any number of input channels; anything else goes on to the
next rule. On MobileNetV2's 384..960-channel layers (14x14 and 7x7 images, which flat_pixels pads
to whole 8-pixel vectors on AVX2) it beats ``Conv2dInt8AVX2``'s 4x2 / 1x7 channel tiles: one Zen 3
core, single layers interleaved, ms, 576->96 @14 0.307 -> 0.266, 384->64 @14 0.148 -> 0.130,
320->1280 @7 0.776 -> 0.637, 160->960 @7 0.381 -> 0.327, 960->160 @7 0.236 -> 0.219 (until
2026-12-08 the rule stopped at 256 channels, which had not been measured beyond).

``Conv1x1Int8PixelsAVX2Maddubs`` is the same nest for a constant weight within +-64
(``--quantize int8-w7``): the data pack is [N, C/4, H*W, 4] uint8 (8 pixels x 4 channels = the 32
bytes of one ``vpmaddubsw``), the weight pack [F/t, C/4, t, 4] int8 (one output channel's 4 weights
broadcast as a 32-bit word), and ``vpmaddwd`` by ones widens the int16 pair sums, which cannot
saturate under that bound (common.AVX2_PIXEL_MADDUBS_INTRIN). Measured on Zen 3 against the
``vpmaddwd`` form, ms: 16->96 @112 1.19 -> 1.08, 24->144 @56 0.50 -> 0.46, 64->64 @56 0.43 -> 0.38.

``Conv1x1Int8PixelsVNNI`` is the nest on AVX-512 VNNI: 16 pixels x 4 input channels (one zmm of
the [N, C/4, H*W, 4] uint8 pack) against one output channel's 4 int8 weights broadcast as a 32-bit
word, one ``vpdpbusd`` (common.VNNI_PIXEL_DOT_INTRIN), exact for any int8 weights; H*W % 16 == 0
(build.prepare pads MobileNetV2's 14x14 expansions to 208 pixels, targets/lowering/flat_pixels.py).
It precedes ``Conv2dInt8VNNI`` and takes every 1x1 conv ``takes`` accepts. With the per-byte
data pack it took only expansions (C < 2F) and F % 16 != 0 (MobileNetV2 int8, one Sapphire
Rapids-class core, whole model 6.36 -> 5.11 ms; the projections 32->16 @112 0.193 vs 0.144 ms and
192->32 @28 0.052 vs 0.036 were faster on the channel-vectorized rule). With the byte-transposing
pack (common.transposing_copy) the projections gain too, measured on one Zen 4 core, single
layers interleaved, ms, ``Conv2dInt8VNNI`` (itself with a transposing pack) -> this rule: 32->16
@112 0.235 -> 0.120, 144->32 @28 0.038 -> 0.027, 192->32 @28 0.045 -> 0.034, 96->32 @56 0.108 ->
0.094. Above ``MAX_CHANNELS``, or on flat_pixels' padded rows for projections (384->64 and
576->96 @14, 960->160 and 960->320 @7), it was no faster (0.036 vs 0.035, 0.066 vs 0.064, 0.046
vs 0.050, 0.085 vs 0.099), so those stay with ``Conv2dInt8VNNI``.
"""

from __future__ import annotations

from targets.lowering.schedules import common
from targets.lowering.schedules.conv2d import pixel_chunk_vectors
from targets.lowering.schedules.conv2d_int8 import match_int8_conv

# The VNNI pixel rule takes 1x1 convs with at most this many input channels (above it, measured no
# faster than ``Conv2dInt8VNNI``, see the module docstring); the AVX2 rules take any C.
MAX_CHANNELS = 256

LANES = common.AVX2_LANES  # pixels per int32x8 accumulator
DEPTH = common.AVX2_DEPTH  # input channels per vpmaddwd pair


def choose_tile(pixel_vectors: int, out_channels: int, max_accumulators: int = 8) -> tuple[int, int]:
    """(nb, t): pixel vectors x output channels per register tile, exact divisors of
    ``pixel_vectors`` and ``out_channels`` with ``nb * t <= max_accumulators``, maximizing the
    multiply-adds per load ``nb*t / (nb + t)`` (nb data vectors and t broadcasts feed nb*t
    vpmaddwd), then ``nb * t``."""
    best = None
    for nb in (1, 2, 4, 3):
        if pixel_vectors % nb:
            continue
        t = common.largest_divisor(out_channels, max_accumulators // nb)
        key = (nb * t / (nb + t), nb * t)
        if best is None or key > best[0]:
            best = (key, nb, t)
    return (best[1], best[2]) if best is not None else (1, 1)


def takes(sch, conv, reads, dims, lanes: int = LANES, depth: int = DEPTH, max_channels: int | None = None) -> bool:
    """True if this rule claims the matched int8 conv (``match_int8_conv``'s result): 1x1, stride
    1, no padding, C % depth == 0, H*W % lanes == 0 (2 and 8 on AVX2) and, given ``max_channels``
    (the VNNI rule's MAX_CHANNELS), C <= max_channels."""
    N, F, OH, OW, C, KH, KW = dims
    if (KH, KW) != (1, 1) or C % depth or (max_channels is not None and C > max_channels) or (OH * OW) % lanes:
        return False
    # A 1x1 kernel whose (padded) input image is as large as the output: stride 1 and no padding
    # (any stride > 1 or pad would make the image and the output differ).
    data = sch.get(conv).reads[reads[0]].source
    return [int(d) for d in data.shape[2:]] == [OH, OW]


class Conv1x1Int8PixelsAVX2(common.AVX2Dot, common.MatchingRule):
    """u8 x i8 -> i32 1x1 stride-1 conv on AVX2, vectorized along pixels (module docstring)."""

    name = "conv1x1-int8-avx2"

    def _match_and_schedule(self, func, target):
        matched = match_int8_conv(func)
        if matched is None or not takes(*matched, self.lanes, self.depth, self.max_channels) or not self._claims(func, *matched):
            return None
        sch, conv, reads, dims = matched
        return self._schedule(sch, func, conv, reads, dims)

    def _claims(self, func, sch, conv, reads, dims) -> bool:
        """Further conditions of a subclass on a conv that ``takes`` accepts."""
        return True

    # input channels per dot product, and whether the weight pack is widened to int16 (the
    # vpmaddwd form); the vpmaddubsw subclass takes 4 int8 channels
    depth, widen_weights = DEPTH, True
    # the most input channels the rule takes (None: any; see MAX_CHANNELS)
    max_channels: int | None = None

    def register_pixel_intrinsic(self) -> str:
        return common.register_avx2_pixel_intrinsic()

    def _schedule(self, sch, func, conv, reads, dims):
        intrin = self.register_pixel_intrinsic()
        depth, lanes = self.depth, self.lanes
        data_idx, weight_idx = reads
        N, F, OH, OW, C, _, _ = dims
        P = OH * OW
        nb, t = choose_tile(P // lanes, F, self.max_accumulators)
        chunk = pixel_chunk_vectors(P // (nb * lanes), nb * lanes * C)

        # The data operand's producers in the function are inlined into the pack.
        data_producers = common.operand_producers(sch, conv, data_idx)
        epilogue = common.fuse_epilogue(sch, conv, keep_slice=True)

        # Weight: [F, C, 1, 1] int8 -> [F/t, C/2, t, 2] int16 (folded at compile time); with
        # vpmaddubsw [F/t, C/4, t, 4] int8.
        wpack = common.pack_operand(
            sch, func, conv, weight_idx,
            lambda o, i, h, w: (o // t, i // depth, o % t, i % depth),
        )
        if self.widen_weights:
            sch.unsafe_set_dtype(wpack, 0, "int16")
        # Data: [N, C, H, W] -> [N, C/depth, H*W, depth], a parallel per-call copy.
        dpack = sch.cache_read(conv, data_idx, "global")
        for producer in data_producers:
            sch.compute_inline(producer)
        sch.transform_layout(dpack, ("write", 0), lambda a, c, h, w: (a, c // depth, h * OW + w, c % depth))

        acc = sch.cache_write(conv, 0, "local")
        sch.transform_layout(conv, ("write", 0), lambda a, b, c, d: (a, b, c * OW + d))
        sch.transform_block_layout(conv, lambda a, b, c, d, e, g, h: (a, b, c * OW + d, e, g, h))
        sch.transform_block_layout(acc, lambda a, b, c, d: (a, b, c * OW + d))
        n, f, p, rc, ry, rx = sch.get_loops(conv)
        fo, fi = sch.split(f, [None, t])
        pc, po, pb, pv = sch.split(p, [None, chunk, nb, lanes])
        rco, rci = sch.split(rc, [None, depth])
        sch.reorder(n, pc, fo, po, ry, rx, rco, fi, pb, pv, rci)
        per_image = N > 1  # batch > 1: image by image (common.compute_per_image)
        tasks = [pc, fo] if per_image else [n, pc, fo]
        common.attach_write_back(sch, acc, epilogue, po, tasks, F * P * (1 if per_image else N) >= common.MIN_PARALLEL_ELEMENTS)
        # The pack as byte transposes of `depth` channel rows x P pixels (common.transposing_copy),
        # iterated in source order (n, c/depth, h, w, depth). Measured on one Zen 3 core, single
        # layers interleaved, ms, per-byte scatter -> transposes: 16->96 @112 1.33 -> 1.14,
        # 24->144 @56 0.51 -> 0.47 (vpmaddwd form, depth 2: 0.91 -> 0.85), 64->64 @56 0.45 -> 0.35.
        sch.transform_block_layout(dpack, lambda a, c, h, w: (a, c // depth, h, w, c % depth))
        dl = common.compute_per_image(sch, dpack, n, per_image)  # (n, c/depth, h, w, depth)
        transposed = common.transposing_copy(sch, dpack, dl, depth, True, per_image)
        if transposed is not None:
            sch = transposed
        else:
            sch.parallel(dl[1] if per_image else sch.fuse(dl[0], dl[1]))
        common.unroll_and_vectorize_tile(sch, conv, [fi, pb], pv, ry, intrin)
        wb = sch.get_loops(acc)
        _, wv = sch.split(wb[-1], [None, lanes])
        sch.vectorize(wv)
        return sch


class Conv1x1Int8PixelsAVX2Maddubs(Conv1x1Int8PixelsAVX2):
    """The pixel-vectorized 1x1 conv with ``vpmaddubsw`` for a constant weight within
    +-``common.WEIGHT_BOUND_MADDUBS`` (``--quantize int8-w7``): 8 pixels x 4 input channels of
    data (32 bytes, no widening) against one output channel's 4 weights broadcast as a 32-bit word
    (common.AVX2_PIXEL_MADDUBS_INTRIN), exact for such weights. Needs C % 4 == 0 besides what the
    vpmaddwd form needs; anything else goes on to it."""

    name = "conv1x1-int8-avx2-maddubs"
    depth, widen_weights = common.MADDUBS_DEPTH, False
    claims_by_value = True  # schedules.value_claimed_functions

    def register_pixel_intrinsic(self) -> str:
        return common.register_avx2_pixel_maddubs_intrinsic()

    def _claims(self, func, sch, conv, reads, dims) -> bool:
        return dims[4] % self.depth == 0 and common.within_maddubs_bound(func, sch.get(conv).reads[reads[1]].source)


class Conv1x1Int8PixelsVNNI(Conv1x1Int8PixelsAVX2):
    """The pixel-vectorized 1x1 conv on AVX-512 VNNI: 16 pixels x 4 input channels of data (one
    zmm) against one output channel's 4 int8 weights broadcast as a 32-bit word, one ``vpdpbusd``
    (common.VNNI_PIXEL_DOT_INTRIN), exact for any int8 weights. Data pack [N, C/4, H*W, 4] uint8,
    weight pack [F/t, C/4, t, 4] int8. Needs C % 4 == 0 and H*W % 16 == 0."""

    name = "conv1x1-int8-vnni"
    lanes, depth, widen_weights = common.VNNI_LANES, common.VNNI_DEPTH, False
    max_channels = MAX_CHANNELS
    max_accumulators = common.VNNIDot.max_accumulators

    def accepts(self, target) -> bool:
        return common.has_avx512_vnni(target)

    def register_pixel_intrinsic(self) -> str:
        return common.register_vnni_pixel_intrinsic()
