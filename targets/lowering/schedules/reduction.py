"""Row-wise reductions with their elementwise neighbours: pooling, mean, softmax, layernorm, sums.

Loop structure produced (L = the output block, p = the number of leading spatial axes that every
reduction in the function shares with L, e.g. softmax over the last axis of [B, H, S, S] has p = 3):

    parallel for row in (L's first p axes, fused):
        for k:            max_elem[row]   = max(...)          # each stage compute_at'ed per row
        vectorized for j: exp[row, j]     = exp(x - max_elem)
        for k:            sum[row]        = sum(exp)
        vectorized for j: out[row, j]     = exp / sum

Why: TVM legalizes these ops into separate full-tensor passes (max, exp, sum, divide); computing
all stages of one row together keeps the row in L1 and the intermediates shrink to per-row scalars,
rows are independent so the row loop is the natural parallel loop, and the elementwise stages are
vectorized along the contiguous last axis. Pooling (one reduction block, p = all output axes) gets
its padding inlined and its output loops parallelized. If a stage cannot be attached at depth p
the rule retries with a shallower row loop (p - 1, ..., 1) and declines the function otherwise.
"""

from __future__ import annotations

import math

from tvm import s_tir, tirx
from tvm.target import Target

from targets.lowering.schedules import common
from targets.lowering.schedules.injective import vectorize_innermost


def _leading_spatial(kinds: str) -> int:
    n = 0
    for k in kinds:
        if k != "S":
            break
        n += 1
    return n


def _work(sch: s_tir.Schedule, blocks) -> int:
    total = 0
    for b in blocks:
        total = max(total, math.prod(common.extents(sch, sch.get_loops(b)) or [1]))
    return total


class RowReduction(common.ScheduleRule):
    """Per-row fusion of reduction + elementwise stages, parallel over rows (module docstring)."""

    name = "reduction"

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not common.is_static(func):
            return None
        probe = s_tir.Schedule(func)
        blocks = common.root_blocks(probe)
        kinds = [common.iter_kinds(probe, b) for b in blocks]
        if not any("R" in k for k in kinds):
            return None
        for k in kinds:  # every block must be S...S R...R (no opaque iterators, spatial first)
            lead = _leading_spatial(k)
            if "O" in k or set(k[lead:]) - {"R"}:
                return None
        work = _work(probe, blocks)
        max_p = _leading_spatial(kinds[-1])
        others_p = [_leading_spatial(k) for b, k in zip(blocks[:-1], kinds[:-1])]
        p = min([max_p] + [q for q in others_p if q > 0]) if others_p else max_p
        for depth in range(p, 0, -1):
            try:
                sch = self._schedule(func, target, depth, work)
            except Exception:  # noqa: BLE001 - try attaching at a shallower row loop
                continue
            if sch is not None:
                return sch
        return None

    def _schedule(self, func, target, depth, work):
        sch = s_tir.Schedule(func)
        # Inline spatial producers with a single consumer (padding, casts, a mean's divide).
        for b in common.root_blocks(sch)[:-1]:
            if common.is_output(sch, func, b) or "R" in common.iter_kinds(sch, b):
                continue
            if len(sch.get_consumers(b)) == 1:
                try:
                    sch.compute_inline(b)
                except Exception:  # noqa: BLE001
                    pass
        blocks = common.root_blocks(sch)
        out = blocks[-1]
        loops = sch.get_loops(out)
        if depth > len(loops):
            return None
        row = sch.fuse(*loops[:depth]) if depth > 1 else loops[0]
        for b in reversed(blocks[:-1]):
            sch.compute_at(b, row, preserve_unit_loops=True)
        if work >= common.MIN_PARALLEL_ELEMENTS:
            sch.parallel(row)
        # Vectorize the contiguous inner loop of every elementwise stage inside the row.
        for b in sch.get_child_blocks(row):
            kinds = common.iter_kinds(sch, b)
            if "R" in kinds:
                continue
            inner = [lp for lp in sch.get_loops(b) if not _is_ancestor_or_same(sch, lp, row)]
            if not inner:
                continue
            ext = common.extents(sch, inner)
            dtype = sch.get(b).writes[0].source.dtype
            if len(inner) > 1:
                inner = [sch.fuse(*inner)]
                ext = [math.prod(ext)]
            vectorize_innermost(sch, inner[0], ext[0], common.vector_lanes(target, dtype))
        return sch


def _is_ancestor_or_same(sch: s_tir.Schedule, candidate, loop) -> bool:
    """True if loop ``candidate`` is ``loop`` or encloses it."""
    target_sref = sch.get_sref(loop)
    cand_sref = sch.get_sref(candidate)
    node = target_sref
    while node is not None:
        if node.same_as(cand_sref):
            return True
        node = node.parent
    return False


__all__ = ["RowReduction"]
