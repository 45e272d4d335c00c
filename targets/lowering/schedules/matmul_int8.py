"""Dense / matmul / batch matmul uint8 x int8 -> int32 with AVX-512 VNNI (``vpdpbusd``), or with
AVX2 ``vpmaddwd`` on x86 CPUs without VNNI (``MatmulInt8AVX2``: 8 columns x 2 k per dot product,
B packed [.., N/8, K/2, 8, 2] int8, N % 8 == 0 and K % 2 == 0; see conv2d_int8's docstring), or
with AVX2 ``vpmaddubsw`` for a constant B within +-64 (``MatmulInt8AVX2Maddubs``, 8 columns x 4 k,
exact for such weights: ``--quantize int8-w7``).

Claims the matmul blocks of ``matmul.Matmul`` (``C[b.., i, j] += int32(A[b.., i, k]) *
int32(B[b.., k, j])``, B also stored transposed ``[.., j, k]``) whose A is uint8, B int8 and C int32,
on targets with AVX-512 VNNI. The fused epilogue (bias, requantization chain, clip, cast) stays in
the write-back. N must be a multiple of 16 and K of 4.

Loop structure produced (M rows, N columns, K depth; tile = mt rows x nb*16 columns):

    B pack:  B[.., K, N] (or [.., N, K]) -> Bp[.., N/16, K/4, 16, 4]   (64 bytes = 16 columns x 4
             k; folded at compile time for a constant weight, see common.pack_operand)
    parallel for (b.., i_outer, j_outer):
        acc[mt][nb*16] = 0                                   # int32 register tile (local)
        for k4 in K/4:
            for it in mt (unrolled), jb in nb (unrolled):
                acc[it][jb*16:+16] = vpdpbusd(acc[it][jb*16:+16],
                                              broadcast32(A[i0+it, 4*k4:4*k4+4]),
                                              Bp[j_outer*nb+jb, k4, 0:16, 0:4])
        C[i0:i0+mt, j0:j0+nb*16] = epilogue(acc)            # vectorized by 16 along j

Why: the fp32 outer-product micro-kernel with the FMA replaced by a 16x4 dot product. A row-major
A already holds 4 consecutive k of one row in one 32-bit word (the broadcast operand), so only B
is re-laid-out, once, at compile time. At most 16 accumulators per tile (see conv2d_int8:
broadcasts reused nb times stay live in registers and larger tiles spill).

Limitations (declined, left to ``matmul.Matmul``): int8 (signed) A on x86 (vpdpbusd is unsigned x
signed; the integer-only form uses uint8 activations; ``MatmulInt8ArmDot`` takes int8 A on AArch64
with sdot), non-VNNI targets without AVX2 (``vpmaddubsw``
saturates, not bit-exact; AVX2 targets get ``MatmulInt8AVX2``), and MatMulInteger as TVM's ONNX
importer converts it: it widens both operands to int32 before the matmul (``astype`` + zero-point
``subtract``), so the matmul is int32 x int32 and not a byte dot product; the integer converters
(targets/lowering/integer_ops.py) need to emit ``matmul(a_u8, b_i8, out_dtype="int32")`` with the
zero point moved out, as they do for ConvInteger.
"""

from __future__ import annotations

from tvm import s_tir, tirx

from targets.lowering.schedules import common
from targets.lowering.schedules.conv2d_int8 import MAX_ACCUMULATORS
from targets.lowering.schedules.matmul import _ANCHOR_NAMES


