"""Direct NCHW conv2d (any kernel size, stride, dilation; 1x1 included), groups == 1.

Loop structure produced (F out channels, OW output width, V SIMD lanes):

    input copy:  parallel(n, h) copy of the input into channels-last [n, H+2p, W+2p, C], zero
                 border included (the padding stage re-laid out; a plain transposing copy when
                 the conv has no padding)
    weight pack: W[F, C, KH, KW] -> Wp[F/(nb*V), KH, KW, C, nb*V]   (folded at compile time when W
                 is a constant: SplitLayoutRewritePreproc + FoldConstant in apply_default_schedules)
    parallel for (n, f_outer, oh, ow_outer):          # f_outer: blocks of nb*V output channels
        acc[xt][nb*V] = 0                             # register tile, vectorized over channels
        for ry, rx, rc:                               # reduction, input channels innermost
            for xi in 0..xt (unrolled), fb in 0..nb (unrolled):
                acc[xi][fb*V:(fb+1)*V] += input[oh*s+ry, (ow0+xi)*s+rx, rc] (broadcast)
                                          * Wp[f_outer, ry, rx, rc, fb*V:(fb+1)*V] (one vector load)
        out[n, f, oh, ow0:ow0+xt] = epilogue(acc)     # bias/relu/residual/clip fused in write-back

Why this shape: vectorizing over output channels makes every inner-loop operand a contiguous
vector load or a scalar broadcast for any stride (stride 2 would need gathers if vectorized over
width). The network stays NCHW (no layout_transform between layers); only the conv's own input
copy, which the padding stage writes anyway, is channels-last, so the broadcasts of consecutive
reduction steps read consecutive floats of one cache line (see channels_last_input). The
``nb x xt`` accumulator tile is sized to the register file (choose_tile: 2 x 14 of the
32 AVX-512 registers, 2 x 6, 2 x 5 or 3 x 4 of the 16 AVX2 ones; xt need not divide the width): per reduction step nb weight loads and
xt broadcasts feed nb*xt FMAs. The weight block of one ``f_outer`` streams from L2 while (oh,
ow_outer) sweep the image.

1x1 stride-1 convs with few input channels (large images) use a pixel-vectorized GEMM instead
(``_schedule_pixels``), which needs no copy of the input at all.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.target import Target

from targets.lowering.schedules import common


def _weight_read_index(block: s_tir.SBlock) -> int | None:
    """The read whose first index is the output-channel iter var (the weight, not the input)."""
    f_var = block.iter_vars[1].var
    for i, region in enumerate(block.reads):
        if len(region.region) == 4 and region.region[0].min.same_as(f_var):
            return i
    return None


def _pad_block(sch: s_tir.Schedule, conv):
    producers = [p for p in sch.get_producers(conv) if common.block_name(sch, p).startswith("pad_temp")]
    return producers[0] if len(producers) == 1 else None


# Floor, in cycles, of one reduction step of the channel-vectorized micro-kernel: every accumulator
# takes one FMA per step, and an FMA waits for the previous one on the same register (4 cycles on
# Zen 3) plus the step's loads. A tile of 8 accumulators sits on that floor (Zen 3, 64-channel 3x3
# conv @56: the 4x2 tile 2.99 ms, 2x6 2.77 ms, 2x5 2.82 ms).
STEP_FLOOR_CYCLES = 5


def tile_step_cycles(nb: int, t: int) -> float:
    """Modelled cycles of one reduction step of an ``nb x t`` tile: ``nb*t`` FMAs on two pipes and
    ``t`` broadcasts on two load ports, at least STEP_FLOOR_CYCLES."""
    return max(nb * t / 2, t / 2, STEP_FLOOR_CYCLES)


def tile_row_cycles(nb: int, t: int, extent: int) -> float:
    """Modelled cycles per reduction step to cover ``extent`` output columns with ``nb x t`` tiles:
    ``extent // t`` full tiles and one partial tile of the remaining columns, if any."""
    full, rest = divmod(extent, t)
    return full * tile_step_cycles(nb, t) + (tile_step_cycles(nb, rest) if rest else 0)


