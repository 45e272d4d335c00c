"""NCHW conv2d uint8 x int8 -> int32 with AVX-512 VNNI (``vpdpbusd``) or, on AVX2 CPUs without
VNNI, with ``vpmaddwd`` (``Conv2dInt8AVX2``) or, for weights within +-64, ``vpmaddubsw``
(``Conv2dInt8AVX2Maddubs``; both at the end of this docstring), groups == 1.

Claims ``conv2d_nchw`` blocks whose update is ``acc += int32(data_u8) * int32(weight_i8)`` with an
int32 accumulator (what ``relax.op.nn.conv2d(x_u8, w_i8, out_dtype="int32")`` and the integer-only
ConvInteger lowering produce), any kernel size / stride / dilation / padding, C % 4 == 0 and
F % 16 == 0, on targets with AVX-512 VNNI. The fused epilogue (int32 bias add, zero-point
correction, the int64 dyadic requantization chain, clip, cast to uint8) stays fused.

Loop structure produced (F out channels, C in channels, nb*16 channels x xt columns per tile):

    data pack:   pad + re-layout per call, parallel over (n, c/4, row):
                 D[N, C, H, W] -> Dp[N, C/4, H+2p, W+2p, 4]   (4 consecutive input channels of one
                 pixel are one 32-bit word: the "A" operand of vpdpbusd, broadcast to 16 lanes)
    weight pack: W[F, C, KH, KW] -> Wp[F/16, C/4, KH, KW, 16, 4]   (64 bytes = one zmm per
                 (16 out channels, 4 in channels, ry, rx); folded at compile time for constant W)
    parallel for (n, f_outer, oh, ow_outer):                  # f_outer: blocks of nb*16 channels
        acc[xt][nb*16] = 0                                    # int32 register tile (local)
        for c4 in C/4, ry in KH, rx in KW:                    # reduction, 4 channels per step
            for xi in xt (unrolled), fb in nb (unrolled):
                acc[xi][fb*16:+16] = vpdpbusd(acc[xi][fb*16:+16],
                                              broadcast32(Dp[n, c4, oh*s+ry, (ow0+xi)*s+rx, 0:4]),
                                              Wp[f_outer*nb+fb, c4, ry, rx, 0:16, 0:4])
        out[n, f, oh, ow0:ow0+xt] = epilogue(acc)             # bias/requant/clip/cast fused;
                                                              # vectorized along the columns
                                                              # (xt >= 8, kernel <= 3x3) or the
                                                              # channel block (see _schedule)

Why: the loop nest is the fp32 ``Conv2dDirect`` one (vectorized over output channels, broadcast
activations, register tile, no gathers for any stride) with the channel vector replaced by a 16x4
dot-product tile: one ``vpdpbusd`` does 64 multiply-adds where an fp32 FMA does 16. The int8
packing needs 4 reduction elements contiguous per lane, hence the [.., 16, 4] inner weight block and
the NCHW4c copy of the (small) activation, which replaces the pad stage the fp32 rule has anyway.
The tile is at most 16 accumulators (``choose_tile``): with 28, as in the fp32 rule, LLVM keeps
each broadcast in a register for the nb uses and spills accumulators (measured 0.70 ms vs 0.39 ms
on the 64->64 3x3 @56 layer).

Limitations (the function is left to the next rule, ``Conv2dDirect``, which is dtype-agnostic):
int8 (signed) activations on x86, because ``vpdpbusd`` multiplies unsigned by signed bytes (the
integer-only form of passes/quantize uses uint8 activations; the opposite shift, for ARM's
int8 x int8 ``sdot``, is done in the Relax module by targets/lowering/signed_activations.py, since
it changes the computation and cannot be expressed by schedule primitives; ``Conv2dInt8ArmDot`` at
the end of this module); C % 4 != 0 (e.g. an RGB input layer; ``pad_einsum``
does not apply to the conv's composite indices -- the ConvInteger converter in
targets/lowering/integer_ops.py therefore pads the input channels of constant-weight convs to a
multiple of 4, x with its zero point and w with zeros, exact, so the integer-only stem conv is
claimed here); F % 16 != 0 (MobileNetV2's 24-channel projections go to ``Conv2dDirect``); targets without AVX-512 VNNI (the
AVX-512BW ``vpmaddubsw`` route saturates its int16 pair sums, 2 * 255 * 127 > 32767, so it is not
bit-exact for arbitrary weights and not used for them; AVX2 targets get ``Conv2dInt8AVX2``, or
``Conv2dInt8AVX2Maddubs`` for weights proven within +-64).

``Conv2dInt8AVX2`` (x86 with AVX2, without AVX-512 VNNI: Zen 3, Haswell..Skylake, skylake-avx512)
is the same loop nest with an 8-lane x 2-deep dot product on int16 operands
(common.AVX2_WIDE_DOT_INTRIN): the data pack is NCHW2c written as int16 per call (``unsafe_set_dtype``
of the pack: each uint8 widened once), so a pixel's two channels are one 32-bit word broadcast
straight from memory (``vpbroadcastd``); the weight pack [F/8, C/2, KH, KW, 8, 2] is int16 at
compile time; ``vpmaddwd`` + ``vpaddd`` accumulate exactly in int32 (16 multiply-adds per
instruction pair vs 8 for an fp32 FMA). At most ``AVX2_MAX_ACCUMULATORS`` = 8 int32x8 accumulators
(16 ymm registers); nb x xt = 2x4 (or 1x7 on 7-wide images). Before the widening the kernel
zero-extended the activation pair (vpbroadcastw + vpmovzxbw) and sign-extended the weights
(vpmovsxbw) itself; those shuffles shared Zen 3's two shuffle pipes and capped the kernel.
Measured on Zen 3, 1 thread, ms, byte kernel -> int16 packs (ONNX Runtime's exact u8 x u8
QLinearConv / its saturating u8 x s8): 64->64 3x3 @56 2.45 -> 2.04 (2.01 / 1.76), 128->128 @28
2.20 -> 1.79 (1.78 / 1.27), 256->256 @14 2.03 -> 1.77 (1.74 / 1.25), 512->512 @7 2.25 -> 1.62
(1.72 / 1.29), the 7x7 s2 stem (C = 4) 3.91 -> 3.44. Needs C % 2 == 0 and F % 8 == 0; anything
else (C = 3 without the ConvInteger channel pad, F = 12, int8 activations) falls through to
``Conv2dDirect``.

``Conv2dInt8AVX2Maddubs`` (same targets) takes the convs whose constant weight lies within +-64
(7-bit codes: ``--quantize int8-w7``) with the VNNI nest at 8 lanes x 4 deep: NCHW4c uint8 data
pack, weights [F/8, C/4, KH, KW, 8, 4] int8, ``vpmaddubsw`` (32 u8 x s8 products summed pairwise
into int16) + ``vpmaddwd`` by ones + ``vpaddd`` (common.AVX2_MADDUBS_DOT_INTRIN). The int16 pair
sums saturate only beyond 255 * 128, so with such weights the kernel is exact; the weight range is
read off the constant (``common.constant_param_range``), never assumed. Same layers, ms: 1.88,
1.54, 1.42, 1.33 (64..512 channels; the saturating ONNX Runtime kernel 1.76, 1.27, 1.25, 1.29); the
stem is unchanged (3.41). 1x1 convs that ``Conv1x1Int8PixelsAVX2`` takes (whole
8-pixel vectors) go there (its pixel-vectorized write-back and byte-transposed pack win).
"""

