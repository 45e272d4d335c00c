"""Depthwise and grouped NCHW conv2d (``group_conv2d_nchw``, groups > 1).

Loop structure produced (OW output width, xv <= V columns per vector, yt rows per tile):

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

Why: a depthwise conv has one input channel per output channel, so there is no channel reduction
to vectorize over and channel vectors would need gathers from NCHW; the contiguous axis is the
output width. Rows of width <= V become one (possibly partial) vector, wider rows are split by
the largest divisor <= V so there is no tail. Several output rows share each weight broadcast.
The op is memory-bound (9 FMAs per output), so one pass over the padded input at full vector
width is what matters.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.target import Target

from targets.lowering.schedules import common


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
        if out_width <= 1:
            return False
        stride = (width - kernel_width) // (out_width - 1)
        if stride < 2 or width % stride:
            return False
        sch.transform_layout(pad, ("write", 0), lambda a, b, c, d: (a, b, c, d % stride, d // stride))
        # Iterate the copy in its destination order too: the stores become contiguous (vectorized
        # after compute_at, see _vectorize_pad) and the loads a constant-stride pattern.
        sch.transform_block_layout(pad, lambda a, b, c, d: (a, b, c, d % stride, d // stride))
        return True