def choose_tile(rows: int, col_blocks: int, max_accumulators: int = MAX_ACCUMULATORS) -> tuple[int, int]:
    """(mt, nb): rows x column vectors (16 columns with VNNI, 8 with AVX2) per register tile, exact
    divisors of ``rows`` and ``col_blocks`` (N/lanes), maximizing ``mt * nb <= max_accumulators``;
    ties prefer nb == 4 (then 2), i.e. more columns per broadcast A word."""
    best = None
    for nb in (4, 2, 8, 1, 3, 16):
        if col_blocks % nb or nb > max_accumulators:
            continue
        mt = common.largest_divisor(rows, max_accumulators // nb)
        if best is None or mt * nb > best[0] * best[1]:
            best = (mt, nb)
    return best if best is not None else (1, 1)


def _operands(block: tirx.SBlock, a_dtype: str = "uint8"):
    """(a_read_index, b_read_index, b_transposed) for an ``a_dtype`` x i8 -> i32 matmul block,
    else None."""
    loads = common.int8_dot_loads(block)
    if loads is None:
        return None
    ivars = [iv.var for iv in block.iter_vars]
    i_var, j_var, k_var = ivars[-3], ivars[-2], ivars[-1]
    a = b = None
    b_t = False
    for load in loads:
        if len(load.indices) < 2:
            return None
        p, q = load.indices[-2], load.indices[-1]
        if p.same_as(i_var) and q.same_as(k_var) and str(load.source.dtype) == a_dtype:
            a = load
        elif p.same_as(k_var) and q.same_as(j_var) and str(load.source.dtype) == "int8":
            b, b_t = load, False
        elif p.same_as(j_var) and q.same_as(k_var) and str(load.source.dtype) == "int8":
            b, b_t = load, True
    if a is None or b is None:
        return None
    idx = {}
    for n, region in enumerate(block.reads):
        if region.source.same_as(a.source):
            idx["a"] = n
        elif region.source.same_as(b.source):
            idx["b"] = n
    if len(idx) != 2:
        return None
    return idx["a"], idx["b"], b_t


def _pack_map(nbatch: int, transposed: bool, lanes: int, depth: int):
    """[b.., K, N] (or [b.., N, K]) -> [b.., N/lanes, K/depth, lanes, depth]."""

    def index_map(*idx):
        *b, p, q = idx
        j, k = (p, q) if transposed else (q, p)
        return (*b, j // lanes, k // depth, j % lanes, k % depth)

    return tirx.IndexMap.from_func(index_map, ndim=nbatch + 2)


class MatmulInt8VNNI(common.VNNIDot, common.MatchingRule):
    """u8 x i8 -> i32 matmul tensorized with vpdpbusd (see module docstring)."""

    name = "matmul-int8-vnni"

    def _match_and_schedule(self, func, target):
        sch = s_tir.Schedule(func)
        anchor = common.find_anchor(sch, _ANCHOR_NAMES)
        if anchor is None:
            return None
        kinds = common.iter_kinds(sch, anchor)
        if len(kinds) < 3 or kinds[-1] != "R" or set(kinds[:-1]) != {"S"}:
            return None
        ops = _operands(sch.get(anchor), self.data_dtype)
        if ops is None or not self._claims(func, sch, anchor, *ops):
            return None
        return self._schedule(sch, func, anchor, *ops)

    def _claims(self, func, sch, mm, a_idx, b_idx, b_transposed) -> bool:
        """Further conditions of a subclass on a matched u8 x i8 -> i32 matmul."""
        return True

    def _schedule(self, sch, func, mm, a_idx, b_idx, b_transposed):
        intrin = self.register_intrinsic()
        lanes, depth = self.lanes, self.depth
        ext = common.extents(sch, sch.get_loops(mm))
        if ext is None:
            return None
        nbatch = len(ext) - 3
        epilogue = common.fuse_epilogue(sch, mm)
        if ext[-2] % lanes or ext[-1] % depth:
            return None
        M, N, K = ext[-3], ext[-2], ext[-1]
        mt, nb = choose_tile(M, N // lanes, self.max_accumulators)

        # B may have fewer batch dims than the matmul (a constant [K, N] weight of a [b, M, K] x).
        b_batch = len(sch.get(mm).reads[b_idx].source.shape) - 2
        common.pack_operand(sch, func, mm, b_idx, _pack_map(b_batch, b_transposed, lanes, depth))

        loops = sch.get_loops(mm)
        batch, i, j, k = loops[:-3], loops[-3], loops[-2], loops[-1]
        io, it = sch.split(i, [None, mt])
        jo, jb, ji = sch.split(j, [None, nb, lanes])
        ko, ki = sch.split(k, [None, depth])
        sch.reorder(*batch, io, jo, ko, it, jb, ji, ki)
        acc = sch.cache_write(mm, 0, "local")
        sch.reverse_compute_at(acc, jo, preserve_unit_loops=True)
        if epilogue is not None:
            sch.reverse_compute_inline(epilogue)

        outer = sch.fuse(*batch, io, jo)
        out_elems = 1
        for e in ext[:-1]:
            out_elems *= e
        if out_elems * K >= common.MIN_PARALLEL_ELEMENTS * 16 and out_elems // (mt * nb * lanes) > 1:
            sch.parallel(outer)
        common.unroll_and_vectorize_tile(sch, mm, [it, jb], ji, ko, intrin)

        # Write-back + epilogue: (.., it, j: nb*16) -> j split by 16 and vectorized.
        wl = sch.get_loops(acc)
        wjo, wji = sch.split(wl[-1], [None, lanes])
        sch.unroll(wjo)
        sch.vectorize(wji)
        return sch


class MatmulInt8AVX2(common.AVX2Dot, MatmulInt8VNNI):
    """u8 x i8 -> i32 matmul on AVX2 without VNNI: the same micro-kernel with the 8x2 ``vpmaddwd``
    dot product (common.AVX2_DOT_INTRIN); B packed [.., N/8, K/2, 8, 2] int8, sign-extended in the
    kernel. Needs N % 8 == 0 and K % 2 == 0 (else ``matmul.Matmul``)."""

    name = "matmul-int8-avx2"


class MatmulInt8AVX2Maddubs(common.AVX2MaddubsDot, MatmulInt8VNNI):
    """u8 x i8 -> i32 matmul on AVX2 without VNNI whose constant B lies within
    +-``common.WEIGHT_BOUND_MADDUBS`` (``--quantize int8-w7``): the VNNI micro-kernel at 8 columns
    x 4 k with ``vpmaddubsw`` + ``vpmaddwd`` by ones (common.AVX2_MADDUBS_DOT_INTRIN), exact for
    such weights; A's 4 consecutive k bytes are broadcast in place, B is packed
    [.., N/8, K/4, 8, 4] at compile time. Needs N % 8 == 0, K % 4 == 0 and B a constant parameter
    of the function (else ``MatmulInt8AVX2``)."""

    name = "matmul-int8-avx2-maddubs"
    # 8 accumulators like MatmulInt8AVX2 (the conv rule's 14 lost on K = 64; 8 and 12 measured
    # alike within this machine's noise, Zen 3): transformer shapes 128x512x128 0.20 -> 0.13 ms,
    # 128x128x512 0.33 -> 0.29 ms against the vpmaddwd kernel
    max_accumulators = 8

    def _claims(self, func, sch, mm, a_idx, b_idx, b_transposed) -> bool:
        return common.within_maddubs_bound(func, sch.get(mm).reads[b_idx].source)


class MatmulInt8ArmDot(common.ArmDotprodDot, MatmulInt8VNNI):
    """i8 x i8 -> i32 matmul on AArch64 with the dot-product extension: the VNNI micro-kernel at
    4 columns x 4 k with ``sdot`` (common.ARM_SDOT_INTRIN); A's 4 consecutive k bytes are one
    32-bit word read in place, B is packed [.., N/4, K/4, 4, 4] at compile time. A is int8 after
    targets/lowering/signed_activations.py (see ``conv2d_int8.Conv2dInt8ArmDot``). Needs N % 4 == 0
    and K % 4 == 0 (else ``matmul.Matmul``)."""

    name = "matmul-int8-arm-sdot"
