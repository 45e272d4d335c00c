"""Max pooling (``pool_max``), NCHW, any dtype, window, stride and padding.

TVM legalizes MaxPool into a padding stage (border = the dtype's lowest value) and a reduction
block over the window. The generic ``reduction.RowReduction`` rule inlines the padding into the
window loop (a bounds check per element) and runs a scalar 3x3 loop per output element: 0.8 ms for
ResNet-18's 64x112x112 -> 56x56 fp32 pool on one Zen 3 core, against 0.26-0.30 ms for ONNX
Runtime. 8-bit pools of the integer-only form are claimed first by ``pool_int8.MaxPoolInt8``.

Loop structure produced (one channel plane per task):

    parallel for (n, c):
        pad[H + 2p, W + 2p] = padded plane of channel c         # vectorized rows; stays in L2
        for oh:
            vectorized for ow: acc[ow] = lowest                  # one row of accumulators
            for rh, rw:
                vectorized for ow:                               # V = SIMD lanes, no tail
                    acc[ow] = max(acc[ow], pad[oh*s + rh, ow*s + rw])
            vectorized for ow: out[n, c, oh, ow] = acc[ow]

Why: the window loops go outside the output-column loop, so each window tap is one vector max per
V outputs, and the border is materialized once per plane instead of tested per element.
Measured alternatives on that pool (one core, ORT 0.25-0.30 ms in the same runs): padding one
output row's window rows per task instead of the whole plane, 0.56 ms (adjacent rows of a stride-2
window re-pad the shared row); de-interleaving the padded rows by the stride so that the taps read
contiguous vectors, 0.41 ms, the same as this simpler form (the strided copy costs what the
strided loads save); per-row padding with the update loop left to LLVM's auto-vectorizer (the
int8 rule's form), 1.2 ms.
"""

from __future__ import annotations

from tvm import s_tir

from targets.lowering.schedules import common
from targets.lowering.schedules.injective import vectorize_innermost


class MaxPool(common.MatchingRule):
    """NCHW max pool: whole-plane padding per channel, vectorized window taps (module docstring)."""

    name = "maxpool"

    def _match_and_schedule(self, func, target):
        sch = s_tir.Schedule(func)
        blocks = common.root_blocks(sch)
        pool = common.find_anchor(sch, ("pool_max",))
        if pool is None or common.iter_kinds(sch, pool) != "SSSSRR":
            return None
        # Exactly: optional padding stage -> pool (the pool writes the output).
        producers = [b for b in blocks if not sch.get(b).same_as(sch.get(pool))]
        if len(producers) > 1 or not sch.get(blocks[-1]).same_as(sch.get(pool)):
            return None
        n, c, oh, ow, rh, rw = sch.get_loops(pool)
        N, C, OH, OW = common.extents(sch, [n, c, oh, ow])
        lanes = common.vector_lanes(target, sch.get(pool).writes[0].source.dtype)
        sch.reorder(n, c, oh, rh, rw, ow)
        plane = sch.fuse(n, c)
        if N * C * OH * OW >= common.MIN_PARALLEL_ELEMENTS:
            sch.parallel(plane)
        for pad in producers:
            sch.compute_at(pad, plane, preserve_unit_loops=True)
            loops = sch.get_loops(pad)
            vectorize_innermost(sch, loops[-1], common.extents(sch, loops[-1:])[0], lanes)
        acc = sch.cache_write(pool, 0, "local")
        sch.reverse_compute_at(acc, oh, preserve_unit_loops=True)
        # Vectorize the column loop of the update before splitting off the init: TVM accepts a
        # vectorized spatial loop inside the window (reduction) loops only in that order.
        vectorize_innermost(sch, sch.get_loops(pool)[-1], OW, lanes)
        init = sch.decompose_reduction(pool, rh)
        vectorize_innermost(sch, sch.get_loops(init)[-1], OW, lanes)
        vectorize_innermost(sch, sch.get_loops(acc)[-1], OW, lanes)
        return sch


__all__ = ["MaxPool"]