from __future__ import annotations

from tvm import s_tir, tirx

from targets.lowering.schedules import common

# At most this many int32x16 accumulators per tile: 32 zmm registers minus nb weight vectors and
# the activation broadcasts that LLVM keeps live across the nb uses (see module docstring).
MAX_ACCUMULATORS = common.VNNIDot.max_accumulators

# AVX2 (16 ymm registers): int32x8 accumulators per tile.
AVX2_MAX_ACCUMULATORS = common.AVX2Dot.max_accumulators

# Write-back / epilogue vectorized along the output columns (contiguous NCHW stores) when the tile
# has at least this many columns; else along the channel block (see _schedule).
WRITEBACK_MIN_COLUMNS = 8


def choose_tile(channel_blocks: int, out_width: int, max_accumulators: int = MAX_ACCUMULATORS) -> tuple[int, int]:
    """(nb, xt): channel vectors (16 channels with VNNI, 8 with AVX2) x output columns per register
    tile, exact divisors of ``channel_blocks`` (F/lanes) and ``out_width``, maximizing
    ``nb * xt <= max_accumulators``; ties prefer nb == 2 (two weight loads shared by xt
    broadcasts) over taller or wider tiles."""
    best = None
    for nb in (2, 1, 4, 3):
        if channel_blocks % nb:
            continue
        xt = common.largest_divisor(out_width, max_accumulators // nb)
        if best is None or nb * xt > best[0] * best[1]:
            best = (nb, xt)
    return best if best is not None else (1, 1)


def _operand_reads(block: tirx.SBlock, data_dtype: str = "uint8"):
    """(data_read_index, weight_read_index) of a ``data_dtype`` x i8 -> i32 conv block, else None."""
    loads = common.int8_dot_loads(block)
    if loads is None:
        return None
    data, weight = loads
    if str(data.source.dtype) != data_dtype or str(weight.source.dtype) != "int8":
        return None
    f_var = block.iter_vars[1].var
    if len(weight.indices) != 4 or not weight.indices[0].same_as(f_var):
        return None
    idx = {}
    for i, region in enumerate(block.reads):
        if region.source.same_as(data.source):
            idx["data"] = i
        elif region.source.same_as(weight.source):
            idx["weight"] = i
    if len(idx) != 2:
        return None
    return idx["data"], idx["weight"]


def match_int8_conv(func, data_dtype: str = "uint8"):
    """(schedule, conv block, (data, weight) read indices, extents (N, F, OH, OW, C, KH, KW)) of a
    function whose anchor is a ``data_dtype`` (u8 by default) x i8 -> i32 ``conv2d_nchw`` with
    static extents, else None."""
    sch = s_tir.Schedule(func)
    conv = common.find_anchor(sch, ("conv2d_nchw",))
    if conv is None or common.iter_kinds(sch, conv) != "SSSSRRR":
        return None
    reads = _operand_reads(sch.get(conv), data_dtype)
    dims = common.extents(sch, sch.get_loops(conv)) if reads is not None else None
    if dims is None:
        return None
    return sch, conv, reads, dims


class Conv2dInt8VNNI(common.VNNIDot, common.MatchingRule):
    """u8 x i8 -> i32 NCHW conv2d tensorized with vpdpbusd (see module docstring)."""

    name = "conv2d-int8-vnni"

    # The NCHW4c data pack as byte transposes of 4 channel rows (common.transposing_copy) instead
    # of a 4-plane byte gather per pixel. Measured on one Zen 4 core, single layers interleaved,
    # ms, gather -> transposes: 960->160 1x1 @7 0.057 -> 0.045, 192->32 1x1 @28 0.059 -> 0.049,
    # 576->96 1x1 @14 0.071 -> 0.067, 320->1280 1x1 @7 0.140 -> 0.136, the 7x7 s2 stem 1.33 ->
    # 1.26; 3x3 layers within 1% (64->64 @56 0.624 / 0.625, 128->128 @28 0.574 / 0.571, 512->512
    # @7 0.529 / 0.522); MobileNetV2 int8 whole model 1.27x -> 1.24x and 1.24x -> 1.22x of ONNX
    # Runtime int8 (two A/Bs).
    # The AVX2 rules keep the gather: with vpmaddubsw it measured within +-3% on Zen 3, and the
    # vpmaddwd form's pack is int16, which the byte transpose does not take. ArmDot: not measured.
    transposed_pack = True

    def _match_and_schedule(self, func, target):
        matched = match_int8_conv(func, self.data_dtype)
        if matched is None:
            return None
        sch, conv, reads, dims = matched
        if dims[1] % self.lanes or dims[4] % self.depth or not self._claims(func, sch, conv, reads, dims):
            return None
        return self._schedule(sch, func, conv, reads, dims)

    def _claims(self, func, sch, conv, reads, dims) -> bool:
        """Further conditions of a subclass on a matched conv whose F and C fit the dot product."""
        return True

    def _schedule(self, sch, func, conv, reads, dims):
        intrin = self.register_intrinsic()
        lanes, depth = self.lanes, self.depth
        data_idx, weight_idx = reads
        N, F, OH, OW, C, KH, KW = dims
        nb, xt = choose_tile(F // lanes, OW, self.max_accumulators)

        # Producers of the data operand inside the function are inlined into the NCHW4c copy.
        data_producers = common.operand_producers(sch, conv, data_idx)
        epilogue = common.fuse_epilogue(sch, conv)

        # Weight: [F, C, KH, KW] -> [F/16, C/4, KH, KW, 16, 4] (compile time for constants).
        wpack = common.pack_operand(
            sch, func, conv, weight_idx,
            lambda o, i, h, w: (o // lanes, i // depth, h, w, o % lanes, i % depth),
        )
        # Data: [N, C, H, W] (padded) -> [N, C/4, H, W, 4], a parallel per-call copy.
        dpack = sch.cache_read(conv, data_idx, "global")
        for producer in data_producers:
            sch.compute_inline(producer)
        sch.transform_layout(dpack, ("write", 0), lambda a, c, h, w: (a, c // depth, h, w, c % depth))
        sch.transform_block_layout(dpack, lambda a, c, h, w: (a, c // depth, h, w, c % depth))
        if self.widen_operands:  # AVX2: both packs int16 (common.AVX2_WIDE_DOT_INTRIN)
            sch.unsafe_set_dtype(wpack, 0, "int16")
            sch.unsafe_set_dtype(dpack, 0, "int16")

        n, f, y, x, rc, ry, rx = sch.get_loops(conv)
        fo, fb, fi = sch.split(f, [None, nb, lanes])
        rco, rci = sch.split(rc, [None, depth])
        xo, xi = sch.split(x, [None, xt])
        sch.reorder(n, fo, y, xo, rco, ry, rx, xi, fb, fi, rci)

        # Register tile laid out [x][f] so each 16-channel accumulator vector is contiguous.
        acc = sch.cache_write(conv, 0, "local")
        sch.transform_layout(conv, ("write", 0), lambda a, b, c, d: (a, c, d, b))
        sch.reverse_compute_at(acc, xo, preserve_unit_loops=True)
        if epilogue is not None:
            sch.reverse_compute_inline(epilogue)

        per_image = N > 1  # batch > 1: image by image (common.compute_per_image)
        outer = sch.fuse(fo, y, xo) if per_image else sch.fuse(n, fo, y, xo)
        if F * OH * OW * (1 if per_image else N) >= common.MIN_PARALLEL_ELEMENTS:
            sch.parallel(outer)
        dl = common.compute_per_image(sch, dpack, n, per_image)  # (n, c/4, h, w, 4)
        transposed = common.transposing_copy(sch, dpack, dl, depth, True, per_image) if self.transposed_pack else None
        if transposed is not None:
            sch = transposed
        else:  # 4 channels of a pixel gathered per step (one byte from each of 4 planes)
            sch.parallel(sch.fuse(dl[1], dl[2]) if per_image else sch.fuse(dl[0], dl[1], dl[2]))
            sch.unroll(dl[-1])
        common.unroll_and_vectorize_tile(sch, conv, [xi, fb], fi, rco, intrin)

        # Write-back + epilogue over the tile, loops (n, f: nb*16, y, x: xt). NCHW output is
        # contiguous along x, so with xt >= 8 columns: f outer (unrolled), x vectorized -- one
        # contiguous store per channel, the per-channel requant constants broadcast, LLVM
        # transposes the [x][f] register tile with shuffles (measured 0.56x on the 16->96 1x1
        # @112 of MobileNetV2, 0.6-0.9x on ResNet-18's 3x3 layers). Vectorizing along f instead
        # stores each output byte separately (vpextrb, one channel plane apart); it is kept for
        # narrow tiles (xt = 7: 1.2x slower along x) and the 7x7 stem (1.3x slower along x).
        wn, wf, wy, wx = sch.get_loops(acc)[-4:]  # under the task loop (and the image loop)
        if xt >= WRITEBACK_MIN_COLUMNS and KH * KW <= 9:
            sch.reorder(wn, wy, wf, wx)
            sch.unroll(wf)
            sch.vectorize(wx)
        else:
            wfo, wfi = sch.split(wf, [None, lanes])
            sch.reorder(wn, wy, wfo, wx, wfi)
            sch.unroll(wfo)
            sch.vectorize(wfi)
        return sch


class Conv2dInt8AVX2(common.AVX2WideDot, Conv2dInt8VNNI):
    """u8 x i8 -> i32 NCHW conv2d on AVX2 without VNNI: the same loop nest with an 8x2 ``vpmaddwd``
    dot product (common.AVX2_WIDE_DOT_INTRIN) instead of vpdpbusd -- NCHW2c data pack written as
    int16 per call, weights packed [F/8, C/2, KH, KW, 8, 2] int16 at compile time. Needs C % 2 == 0
    and F % 8 == 0 (else ``Conv2dDirect``); AVX2's 16 ymm registers allow at most
    ``AVX2_MAX_ACCUMULATORS`` accumulators per tile."""

    name = "conv2d-int8-avx2"
    transposed_pack = False


class Conv2dInt8AVX2Maddubs(common.AVX2MaddubsDot, Conv2dInt8VNNI):
    """u8 x i8 -> i32 NCHW conv2d on AVX2 without VNNI whose constant weight lies within
    +-``common.WEIGHT_BOUND_MADDUBS`` (7-bit codes, ``quantize{bits=7}``): the VNNI loop nest at 8
    lanes x 4 deep with ``vpmaddubsw`` + ``vpmaddwd`` (common.AVX2_MADDUBS_DOT_INTRIN), exact for
    such weights (see there). NCHW4c uint8 data pack, weights [F/8, C/4, KH, KW, 8, 4] int8. Needs
    C % 4 == 0, F % 8 == 0 and the weight's range attached by ``schedules.attach_constant_ranges``;
    any other conv goes to ``Conv2dInt8AVX2``."""

    name = "conv2d-int8-avx2-maddubs"
    transposed_pack = False

    def _claims(self, func, sch, conv, reads, dims) -> bool:
        if not common.within_maddubs_bound(func, sch.get(conv).reads[reads[1]].source):
            return False
        # 1x1 convs the pixel-vectorized rule (which this rule precedes) takes run faster there:
        # the expansions (measured on Zen 3, 16->96 @112 1.12 ms there vs 3.01 here, 64->64 @56
        # 0.41 vs 0.60) and, since its data pack is a byte transpose (common.transposing_copy),
        # the projections too: single layers interleaved, ms, here -> there, 32->16 @112 0.43 ->
        # 0.25, 96->24 @56 0.36 -> 0.24 (2 threads 0.21 -> 0.16), 144->24 @56 0.32 -> 0.24,
        # 144->32 @28 0.133 -> 0.096, 192->32 @28 0.109 -> 0.093, 256->64 @28 0.233 -> 0.202.
        # (With the per-byte pack the projections were faster here: 96->24, 144->24, 192->32
        # 0.74 -> 0.56 ms.)
        from targets.lowering.schedules import conv1x1_int8  # imports this module

        return not conv1x1_int8.takes(sch, conv, reads, dims)


class Conv2dInt8ArmDot(common.ArmDotprodDot, Conv2dInt8VNNI):
    """i8 x i8 -> i32 NCHW conv2d on AArch64 with the dot-product extension (Cortex-A76 of the
    Raspberry Pi 5, Cortex-A78AE of the Jetson Orin hosts...): the VNNI loop nest at 4 lanes x 4
    deep with ``sdot`` (common.ARM_SDOT_INTRIN). NCHW4c int8 data pack per call, weights
    [F/4, C/4, KH, KW, 4, 4] int8 at compile time, up to 24 int32x4 accumulators (32 NEON
    registers). The activations are int8 because targets/lowering/signed_activations.py shifted the
    integer-only form's uint8 ones before fusion (sdot has no unsigned x signed form). Needs
    C % 4 == 0 (the ConvInteger converter pads an RGB stem's channels) and F % 4 == 0; depthwise
    convs stay uint8 and go to ``DepthwiseInt8``."""

    name = "conv2d-int8-arm-sdot"
    transposed_pack = False
