"""Dense / matmul / batch matmul: C[b.., i, j] = sum_k A[b.., i, k] * B[b.., k, j] (or B[b.., j, k]).

Loop structure produced (M rows, N columns, V SIMD lanes, tile = nb*V columns x mt rows):

    B pack (when B is a constant weight, or stored [.., N, K]): B -> Bp[.., N/tile, K, tile]
              (a constant weight is packed at compile time; see common.pack_operand)
    parallel for (b.., i_outer, j_outer):
        acc[mt][tile] = 0                               # register tile
        for k:
            for it in 0..mt (unrolled), jb in 0..nb (unrolled):
                acc[it][jb*V:+V] += A[i0+it, k] (broadcast) * B[k, j0+jb*V:+V] (vector load)
        C[i0:i0+mt, j0:j0+tile] = epilogue(acc)         # bias, scale, residual fused

Why: the classic outer-product micro-kernel. Each k step loads nb vectors of B and broadcasts mt
elements of A into nb*mt FMAs on register-resident accumulators (sized to the register file,
common.register_tile). Packing makes the k loop stream one contiguous block of B per tile instead
of a tile-wide strip of every row (a new cache line, and often a new page, per k step): constant
weights are packed at compile time for free, activations only when stored transposed (``NT``),
where the packing is needed for vector loads at all. Measured on Zen 3 (one core, transformer
shapes 64x128x512 and 64x512x128): 0.16 / 0.15 ms unpacked, 0.11 / 0.10 ms packed, ONNX Runtime
0.10 ms. With M == 1 (a classifier head) the tile is one row wide (see choose_tile) and the loop
is bound by reading the weight once, in parallel over column blocks.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.target import Target

from targets.lowering.schedules import common

_ANCHOR_NAMES = ("matmul", "T_matmul", "NT_matmul", "T_matmul_NT", "T_batch_matmul_NT", "T_dense", "dense")


def choose_tile(rows: int, cols: int, lanes: int, registers: int) -> tuple[int, int, int]:
    """(V, nb, mt): vector width along columns, vectors per tile, rows per tile.

    With one row per tile (a matrix-vector product, e.g. a classifier head at batch 1) the tile
    is widened to up to 8 vectors (nb loads + nb accumulators + 1 broadcast within the register
    file): register_tile's nb <= 4 leaves a single accumulator for column counts like 1000
    (125 vectors), one FMA dependency chain (0.22 ms for 1280x1000 on Zen 3; 5 accumulators:
    0.08 ms, ONNX Runtime 0.12 ms)."""
    v = common.vector_width_for(cols, lanes)
    nb, mt = common.register_tile(cols // v, rows, registers)
    if mt == 1:
        nb = common.largest_divisor(cols // v, min(8, (registers - 1) // 2))
    return v, nb, mt


def _operands(block: s_tir.SBlock):
    """Return (a_index, b_index, b_transposed) for a matmul block, or None."""
    ivars = [iv.var for iv in block.iter_vars]
    i_var, j_var, k_var = ivars[-3], ivars[-2], ivars[-1]
    a_idx = b_idx = None
    b_t = False
    for n, region in enumerate(block.reads):
        mins = [r.min for r in region.region]
        if len(mins) < 2:
            continue
        last2 = mins[-2:]
        if last2[0].same_as(i_var) and last2[1].same_as(k_var):
            a_idx = n
        elif last2[0].same_as(k_var) and last2[1].same_as(j_var):
            b_idx, b_t = n, False
        elif last2[0].same_as(j_var) and last2[1].same_as(k_var):
            b_idx, b_t = n, True
    if a_idx is None or b_idx is None:
        return None
    return a_idx, b_idx, b_t


class Matmul(common.ScheduleRule):
    """Register-tiled outer-product matmul with the epilogue fused (see module docstring)."""

    name = "matmul"

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not common.is_static(func):
            return None
        sch = s_tir.Schedule(func)
        anchor = common.find_anchor(sch, _ANCHOR_NAMES)
        if anchor is None:
            return None
        kinds = common.iter_kinds(sch, anchor)
        if len(kinds) < 3 or kinds[-1] != "R" or set(kinds[:-1]) != {"S"}:
            return None
        ops = _operands(sch.get(anchor))
        if ops is None:
            return None
        try:
            return self._schedule(sch, func, anchor, target, *ops)
        except Exception:  # noqa: BLE001 - an unexpected structure: let the next rule try
            return None

    def _schedule(self, sch, func, mm, target, a_idx, b_idx, b_transposed):
        out_dtype = sch.get(mm).writes[0].source.dtype
        loops = sch.get_loops(mm)
        batch, i, j, k = loops[:-3], loops[-3], loops[-2], loops[-1]
        ext = common.extents(sch, loops)
        M, N = ext[-3], ext[-2]
        out_elems = 1
        for e in ext[:-1]:
            out_elems *= e
        v, nb, mt = choose_tile(M, N, common.vector_lanes(target, out_dtype), common.vector_registers(target))
        tile = nb * v

        epilogue = common.fuse_epilogue(sch, mm)
        b_buffer = sch.get(mm).reads[b_idx].source
        nbatch = len(b_buffer.shape) - 2
        b_param = common.read_buffer_param_index(func, b_buffer)
        b_constant = b_param is not None and b_param in common.layout_free_params(func)
        if v > 1 and (b_transposed or b_constant):
            common.pack_operand(sch, func, mm, b_idx, _pack_map(nbatch, tile, b_transposed))

        io, it = sch.split(i, [None, mt])
        jo, jb, jv = sch.split(j, [None, nb, v])
        sch.reorder(*batch, io, jo, k, it, jb, jv)
        acc = sch.cache_write(mm, 0, "local")
        sch.reverse_compute_at(acc, jo, preserve_unit_loops=True)
        if epilogue is not None:
            sch.reverse_compute_inline(epilogue)
        outer = sch.fuse(*batch, io, jo)
        if out_elems * ext[-1] >= common.MIN_PARALLEL_ELEMENTS * 16 and out_elems // (mt * tile) > 1:
            sch.parallel(outer)
        sch.unroll(it)
        sch.unroll(jb)
        if v > 1:
            sch.vectorize(jv)
        init = sch.decompose_reduction(mm, k)
        init_loops = sch.get_loops(init)
        if v > 1:
            sch.vectorize(init_loops[-1])
        wb_loops = sch.get_loops(acc)
        if v > 1:
            common_inner = wb_loops[-1]
            wb_ext = common.extents(sch, [common_inner])[0]
            if wb_ext % v == 0:
                _, vin = sch.split(common_inner, [None, v])
                sch.vectorize(vin)
        return sch


def _pack_map(nbatch: int, tile: int, transposed: bool):
    """Index map of B ([b.., j, k] when ``transposed``, else [b.., k, j]) to
    [b.., j // tile, k, j % tile]: the tile's columns of consecutive k steps are contiguous."""

    def index_map(*idx):
        *b, first, second = idx
        j, k = (first, second) if transposed else (second, first)
        return (*b, j // tile, k, j % tile)

    return tirx.IndexMap.from_func(index_map, ndim=nbatch + 2)