def choose_tile(out_channels: int, out_width: int, lanes: int, registers: int,
                partial: bool = True) -> tuple[int, int, int]:
    """(V, nb, xt): vector width over channels, channel vectors per tile, output columns per tile.

    Starts from the largest tile of exact divisors (common.register_tile: its budget is the
    register file) and takes a tile that leaves a partial last tile instead when the cycle model
    (tile_row_cycles per channel vector) says it is cheaper. Widths like 56, 28 and 14 (7 * 2^k)
    have no divisor that fills 12 of AVX2's 16 registers, so the exact tile has 8 accumulators;
    2x6 over 56 columns (nine full tiles and one of 2) or 2x5 over 14 fills 12 or 10. The split is
    then not exact: TVM predicates the last tile's columns, LLVM gives it its own loop. Measured on
    one Zen 3 core (3x3 convs, exact -> partial, ms): 64ch @56 2.99 -> 2.77, 128ch @28
    2.71 -> 2.51, 256ch @14 2.90 -> 2.50 (2x5). Partial tiles need two full tiles per row and
    ``nb >= 2``: on 7 columns 2x5 and 2x6 measured slower than the exact 1x7 (3.20 / 3.56 vs
    3.04 ms), and one-vector tiles of 10-12 columns ran at half speed. ``partial=False`` keeps the
    exact tile: the pointwise kernels, whose tile runs over the flattened image, measured slower
    with a partial one (MobileNetV2's 384->64 @14: 0.163 ms exact 4x2, 0.29 ms partial 2x6;
    960->160 @7: 0.082 -> 0.139 ms)."""
    v = common.vector_width_for(out_channels, lanes)
    n_vectors = out_channels // v
    nb, xt = common.register_tile(n_vectors, out_width, registers)
    if not partial:
        return v, nb, xt
    best_cost = tile_row_cycles(nb, xt, out_width) / nb
    for cand_nb in (4, 3, 2):
        if n_vectors % cand_nb:
            continue
        limit = min((registers - 1) // cand_nb - 1, common.max_accumulators(registers) // cand_nb, out_width // 2)
        for t in range(1, limit + 1):
            cost = tile_row_cycles(cand_nb, t, out_width) / cand_nb
            if cost < best_cost - 1e-9:
                best_cost, nb, xt = cost, cand_nb, t
    return v, nb, xt


# 1x1 convs with at most this many input channels use the pixel-vectorized GEMM kernel (so do
# projections, C >= F: see Conv2dDirect._schedule).
PIXEL_GEMM_MAX_CHANNELS = 64


def choose_pixel_tile(pixels: int, out_channels: int, lanes: int, registers: int) -> tuple[int, int] | None:
    """(nb, t) for the pixel-vectorized 1x1 kernel: ``nb`` vectors of ``lanes`` pixels by ``t`` output
    channels (exact divisors), maximizing FMAs per load ``nb*t / (nb + t)`` (then ``nb*t``) under the
    register budget ``nb*t + nb + 1 <= registers`` and ``nb*t <= common.max_accumulators``. None
    when the pixels do not fill whole vectors."""
    if lanes < 4 or pixels % lanes:
        return None
    best = None
    for nb in (7, 4, 3, 2, 1):
        if (pixels // lanes) % nb:
            continue
        limit = min((registers - 1) // nb - 1, common.max_accumulators(registers) // nb)
        t = common.largest_divisor(out_channels, limit)
        key = (nb * t / (nb + t), nb * t)
        if best is None or key > best[0]:
            best = (key, nb, t)
    return None if best is None else (best[1], best[2])


# Pixel-vectorized 1x1 kernel: the input of one pixel chunk (C channels x chunk pixels) is kept at
# most this many bytes, so it stays in L1 while every channel block of the output sweeps it.
# (Measured on MobileNetV2's 16->96 @112: 8, 32 and 128 KB within 3% of each other.)
PIXEL_CHUNK_BYTES = 32 * 1024


def pixel_chunk_vectors(blocks: int, block_bytes: int, budget: int | None = None) -> int:
    """Pixel blocks per chunk of the pixel-vectorized 1x1 kernel: the largest divisor of ``blocks``
    (the image's pixel blocks of nb*V pixels) whose input, ``block_bytes`` per block, fits
    ``budget`` bytes (at least one block)."""
    budget = PIXEL_CHUNK_BYTES if budget is None else budget
    return common.largest_divisor(blocks, max(1, budget // max(1, block_bytes)))


def _dtype_bytes(block: s_tir.SBlock) -> int:
    """Bytes per element of the conv's output (the input has the same float type)."""
    import tvm

    return max(1, tvm.DataType(str(block.writes[0].source.dtype)).bits // 8)


def _data_read_index(block: s_tir.SBlock, w_idx: int) -> int:
    """The conv block's read of the (padded) input image: the 4-d read that is not the weight."""
    out = block.writes[0].source
    found = [i for i, r in enumerate(block.reads) if i != w_idx and len(r.region) == 4 and not r.source.same_as(out)]
    if len(found) != 1:
        raise ValueError("conv block without a single input-image read")
    return found[0]


def channels_last_input(sch: s_tir.Schedule, conv, pad, w_idx: int):
    """Make the conv read its input from a channels-last copy ``[n, h, w, c]``; return the block
    that writes the copy.

    The copy is the padding stage itself when there is one (the padded image is written anyway, so
    the transpose costs no extra pass), else a new copy of the input. Channels-last makes the
    reduction's innermost loop (input channels, at fixed kernel tap) read consecutive floats: in
    NCHW each step jumps a whole channel plane (H*W floats) and touches a new cache line per
    broadcast, which measured 2-4x slower on Zen 3's 32 KB L1 (64-channel 56x56 3x3 conv:
    6.7 ms NCHW, 3.0-3.3 ms channels-last, ONNX Runtime 2.8 ms, one core).
    """
    if pad is not None:
        block = sch.get(pad)
        if [int(d) for d in block.reads[0].source.shape] == [int(d) for d in block.writes[0].source.shape]:
            sch.compute_inline(pad)  # a pure copy: replace it by the transposing copy below
            pad = None
    if pad is None:
        pad = sch.cache_read(conv, _data_read_index(sch.get(conv), w_idx), "global")
    # Store and iterate the copy in [n, h, w, c] order: contiguous stores, strided loads.
    sch.transform_layout(pad, ("write", 0), lambda n, c, h, w: (n, h, w, c))
    sch.transform_block_layout(pad, lambda n, c, h, w: (n, h, w, c))
    return pad


def schedule_relayout(sch: s_tir.Schedule, loops, parallel: bool) -> None:
    """Run the channels-last input copy, whose loops are ``loops`` (n, h, w, c), in parallel over
    image rows (n, h)."""
    outer = sch.fuse(*loops[:2])
    if parallel:
        sch.parallel(outer)


class Conv2dDirect(common.ScheduleRule):
    """NCHW conv2d with a register-tiled, channel-vectorized micro-kernel (see module docstring)."""

    name = "conv2d-direct"

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not common.is_static(func):
            return None
        sch = s_tir.Schedule(func)
        conv = common.find_anchor(sch, ("conv2d_nchw",))
        if conv is None or common.iter_kinds(sch, conv) != "SSSSRRR":
            return None
        try:
            return self._schedule(sch, func, conv, target)
        except Exception:  # noqa: BLE001 - an unexpected structure: let the next rule try
            return None

    def _schedule(self, sch, func, conv, target):
        block = sch.get(conv)
        w_idx = _weight_read_index(block)
        if w_idx is None:
            return None
        out_dtype = block.writes[0].source.dtype
        n, f, y, x, rc, ry, rx = sch.get_loops(conv)
        N, F, OH, OW, C, KH, KW = common.extents(sch, [n, f, y, x, rc, ry, rx])
        lanes, registers = common.vector_lanes(target, out_dtype), common.vector_registers(target)
        pad = _pad_block(sch, conv)
        pointwise = KH == 1 and KW == 1 and self._unit_stride_unpadded(sch, conv, pad, OH, OW)
        if pointwise:
            tile = choose_pixel_tile(OH * OW, F, lanes, registers)
            # Few input channels: the channel-vectorized kernel's transposed write-back (one scalar
            # store per output) is not amortized over the reduction, so the pixel GEMM wins. It
            # also wins for projections (C >= F): no channels-last copy of the large input, and
            # contiguous stores of the (residual) epilogue. Measured on one Zen 3 core (AVX2),
            # channel-vectorized -> pixel GEMM, ms: 96->24 @56 0.52 -> 0.26, 256->64 @56 with a
            # residual Add 4.05 -> 3.68, 512->128 @28 + Add 2.57 -> 2.38, 256->256 @28 2.49 ->
            # 2.37, 1024->256 @8 0.65 -> 0.53; MobileNetV2 fp32 1.49x -> 1.45x of ONNX Runtime in
            # an A/B. Expansions with many input channels stay channel-vectorized (128->512 @28
            # 2.64 -> 3.2 on the pixel GEMM), unless the pixel tile is about as large (AVX-512).
            if tile is not None and (C <= PIXEL_GEMM_MAX_CHANNELS or C >= F or tile[0] * tile[1] >= 20):
                return self._schedule_pixels(sch, func, conv, pad, w_idx, tile, lanes)
        # A pointwise conv's pixels form one axis (y*OW + x): its tile of xt pixels may span rows,
        # which allows the 3x4 tile on 14x14 images (196 = 4 x 49) where rows of 14 allow only 4x2
        # (Zen 3, MobileNetV2's 14x14 1x1 convs: 8-17% faster).
        v, nb, xt = choose_tile(F, OH * OW if pointwise else OW, lanes, registers, partial=not pointwise)
        tile_f = nb * v
        epilogue = common.fuse_epilogue(sch, conv)

        # Weight: [F, C, KH, KW] -> [F/tile_f, KH, KW, C, tile_f], one contiguous stream per tile.
        common.pack_operand(
            sch, func, conv, w_idx,
            lambda o, i, h, w: (o // tile_f, h, w, i, o % tile_f),
        )
        data = channels_last_input(sch, conv, pad, w_idx)

        # Register tile: the accumulator is laid out [x][f] so the channel vector is contiguous.
        acc = sch.cache_write(conv, 0, "local")
        if pointwise:
            sch.transform_layout(conv, ("write", 0), lambda a, b, c, d: (a, c * OW + d, b))
            sch.transform_block_layout(conv, lambda a, b, c, d, e, g, h: (a, b, c * OW + d, e, g, h))
            sch.transform_block_layout(acc, lambda a, b, c, d: (a, b, c * OW + d))
            n, f, x, rc, ry, rx = sch.get_loops(conv)
            rows = []
        else:
            sch.transform_layout(conv, ("write", 0), lambda a, b, c, d: (a, c, d, b))
            n, f, y, x, rc, ry, rx = sch.get_loops(conv)
            rows = [y]
        fo, fb, fv = sch.split(f, [None, nb, v])
        xo, xi = sch.split(x, [None, xt])
        sch.reorder(n, fo, *rows, xo, ry, rx, rc, xi, fb, fv)
        per_image = N > 1  # batch > 1: image by image (common.compute_per_image)
        task_loops = [fo, *rows, xo] if per_image else [n, fo, *rows, xo]
        common.attach_write_back(sch, acc, epilogue, xo, task_loops, F * OH * OW * (1 if per_image else N) >= common.MIN_PARALLEL_ELEMENTS)
        common.unroll_and_vectorize_tile(sch, conv, [xi, fb], fv if v > 1 else None, ry)
        loops = common.compute_per_image(sch, data, n, per_image)
        schedule_relayout(sch, loops, C * OH * OW * (1 if per_image else N) >= common.MIN_PARALLEL_ELEMENTS)
        return sch

    @staticmethod
    def _unit_stride_unpadded(sch, conv, pad, out_h: int, out_w: int) -> bool:
        """True if the input image has exactly the output's height and width (1x1, stride 1, no pad)."""
        if pad is not None:
            block = sch.get(pad)
            src, dst = block.reads[0].source, block.writes[0].source
            if [int(d) for d in src.shape] != [int(d) for d in dst.shape]:
                return False
            shape = src.shape
        else:
            block = sch.get(conv)
            shape = block.reads[_data_read_index(block, _weight_read_index(block))].source.shape
        return int(shape[2]) == out_h and int(shape[3]) == out_w

    @staticmethod
    def _schedule_pixels(sch, func, conv, pad, w_idx, tile, lanes):
        """1x1 stride-1 conv as a GEMM out[f, p] = sum_c W[f, c] * X[c, p] over the flattened image,
        vectorized along pixels: per input channel, ``nb`` contiguous pixel vectors and ``t``
        broadcast weights feed ``nb*t`` FMAs, and the accumulator tile [t][nb*V] is stored with plain
        vector stores (no channel->pixel transpose in the write-back). Loops: parallel over
        (pixel chunk, channel block), then the chunk's pixel blocks (see the reorder below)."""
        nb, t = tile
        if pad is not None:
            sch.compute_inline(pad)
        epilogue = common.fuse_epilogue(sch, conv)
        n, f, y, x, rc, ry, rx = sch.get_loops(conv)
        N, F, OH, OW = common.extents(sch, [n, f, y, x])
        # Weight: [F, C, 1, 1] -> [F/t, 1, 1, C, t]: the t broadcasts of one channel step are adjacent.
        common.pack_operand(sch, func, conv, w_idx, lambda o, i, h, w: (o // t, h, w, i, o % t))
        acc = sch.cache_write(conv, 0, "local")
        # Flatten the image (y, x) -> p in the accumulator and in both blocks' iteration domains.
        sch.transform_layout(conv, ("write", 0), lambda a, b, c, d: (a, b, c * OW + d))
        sch.transform_block_layout(conv, lambda a, b, c, d, e, g, h: (a, b, c * OW + d, e, g, h))
        sch.transform_block_layout(acc, lambda a, b, c, d: (a, b, c * OW + d))
        n, f, p, rc, ry, rx = sch.get_loops(conv)
        C = common.extents(sch, [rc])[0]
        chunk = pixel_chunk_vectors(OH * OW // (nb * lanes), nb * lanes * C * _dtype_bytes(sch.get(conv)))
        fo, fi = sch.split(f, [None, t])
        pc, po, pb, pv = sch.split(p, [None, chunk, nb, lanes])
        # Pixel chunks outermost, then channel blocks, then the pixels of the chunk: the chunk's
        # input (C x chunk pixels) stays in L1/L2 while every channel block sweeps it, and each
        # tile writes t channel rows sequentially. Pixel blocks outside the channel blocks (the
        # order before) wrote all F channel planes per pixel block -- F + C streams: MobileNetV2's
        # 16->96 @112 took 1.53 ms that way and takes 0.78 ms now, its 24->144 @56 0.51 -> 0.37 ms,
        # the whole model 0.90x (Zen 3, one core; ONNX Runtime 0.73 / 0.36 ms).
        sch.reorder(n, pc, fo, po, ry, rx, rc, fi, pb, pv)
        common.attach_write_back(sch, acc, epilogue, po, [n, pc, fo], N * F * OH * OW >= common.MIN_PARALLEL_ELEMENTS)
        common.unroll_and_vectorize_tile(sch, conv, [fi, pb], pv, ry)
        wb = sch.get_loops(acc)
        _, wv = sch.split(wb[-1], [None, lanes])
        sch.vectorize(wv)
        return sch
