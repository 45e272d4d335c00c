"""Elementwise / broadcast / transpose / reshape / gather functions (all blocks spatial).

Loop structure produced, per output block (producers inlined into it):

    parallel for (all loops but the innermost, fused):      # only when >= MIN_PARALLEL_ELEMENTS
        for inner_outer:
            vectorized for inner_inner in 0..V               # V divides the innermost extent

Why: after FuseTIR an injective function is a chain of blocks that each read the previous one;
inlining the chain into the output block makes one pass over memory instead of one per op, and the
innermost axis is the contiguous one in row-major layouts, so vectorizing it gives vector loads
and stores (transposes and gathers still work, as gathers/scalarized lanes). Tiny functions stay
single-threaded: a thread-pool launch costs more than the work.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.target import Target

from targets.lowering.schedules import common


def vectorize_innermost(sch: s_tir.Schedule, loop, extent: int, lanes: int) -> None:
    """Vectorize ``loop`` (split by the widest divisor <= lanes when it is longer than a register)."""
    if extent <= 1:
        return
    if extent <= lanes:
        sch.vectorize(loop)
        return
    width = common.vector_width_for(extent, lanes)
    if width > 1:
        _, inner = sch.split(loop, [None, width])
        sch.vectorize(inner)


def schedule_spatial_block(sch: s_tir.Schedule, block, lanes: int) -> None:
    """Parallelize the outer loops of a spatial block and vectorize its innermost loop."""
    loops = sch.get_loops(block)
    if not loops:
        return
    ext = common.extents(sch, loops)
    total = 1
    for e in ext:
        total *= e
    if len(loops) > 1:
        outer = sch.fuse(*loops[:-1])
        if total >= common.MIN_PARALLEL_ELEMENTS and total // ext[-1] > 1:
            sch.parallel(outer)
        vectorize_innermost(sch, loops[-1], ext[-1], lanes)
    elif total >= common.MIN_PARALLEL_ELEMENTS:
        width = common.vector_width_for(total, lanes)
        outer, inner = sch.split(loops[0], [None, width])
        sch.parallel(outer)
        if width > 1:
            sch.vectorize(inner)
    else:
        vectorize_innermost(sch, loops[0], ext[0], lanes)


class Injective(common.ScheduleRule):
    """Inline the chain into its outputs; parallel outer loops, vectorized inner loop."""

    name = "injective"

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not common.is_static(func):
            return None
        sch = s_tir.Schedule(func)
        blocks = common.root_blocks(sch)
        if not blocks or any(set(common.iter_kinds(sch, b)) - {"S"} for b in blocks):
            return None
        try:
            for b in blocks:
                if common.is_output(sch, func, b):
                    continue
                try:
                    sch.compute_inline(b)
                except Exception:  # noqa: BLE001 - e.g. a block feeding two outputs of different shape
                    pass
            for b in common.root_blocks(sch):
                out_dtype = sch.get(b).writes[0].source.dtype
                schedule_spatial_block(sch, b, common.vector_lanes(target, out_dtype))
            return sch
        except Exception:  # noqa: BLE001
            return None
