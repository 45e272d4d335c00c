"""Depthwise and grouped NCHW conv2d (``group_conv2d_nchw``, groups > 1).

Two loop nests, chosen by the output width (V SIMD lanes):

Channel-blocked, for depthwise convs (one input channel per output channel, channels a multiple
of V) that are float with short output rows (OW < 4V with AVX2's V = 8: MobileNetV2's 28/14/7-wide
layers; OW < V = 16 with AVX-512; ``float_channel_blocked_width``) or
8-bit integer (u8 x i8 -> int32) with a column stride > 1 or, on x86, rows under 8 columns
(``int8_channel_blocked``):

    padded copy: parallel(n, c/V, h) x -> pad[n, c/V, H+2p, W+2p, V]   (NCHW{V}c, zero border;
                 the padding stage re-laid out, vectorized over the V channels; for 8-bit data
                 a zero fill + byte transposes of P pixels x V channels, common.transposing_copy)
    weight pack: W[F, 1, KH, KW] -> Wp[F/V, KH, KW, 1, V]   (folded at compile time)
    parallel for (n, f_outer, oh):
        for ow_outer:
            acc[xt][V] = 0                                     # xt vector registers
            for ry, rx (unrolled), xi in 0..xt (unrolled):
                acc[xi][:] += pad[f_outer, oh*s+ry, (ow0+xi)*s+rx, :] (vector load)
                              * Wp[f_outer, ry, rx, 0, :]              (vector load)
            out[n, f_outer*V:+V, oh, ow0:ow0+xt] = epilogue(acc)

Width-vectorized, for everything else (OW output width, xv <= V columns per vector, yt rows per
tile):

    parallel for (n, f, oh_outer):
        pad[rows needed by this tile] = padded input rows of channel f (L1-resident; for stride
                                        s > 1 stored de-interleaved as [h, w % s, w // s] so each
                                        output vector reads contiguous input)
        for ow_outer:
            acc[yt][xv] = 0                                   # yt vector registers
            for rc (channels of the group; 1 when depthwise), ry, rx:
                for yi in 0..yt (unrolled):
                    acc[yi][:] += input[g*C/G + rc, (oh0+yi)*s+ry, (ow0:ow0+xv)*s+rx]  (vector)
                                  * W[f, rc, ry, rx]                                 (broadcast)
            out[n, f, oh0:oh0+yt, ow0:ow0+xv] = epilogue(acc)

Why: a depthwise conv has no channel reduction, and the op is memory-bound (9 FMAs per output),
so what matters is one pass over the input at full vector width. Along the width that holds for
rows that are whole multiples of V; rows of 28, 14 or 7 columns leave lanes idle (partial vectors
of 7) and the per-tile strided copy dominates. Blocking V channels makes every load a full,
contiguous vector for any width and stride, at the price of a transposing (gathering) padded copy
and a transposed write-back. Measured on one Zen 3 core (AVX2, V = 8) against ONNX Runtime in the
same run: 144 ch 56->28 stride 2: 0.41 -> 0.29 ms (ORT 0.27); 192 ch @ 28: 0.29 -> 0.13 ms (ORT
0.13); 576 ch @ 14: 0.18 -> 0.12 ms (ORT 0.10); at 112 and 56 columns both forms are within 10%
of ORT and the width form is kept.

The 8-bit integer depthwise convs of stride 1 go to ``depthwise_int8.DepthwiseInt8`` (width form,
padding decomposed); the strided ones come here and take the channel-blocked nest at any width
(V = 8 int32 lanes on AVX2: each tap a zero-extending byte load, a sign-extended weight vector and
``vpmulld``): the width form's de-interleaved copy moves one byte per instruction. Measured on
MobileNetV2 int8-w7, one Zen 3 core, width -> channel-blocked, ms (two interleaved runs each;
ONNX Runtime's NHWC int8 kernel in a separate profile): 96 ch 112->56 0.94-0.95 -> 0.56-0.87
(0.48), 144 ch 56->28 0.52-0.56 -> 0.23-0.36 (0.17), 192 ch 28->14 0.25-0.27 -> 0.09-0.15 (0.07),
576 ch 14->7 0.14-0.15 -> 0.07-0.12 (0.06). For stride 1 the channel-blocked nest measured no
better than ``DepthwiseInt8``.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.target import Target

from targets.lowering.schedules import common
from targets.lowering.schedules.conv2d import _weight_read_index


def float_channel_blocked_width(lanes: int) -> int:
    """Float depthwise convs with output rows narrower than this take the channel-blocked nest.

    Measured, one core, width form vs channel-blocked, ms: AVX2 (V = 8, Zen 3) rows below 4 vectors
    (module docstring: 28, 14, 7 columns) gain. AVX-512 (V = 16, Sapphire Rapids-class) only
    the 7-wide rows do: 960 ch @7 0.052 vs 0.046; at 14 and more columns the width form wins or
    ties -- 96 ch 112->56 s2 0.50 vs 0.66, 144 @56 0.26 vs 0.37, 144 56->28 s2 0.20 vs 0.24,
    192 @28 0.096 vs 0.138, 384 @14 0.053 vs 0.071, 192 28->14 s2 0.079 vs 0.074, 576 14->7 s2
    0.061 vs 0.057 -- since the 16-plane gather of the blocked copy costs twice the 8-plane one."""
    return 4 * lanes if lanes <= 8 else lanes


def int8_channel_blocked(out_width: int, stride: int, lanes: int) -> bool:
    """Whether an 8-bit (u8 x i8 -> int32) depthwise conv whose channels fill ``lanes``-wide int32
    vectors takes the channel-blocked nest: any column stride > 1 (module docstring), and on x86
    (8 or 16 lanes) stride-1 rows under 8 columns, which ``DepthwiseInt8``'s width form runs on
    partial vectors. Measured, single layers interleaved, width form -> channel-blocked: one Zen 3
    core (8 lanes) 960 ch @7 0.184 -> 0.163 ms, 160 ch @7 0.025 -> 0.022 ms; one Zen 4 core (16
    lanes) 960 ch @7 0.082 -> 0.058 ms. Rows of 14 and 28 columns were no faster channel-blocked
    on either (Zen 4: 576 ch @14 0.081 -> 0.091, 384 ch @14 0.053 -> 0.061, 192 ch @28 0.094 ->
    0.116 ms); wide_rows.py widens the rows that are longer than one vector instead."""
    return stride > 1 or (lanes >= 8 and out_width < 8)


class GroupConv2d(common.ScheduleRule):
    """Width-vectorized direct conv for depthwise/grouped NCHW conv2d (see module docstring)."""

    name = "conv2d-grouped"

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not common.is_static(func):
            return None
        sch = s_tir.Schedule(func)
        conv = common.find_anchor(sch, ("group_conv2d_nchw", "depthwise_conv2d_nchw"))
        if conv is None or common.iter_kinds(sch, conv) != "SSSSRRR":
            return None
        try:
            return self._schedule(sch, conv, target)
        except Exception:  # noqa: BLE001 - an unexpected structure: let the next rule try
            return None

    def _schedule(self, sch, conv, target):
        out_dtype = sch.get(conv).writes[0].source.dtype
        lanes = common.vector_lanes(target, out_dtype)
        if self._channel_blocked_pays(sch, conv, lanes):
            return self._schedule_channel_blocked(sch, conv, lanes)
        producers = [p for p in sch.get_producers(conv) if common.block_name(sch, p).startswith("pad_temp")]
        epilogue = common.fuse_epilogue(sch, conv)

        n, f, y, x, rc, ry, rx = sch.get_loops(conv)
        N, F, OH, OW, _, _, _ = common.extents(sch, [n, f, y, x, rc, ry, rx])
        xv = OW if OW <= lanes else common.largest_divisor(OW, lanes)
        yt = common.largest_divisor(OH, 8)

        yo, yi = sch.split(y, [None, yt])
        xo, xi = sch.split(x, [None, xv])
        sch.reorder(n, f, yo, xo, rc, ry, rx, yi, xi)
        acc = sch.cache_write(conv, 0, "local")
        sch.reverse_compute_at(acc, xo, preserve_unit_loops=True)
        if epilogue is not None:
            sch.reverse_compute_inline(epilogue)
        outer = sch.fuse(n, f, yo)
        if N * F * OH * OW >= common.MIN_PARALLEL_ELEMENTS:
            sch.parallel(outer)
        sch.unroll(yi)
        sch.vectorize(xi)
        init = sch.decompose_reduction(conv, rc)
        sch.vectorize(sch.get_loops(init)[-1])
        wb = sch.get_loops(acc)
        sch.vectorize(wb[-1])
        if len(producers) == 1:
            pad = producers[0]
            strided = self._deinterleave(sch, conv, pad, OW, common.extents(sch, [rx])[0])
            # Pad the rows of one channel right before they are used (they stay in L1) instead of
            # writing and re-reading a padded copy of the whole tensor.
            sch.compute_at(pad, outer, preserve_unit_loops=True)
            if strided:
                self._vectorize_pad(sch, pad, lanes)
        return sch

    @staticmethod
    def _channel_blocked_pays(sch, conv, lanes: int) -> bool:
        """True for a depthwise conv (F == C, one channel per group, F a multiple of ``lanes``)
        that is either float with output rows shorter than 4 vectors, or 8-bit integer
        (``int32(x) * int32(w)`` into int32, the integer-only form) with a column stride > 1
        (see the module docstring)."""
        block = sch.get(conv)
        is_float = str(block.writes[0].source.dtype).startswith(("float", "bfloat"))
        if not is_float and common.int8_dot_loads(block) is None:
            return False
        _, f, _, x, rc, _, rx = sch.get_loops(conv)
        F, OW, RC, KW = common.extents(sch, [f, x, rc, rx])
        w_idx = _weight_read_index(block)
        if w_idx is None or RC != 1 or F % lanes:
            return False
        data = [r for i, r in enumerate(block.reads) if i != w_idx and len(r.region) == 4]
        if len(data) != 1 or int(data[0].source.shape[1]) != F:
            return False
        if is_float:
            return OW < float_channel_blocked_width(lanes)
        return int8_channel_blocked(OW, common.column_stride(int(data[0].source.shape[3]), KW, OW), lanes)

    @staticmethod
    def _schedule_channel_blocked(sch, conv, lanes: int):
        """The channel-blocked nest of the module docstring (NCHW{V}c padded copy, V channels per
        vector, xt <= 8 output columns of accumulators)."""
        func = sch.mod["main"]
        block = sch.get(conv)
        w_idx = _weight_read_index(block)
        producers = [p for p in sch.get_producers(conv) if common.block_name(sch, p).startswith("pad_temp")]
        epilogue = common.fuse_epilogue(sch, conv)
        n, f, y, x, rc, ry, rx = sch.get_loops(conv)
        N, F, OH, OW = common.extents(sch, [n, f, y, x])
        v = lanes
        common.pack_operand(sch, func, conv, w_idx, lambda o, i, h, w: (o // v, h, w, i, o % v))
        if producers:
            pad = producers[0]
        else:  # unpadded: a plain re-laying copy
            data = [i for i, r in enumerate(sch.get(conv).reads) if i != w_idx and len(r.region) == 4]
            pad = sch.cache_read(conv, data[0], "global")
        sch.transform_layout(pad, ("write", 0), lambda a, c, h, w: (a, c // v, h, w, c % v))
        sch.transform_block_layout(pad, lambda a, c, h, w: (a, c // v, h, w, c % v))
        xt = common.largest_divisor(OW, 8)
        fo, fv = sch.split(f, [None, v])
        xo, xi = sch.split(x, [None, xt])
        sch.reorder(n, fo, y, xo, rc, ry, rx, xi, fv)
        acc = sch.cache_write(conv, 0, "local")
        sch.transform_layout(conv, ("write", 0), lambda a, b, c, d: (a, c, d, b))
        per_image = N > 1  # batch > 1: image by image (common.compute_per_image)
        parallel = F * OH * OW * (1 if per_image else N) >= common.MIN_PARALLEL_ELEMENTS
        common.attach_write_back(sch, acc, epilogue, xo, [fo, y] if per_image else [n, fo, y], parallel)
        sch.unroll(ry)
        sch.unroll(rx)
        common.unroll_and_vectorize_tile(sch, conv, [xi], fv, rc)
        write_back = sch.get_loops(acc)
        if xt > 1:
            sch.vectorize(write_back[-1])  # contiguous columns of one output channel
        pad_loops = common.compute_per_image(sch, pad, n, per_image)  # (n, c/V, h, w, V)
        # 8-bit data: a zero fill + byte transposes (common.transposing_copy); measured on one
        # Zen 3 core, MobileNetV2 int8-w7's stride-2 layers, whole kernel, ms, gather ->
        # transpose: 96 ch 112->56 0.537 -> 0.389-0.450, 144 ch 56->28 0.222 -> 0.186-0.194,
        # 192 ch 28->14 0.086 -> 0.070-0.073, 576 ch 14->7 0.068 -> 0.060.
        transposed = common.transposing_copy(sch, pad, pad_loops, v, parallel, per_image)
        if transposed is not None:
            return transposed
        rows = sch.fuse(*pad_loops[1:3]) if per_image else sch.fuse(*pad_loops[:3])
        if parallel:
            sch.parallel(rows)
        sch.vectorize(pad_loops[-1])  # V channels of one pixel (a gather from V planes)
        return sch

    @staticmethod
    def _vectorize_pad(sch, pad, lanes: int) -> None:
        """Vectorize the innermost (contiguous destination) loop of the per-tile padded copy."""
        loops = sch.get_loops(pad)
        ext = common.extents(sch, loops[-1:])
        if ext is None or ext[0] <= 1:
            return
        if ext[0] <= lanes:
            sch.vectorize(loops[-1])
            return
        width = common.vector_width_for(ext[0], lanes)
        if width > 1:
            _, inner = sch.split(loops[-1], [None, width])
            sch.vectorize(inner)
        else:
            _, inner = sch.split(loops[-1], [None, lanes])
            sch.vectorize(inner)

    @staticmethod
    def _deinterleave(sch, conv, pad, out_width: int, kernel_width: int) -> bool:
        """For stride s > 1, store the padded input as [n, c, h, w % s, w // s]: the columns one
        output vector reads (w = s*x + rx) become contiguous, so strided gathers turn into plain
        vector loads. The re-layout is exact for any s; s is inferred from the shapes."""
        width = int(sch.get(pad).writes[0].source.shape[3])
        stride = common.column_stride(width, kernel_width, out_width)
        if stride < 2 or width % stride:
            return False
        sch.transform_layout(pad, ("write", 0), lambda a, b, c, d: (a, b, c, d % stride, d // stride))
        # Iterate the copy in its destination order too: the stores become contiguous (vectorized
        # after compute_at, see _vectorize_pad) and the loads a constant-stride pattern.
        sch.transform_block_layout(pad, lambda a, b, c, d: (a, b, c, d % stride, d // stride))
        return True
