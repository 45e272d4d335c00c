"""Depthwise NCHW conv2d uint8 x int8 -> int32, stride 1 (MobileNet's 3x3 depthwise layers,
integer-only form).

Claims ``group_conv2d_nchw`` / ``depthwise_conv2d_nchw`` blocks with one input channel per group,
unit column stride, whose update is ``acc += int32(x_u8) * int32(w_i8)`` (int32 accumulator), on
LLVM CPU targets. The fused epilogue (bias, int64 requantization chain, clip, cast) stays fused.

Loop structure produced (OW output width, xv <= 16 columns per vector, yt rows per tile):

    parallel for (n, c):                                            # one channel plane per task
        pad[H + 2p, W + 2p] = 0                                     # constant fill, vectorized
        pad[p:p+H, p:p+W] = x[n, c]                                 # in-bounds copy, vectorized
        for oh_outer, ow_outer:
            acc[yt][xv] = 0                                         # int32 vectors (local)
            for ry, rx:
                for yi in yt (unrolled):
                    acc[yi][:] += int32(pad[oh0+yi+ry, ow0+rx : ow0+rx+xv]) * int32(w[c, ry, rx])
            out[n, c, oh0:oh0+yt, ow0:ow0+xv] = epilogue(acc)      # vectorized along ow
        crop[n, c] = out[n, c, :, :OW]              # only after wide_rows.py widened the rows

Why: the loop nest of the fp32 ``depthwise.GroupConv2d`` rule (width-vectorized, weights
broadcast, the rows of a tile sharing each weight), with the padding changed for 8-bit data: a
constant fill plus an in-bounds copy (``decompose_padding``), both vectorized, once per channel
plane, instead of a bounds check per element per row tile (which compiles to scalar byte moves).
LLVM turns the u8 x i8 -> i32 product into ``vpdpwssd`` on AVX-512 VNNI. Measured on the int8
MobileNetV2 (2 cores, per layer vs GroupConv2d): 0.68x-0.95x on the stride-1 layers (e.g. 0.129 vs
0.189 ms for 2 x 192 channels @ 28, 0.173 vs 0.214 ms for 4 x 384 channels @ 14).

Stride 2 is declined: ``GroupConv2d`` takes it with its channel-blocked nest (contiguous loads of
8 channels for any stride; measured 1.0-3.1x faster per layer than its width form on
MobileNetV2's four stride-2 layers, see depthwise.py). A de-interleaving copy here (even bytes by truncation of a
16-bit view, odd by shift + truncation) was 0.95x-1.3x of that width form, so it was dropped.
On AVX2, rows shorter than one vector (7 columns) whose channels fill int32 vectors are declined
too (``depthwise.int8_channel_blocked``).
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.target import Target

from targets.lowering.schedules import common


def _depthwise_operands(sch, conv):
    """(data_read_index, weight_read_index) of a u8 x i8 -> i32 depthwise block, else None."""
    block = sch.get(conv)
    loads = common.int8_dot_loads(block)
    if loads is None:
        return None
    data, weight = loads
    if str(data.source.dtype) != "uint8" or str(weight.source.dtype) != "int8":
        return None
    # one input channel per output channel: weight [F, 1, KH, KW]
    if len(weight.indices) != 4 or int(weight.source.shape[1]) != 1:
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


def _column_stride(sch, conv) -> int:
    """Stride along the output columns of the matched depthwise block (common.column_stride)."""
    block = sch.get(conv)
    data = common.int8_dot_loads(block)[0]
    ow, kw = common.extents(sch, [sch.get_loops(conv)[3], sch.get_loops(conv)[6]])
    return common.column_stride(int(data.source.shape[3]), kw, ow)


class DepthwiseInt8(common.MatchingRule):
    """Width-vectorized int32 depthwise conv for u8 x i8 (see module docstring)."""

    name = "depthwise-int8"

    def _match_and_schedule(self, func, target):
        sch = s_tir.Schedule(func)
        conv = common.find_anchor(sch, ("group_conv2d_nchw", "depthwise_conv2d_nchw"))
        if conv is None or common.iter_kinds(sch, conv) != "SSSSRRR":
            return None
        if _depthwise_operands(sch, conv) is None:
            return None
        if _column_stride(sch, conv) != 1:
            return None  # strided: GroupConv2d's per-tile de-interleaved padding is as fast or faster
        from targets.lowering.schedules.depthwise import int8_channel_blocked

        lanes = common.vector_lanes(target, "int32")
        _, f, _, x = sch.get_loops(conv)[:4]
        channels, out_width = common.extents(sch, [f, x])
        if channels % lanes == 0 and int8_channel_blocked(out_width, 1, lanes):
            return None  # short rows: GroupConv2d's channel-blocked nest (see there)
        return self._schedule(sch, conv, target)

    def _schedule(self, sch, conv, target):
        lanes = common.vector_lanes(target, "int32")
        producers = [p for p in sch.get_producers(conv) if common.block_name(sch, p).startswith("pad_temp")]
        # keep_slice: wide_rows.py's crop of the widened rows stays a copy after the write-back
        epilogue = common.fuse_epilogue(sch, conv, keep_slice=True)
        crop = common.root_blocks(sch)[-1]
        crop = None if epilogue is None or sch.get(crop).same_as(sch.get(epilogue)) else crop

        n, f, y, x, rc, ry, rx = sch.get_loops(conv)
        N, F, OH, OW, _, KH, KW = common.extents(sch, [n, f, y, x, rc, ry, rx])
        xv = OW if OW <= lanes else common.largest_divisor(OW, lanes)
        yt = common.largest_divisor(OH, ROW_TILE)

        yo, yi = sch.split(y, [None, yt])
        xo, xi = sch.split(x, [None, xv])
        sch.reorder(n, f, yo, xo, rc, ry, rx, yi, xi)
        acc = sch.cache_write(conv, 0, "local")
        sch.reverse_compute_at(acc, xo, preserve_unit_loops=True)
        if epilogue is not None:
            sch.reverse_compute_inline(epilogue)
        plane = sch.fuse(n, f)
        if N * F * OH * OW >= common.MIN_PARALLEL_ELEMENTS:
            sch.parallel(plane)
        if crop is not None:  # copied out right after its channel plane is written (still in L1)
            sch.reverse_compute_at(crop, plane, preserve_unit_loops=True)
            sch.vectorize(sch.get_loops(crop)[-1])
        sch.unroll(yi)
        sch.vectorize(xi)
        init = sch.decompose_reduction(conv, rc)
        sch.vectorize(sch.get_loops(init)[-1])
        wb = sch.get_loops(acc)
        sch.vectorize(wb[-1])
        if len(producers) == 1:
            pad = producers[0]
            sch.compute_at(pad, plane, preserve_unit_loops=True)
            # A constant fill + an in-bounds copy instead of a bounds check per element: both
            # loops vectorize (the if_then_else form compiles to scalar byte moves).
            ploops = sch.get_loops(pad)
            try:
                fill = sch.decompose_padding(pad, ploops[1])
                sch.vectorize(sch.get_loops(fill)[-1])
            except s_tir.schedule.ScheduleError:  # no padding at all (a plain copy stage): nothing to fill
                pass
            sch.vectorize(sch.get_loops(pad)[-1])
        return sch


# Output rows per register tile (one accumulator vector each).
ROW_TILE = 8


__all__ = ["DepthwiseInt8"]
