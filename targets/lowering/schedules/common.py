"""Helpers shared by the schedule rules: the rule base class, block analysis, tile-size choice,
epilogue fusion and compile-time weight packing.

Every rule works on one fused PrimFunc as produced by Relax's ``zero`` pipeline (LegalizeOps ->
FuseOps -> FuseTIR): a root block holding a chain of blocks, typically an optional padding stage, one
"anchor" block (conv2d, matmul, a reduction) and an epilogue of elementwise blocks (bias add, relu,
residual add, clip). A rule returns a scheduled ``tvm.s_tir.Schedule`` or ``None`` when the
function is not of its family, exactly like TVM's dlight rules, so the rules also work with
``tvm.s_tir.dlight.ApplyDefaultSchedule``.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir import dlight
from tvm.target import Target, codegen

# Below this many output elements a kernel is run on one thread: the thread-pool launch (a few
# microseconds) costs more than it saves on 2 cores.
MIN_PARALLEL_ELEMENTS = 4096

# Block annotation that Relax's SplitLayoutRewritePreproc understands: the block is a pure
# re-layout of one PrimFunc parameter and may be split into its own function (then folded at
# compile time by FoldConstant when the parameter is a constant weight).
LAYOUT_REWRITE_PREPROC = "meta_schedule.layout_rewrite_preproc"


class ScheduleRule(dlight.ScheduleRule):
    """A dlight-compatible rule with a short ``name`` recorded in the ScheduleReport."""

    name = "rule"

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False) -> s_tir.Schedule | None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MatchingRule(ScheduleRule):
    """A rule that matches a structure and schedules it, declining anything it does not expect.

    ``apply`` takes only static PrimFuncs on targets ``accepts`` allows, and turns any analysis or
    scheduling failure into "not ours" (None) so the next rule in the list gets the function.
    Subclasses implement ``accepts`` and ``_match_and_schedule(func, target)``.
    """

    def accepts(self, target: Target) -> bool:
        return target.kind.name == "llvm"

    def _match_and_schedule(self, func: tirx.PrimFunc, target: Target) -> s_tir.Schedule | None:
        raise NotImplementedError

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not is_static(func) or not self.accepts(target):
            return None
        try:
            return self._match_and_schedule(func, target)
        except Exception:  # noqa: BLE001 - an unexpected structure: let the next rule try
            return None


def vector_bits(target: Target) -> int:
    """Width in bits of the target's SIMD registers (512 with AVX-512, 256 with AVX2, else 128).

    Read from the target's features, not from ``llvm_get_vector_width``, which reports the host's
    width for any x86 ``mcpu``."""
    if target.kind.name != "llvm":
        return 128
    mtriple = str(target.attrs.get("mtriple", "")) if target.attrs is not None else ""
    if mtriple and not mtriple.startswith(("x86_64", "i686", "i386")):
        return 128  # AArch64 NEON / other ISAs: 128-bit vectors (SVE is not used here)
    for feature, bits in (("avx512f", 512), ("avx", 256)):
        try:
            if codegen.target_has_features(feature, target):
                return bits
        except Exception:  # noqa: BLE001 - features unknown to this LLVM: assume 128-bit SIMD
            return 128
    return 128


def vector_registers(target: Target) -> int:
    """Architectural SIMD registers: 32 with AVX-512 or on AArch64, 16 otherwise (AVX2, SSE)."""
    if vector_bits(target) >= 512:
        return 32
    mtriple = str(target.attrs.get("mtriple", "")) if target.attrs is not None else ""
    return 32 if mtriple.startswith("aarch64") else 16


def max_accumulators(registers: int) -> int:
    """Accumulator registers a micro-kernel may use: all but four of the register file.

    Besides the ``nb`` loaded vectors and the broadcast, LLVM keeps a few more values in vector
    registers when it schedules an unrolled reduction (the next step's broadcasts, hoisted loads).
    Measured on Zen 3 (16 ymm registers, fp32 3x3 conv, channels-last input): 8 and 12
    accumulators run at 70-87 GFLOP/s, 14 (2x7, 1x14) spill and run at ~40. With 32 registers
    (AVX-512) the cap is 28, the 2x14 tile measured best on Zen 4."""
    return registers - 4


def register_tile(n_vectors: int, extent: int, registers: int) -> tuple[int, int]:
    """(nb, t): ``nb`` vectors (dividing ``n_vectors``) by ``t`` rows (dividing ``extent``) of
    accumulators for an outer-product micro-kernel, maximizing ``nb*t`` subject to the register
    budget ``nb*t`` accumulators + ``nb`` loaded vectors + 1 broadcast ``<= registers`` and
    ``nb*t <= max_accumulators(registers)`` (spilling an accumulator costs a load and a store per
    FMA)."""
    best = (0, 1, 1)
    for nb in (4, 3, 2, 1):
        if n_vectors % nb:
            continue
        t = largest_divisor(extent, min((registers - 1) // nb - 1, max_accumulators(registers) // nb))
        if nb * t > best[0]:
            best = (nb * t, nb, t)
    return best[1], best[2]


def vector_lanes(target: Target, dtype: str) -> int:
    """Number of ``dtype`` elements in one SIMD register of ``target``."""
    digits = "".join(ch for ch in str(dtype) if ch.isdigit())
    bits = int(digits) if digits else 32
    return max(1, vector_bits(target) // bits)


def largest_divisor(n: int, limit: int) -> int:
    """The largest divisor of ``n`` that is ``<= limit`` (at least 1)."""
    for d in range(min(n, max(1, limit)), 0, -1):
        if n % d == 0:
            return d
    return 1


def vector_width_for(extent: int, lanes: int) -> int:
    """The largest power-of-two width ``<= lanes`` that divides ``extent`` (1 when none >= 4 does)."""
    v = lanes
    while v >= 4:
        if extent % v == 0:
            return v
        v //= 2
    return 1


def root_blocks(sch: s_tir.Schedule) -> list:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def block_name(sch: s_tir.Schedule, block) -> str:
    return sch.get(block).name_hint


def iter_kinds(sch: s_tir.Schedule, block) -> str:
    """'S'/'R'/'O' per block iter var, e.g. ``SSSSRRR`` for conv2d."""
    out = []
    for iv in sch.get(block).iter_vars:
        out.append({0: "S", 2: "R"}.get(int(iv.iter_type), "O"))
    return "".join(out)


def extents(sch: s_tir.Schedule, loops) -> list[int] | None:
    """Constant extents of ``loops``, or None if any is symbolic."""
    out = []
    for loop in loops:
        ext = sch.get(loop).extent
        if not isinstance(ext, tirx.IntImm):
            return None
        out.append(int(ext.value))
    return out


def is_static(func: tirx.PrimFunc) -> bool:
    """True if every buffer of ``func`` has a constant shape (all rules here need static shapes)."""
    for buf in func.params:
        for dim in getattr(buf, "shape", ()):
            if not isinstance(dim, tirx.IntImm):
                return False
    return True


def find_anchor(sch: s_tir.Schedule, names: tuple[str, ...]):
    """The single root-level block whose name is in ``names`` (None if absent or ambiguous)."""
    found = [b for b in root_blocks(sch) if block_name(sch, b) in names]
    return found[0] if len(found) == 1 else None


def fuse_epilogue(sch: s_tir.Schedule, anchor, keep_slice: bool = False):
    """Inline every elementwise block after ``anchor`` into the last one and return that last block
    (None when the anchor is the output). Raises if the chain is not a simple elementwise tail, so
    the calling rule can decline the function.

    ``keep_slice``: a final ``strided_slice`` block (flat_pixels.py's crop of a padded pixel row)
    stays a separate copy after the epilogue, which then writes the whole padded row: inlined into
    the write-back, the crop would predicate its last pixel vector and TVM would scalarize the
    whole vectorized write-back."""
    blocks = root_blocks(sch)
    names = [block_name(sch, b) for b in blocks]
    idx = names.index(block_name(sch, anchor))
    tail = blocks[idx + 1 :]
    if keep_slice and len(tail) >= 2 and names[-1].startswith("T_strided_slice"):
        tail = tail[:-1]
    for b in tail[:-1]:
        sch.compute_inline(b)
    return tail[-1] if tail else None


def operand_producers(sch: s_tir.Schedule, block, read_index: int) -> list:
    """The blocks inside the function that write operand ``read_index`` of ``block`` (a pad stage,
    ConvInteger's explicit zero-point pad, the previous layer's requantization), which a rule
    inlines into the copy it makes of that operand."""
    source = sch.get(block).reads[read_index].source
    return [b for b in sch.get_producers(block) if sch.get(b).writes[0].source.same_as(source)]


def attach_write_back(sch: s_tir.Schedule, acc, epilogue, tile_loop, task_loops, parallel: bool):
    """Write a register tile back once per tile: compute the accumulator's write-back block
    ``acc`` under ``tile_loop`` with the fused ``epilogue`` (if any) inlined into it, and fuse
    ``task_loops`` into the task loop, parallel when ``parallel``. Returns the task loop."""
    sch.reverse_compute_at(acc, tile_loop, preserve_unit_loops=True)
    if epilogue is not None:
        sch.reverse_compute_inline(epilogue)
    task = sch.fuse(*task_loops)
    if parallel:
        sch.parallel(task)
    return task


def compute_per_image(sch: s_tir.Schedule, copy, image_loop, per_image: bool) -> list:
    """Place the per-call input ``copy`` (padded copy, data pack) of a conv under ``image_loop``
    when ``per_image`` (batch > 1: each image's copy is made right before that image's tiles read
    it -- copying the whole batch first left every image's copy out of cache), and return the
    copy's own loops (n, ...; n of extent 1 when per image) without the image loop."""
    if per_image:
        sch.compute_at(copy, image_loop, preserve_unit_loops=True)
    return sch.get_loops(copy)[1 if per_image else 0 :]


def transpose_run_pixels(width: int) -> int:
    """Pixels P per byte transpose of :func:`transposing_copy` for rows of ``width`` pixels: the
    largest power of two up to 16 that divides ``width`` when it is at least 4, else the largest
    divisor up to 16. A power-of-two row is one 4-, 8- or 16-byte load; a 14-byte one is
    assembled from 8-, 4- and 2-byte pieces (vmovq + vpinsrd + vpinsrw per channel row).
    Measured on one Zen 4 core (16 planes, strided int8 depthwise), single layers interleaved:
    144 ch 56->28 P 14 -> 8 0.116 -> 0.102 ms, 192 ch 28->14 P 14 -> 4 0.040 -> 0.037 ms; the
    4-plane packs of the VNNI conv rules within 1% (24->144 1x1 @56, 3x3 64 ch @56, 128 ch @28).
    The AVX2 code (8 planes, a znver3 target run on the same core): 0.152 -> 0.140 and 0.054 ->
    0.050 ms on those two layers, the maddubs pixel rule's packs within 1%."""
    power = next((p for p in (16, 8, 4) if width % p == 0), None)
    return power if power is not None else largest_divisor(width, 16)


def transposing_copy(sch: s_tir.Schedule, copy, copy_loops, planes: int, parallel: bool, per_image: bool):
    """Schedule an 8-bit channel-blocking copy ``[N, C, H, W] -> [N, C/planes, H', W', planes]``
    (or ``[N, C/planes, H*W, planes]``; loops ``copy_loops`` = (n, c/planes, h, w, planes), e.g.
    from :func:`compute_per_image`; optionally zero-padded: an ``if_then_else`` border) as byte
    transposes, on a copy of ``sch``:

        parallel for (n, c/planes):                      # n inside the image loop when per_image
            fill the block's plane with zeros            # padded only; LLVM emits one memset
            for h, w0 in steps of P over the interior:
                dst[.., h, w0:w0+P, :] = transpose(src[c0:c0+planes, h, w0:w0+P])
                                                         # register_transpose_intrinsic(P, planes)

    P is :func:`transpose_run_pixels` of the interior width. Returns the new schedule, or None
    (``sch`` untouched) for other dtypes, widths without a divisor of at least 4, or a copy the
    intrinsic does not match (a fused producer in its body...).

    Why: a copy vectorized over the ``planes`` channels of a pixel gathers one byte per channel
    per pixel; the transpose loads rows of P bytes and stores P * planes contiguous bytes.

    The fill is decomposed above the rows, not inside each row, because ``tensorize`` drops the
    row predicate (``T.where(1 <= h < H + 1)``) that a per-row decomposition puts on the interior
    copy, which then reads past the image."""
    dtype = str(sch.get(copy).writes[0].source.dtype)
    source = [r.source for r in sch.get(copy).reads]
    if dtype not in ("uint8", "int8") or len(source) != 1 or str(source[0].dtype) != dtype:
        return None
    trial = sch.copy()
    try:
        try:
            fill = trial.decompose_padding(copy, copy_loops[2])
        except Exception:  # noqa: BLE001 - no zero border: a plain re-laying copy
            fill = None
        blocks = trial.fuse(*(copy_loops[1:2] if per_image else copy_loops[:2]))
        if parallel:
            trial.parallel(blocks)
        if fill is not None:
            row = trial.fuse(*trial.get_loops(fill)[-2:])  # one contiguous padded row
            _, vec = trial.split(row, [None, largest_divisor(extents(trial, [row])[0], 64)])
            trial.vectorize(vec)
        width = trial.get_loops(copy)[-2]
        pixels = transpose_run_pixels(extents(trial, [width])[0])
        if pixels < 4:
            return None
        _, run = trial.split(width, [None, pixels])
        trial.tensorize(run, register_transpose_intrinsic(pixels, planes, dtype))
    except Exception:  # noqa: BLE001 - a copy the intrinsic does not match: keep the caller's
        return None
    return trial


def unroll_and_vectorize_tile(sch: s_tir.Schedule, block, unrolled, vector_loop, reduction_loop, intrin: str | None = None):
    """The register-tile micro-kernel's inner loops: unroll ``unrolled`` (the tile's rows and
    vector blocks), vectorize ``vector_loop`` (None: a scalar tile), split the accumulator
    initialization off above ``reduction_loop`` and give it the same unrolled/vector loops.

    With ``intrin`` (the int8 dot-product rules) ``vector_loop`` is tensorized with that
    intrinsic instead of vectorized; the update loops are unrolled and tensorized after the
    initialization is split off, since tensorize matches the bare update block."""
    if intrin is None:
        for loop in unrolled:
            sch.unroll(loop)
        if vector_loop is not None:
            sch.vectorize(vector_loop)
    init = sch.decompose_reduction(block, reduction_loop)
    init_loops = sch.get_loops(init)
    for loop in init_loops[-1 - len(unrolled) : -1]:
        sch.unroll(loop)
    if vector_loop is not None:
        sch.vectorize(init_loops[-1])
    if intrin is not None:
        for loop in unrolled:
            sch.unroll(loop)
        sch.tensorize(vector_loop, intrin)
    return init


def is_output(sch: s_tir.Schedule, func: tirx.PrimFunc, block) -> bool:
    """True if ``block`` writes one of ``func``'s parameters (an output of the function)."""
    return any(any(w.source.same_as(p) for p in func.params) for w in sch.get(block).writes)


def layout_free_params(func: tirx.PrimFunc) -> set[int]:
    """Indices of parameters that Relax's AttachAttrLayoutFreeBuffers marked as constants."""
    attr = func.attrs.get("layout_free_buffers") if func.attrs is not None else None
    return {int(i) for i in attr} if attr is not None else set()


def read_buffer_param_index(func: tirx.PrimFunc, buffer) -> int | None:
    """Position of ``buffer`` among ``func``'s parameters, or None if it is an internal buffer."""
    for i, param in enumerate(func.params):
        if param.same_as(buffer):
            return i
    return None


def pack_operand(sch: s_tir.Schedule, func: tirx.PrimFunc, block, read_index: int, index_map, parallel=True):
    """Re-lay out operand ``read_index`` of ``block`` with ``index_map`` into a new global buffer.

    If the operand is a constant parameter (``layout_free_buffers``), the copy block is annotated as
    a layout-rewrite preprocessing stage: SplitLayoutRewritePreproc moves it into its own function
    and FoldConstant runs it at compile time, so the packed weight ships in the library and costs
    nothing per inference. Otherwise the copy stays in the function (a cheap per-call repack,
    parallelized) and the kernel still gets its contiguous vector loads. Returns the copy block.
    """
    buf = sch.get(block).reads[read_index].source
    param_index = read_buffer_param_index(func, buf)
    copy = sch.cache_read(block, read_index, "global")
    sch.transform_layout(copy, ("write", 0), index_map)
    if param_index is not None and param_index in layout_free_params(func):
        sch.annotate(copy, LAYOUT_REWRITE_PREPROC, 1)
    elif parallel:
        loops = sch.get_loops(copy)
        if len(loops) >= 2:
            sch.parallel(sch.fuse(*loops[:2]))
        elif loops:
            sch.parallel(loops[0])
    return copy


# --- int8 dot products (AVX-512 VNNI), used by conv2d_int8.py and matmul_int8.py -----------------

# Our 16x4 u8 x s8 -> s32 dot-product intrinsic: C[16] += sum_k A[k] (uint8) * B[16, k] (int8),
# k < 4, one ``vpdpbusd zmm``. Same description as TVM's ``dot_16x4_vnni``, registered under our own
# name for two reasons: TVM's implementation passes the operands as <16 x i32>, the signature of
# ``llvm.x86.avx512.vpdpbusd.512`` before LLVM 22, and this wheel's LLVM 22 rejects it ("Call
# parameter type does not match function signature"; LLVM PR 155194 changed the operands to
# <64 x i8>); and TVM's version binds the accumulator to a ``global`` buffer, while our rules keep
# the accumulator tile in a ``local`` buffer so LLVM holds it in registers.
VNNI_DOT_INTRIN = "edgekiln_dot_16x4_u8i8i32_vnni"
VNNI_LANES = 16  # int32 accumulators per zmm register (output channels / columns per intrinsic)
VNNI_DEPTH = 4  # uint8 x int8 products summed into each lane (reduction elements per intrinsic)

def is_x86_cpu(target: Target) -> bool:
    """True for an LLVM target that generates x86 code (without an mtriple: code for this host)."""
    import platform

    if target.kind.name != "llvm":
        return False
    mtriple = str(target.attrs.get("mtriple", "")) if target.attrs is not None else ""
    if not mtriple:
        return platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")
    return mtriple.startswith(("x86_64", "i686", "i386"))


def has_avx512_vnni(target: Target) -> bool:
    """True if ``target`` is an x86 LLVM target whose CPU has AVX-512 VNNI (``vpdpbusd zmm``).

    Read from the target's mcpu/mattr through LLVM (``znver4``/``znver5``, ``cascadelake``,
    ``icelake-server``, ``sapphirerapids``... have it; ``skylake-avx512`` and AArch64 do not)."""
    if not is_x86_cpu(target):
        return False
    try:
        return bool(codegen.target_has_features("avx512vnni", target)) and vector_bits(target) >= 512
    except Exception:  # noqa: BLE001 - an LLVM that does not know the feature: no VNNI
        return False


def has_avx2_int8(target: Target) -> bool:
    """True if ``target`` is an x86 LLVM target with AVX2 but without AVX-512 VNNI: the targets the
    ``vpmaddwd`` int8 rules take (``znver3``, ``haswell``, ``skylake``...; ``skylake-avx512`` too,
    which has AVX2 but no VNNI). VNNI targets are left to the VNNI rules."""
    if not is_x86_cpu(target) or has_avx512_vnni(target):
        return False
    try:
        return bool(codegen.target_has_features("avx2", target))
    except Exception:  # noqa: BLE001 - an LLVM that does not know the feature: no AVX2
        return False


def _as_int32(load, stored: str | None):
    """``load`` widened to int32; through ``stored`` first when the buffer holds bytes widened to
    int16 (the form ``unsafe_set_dtype`` of a pack leaves in the conv block: the int16 load cast
    back to the byte type, then widened)."""
    from tvm.script import tirx as T

    return T.cast(load if stored is None else T.cast(load, stored), "int32")


def _dot_desc(lanes: int, depth: int, widened: bool = False, data_dtype: str = "uint8"):
    """The description of our channel-vectorized int8 dot-product intrinsics: C[lanes] (int32,
    local) += sum_k A[k] (``data_dtype``: uint8 on x86, int8 for ARM's sdot) * B[lanes, k] (int8),
    k < depth. ``widened``: both operands are stored as int16 (common.AVX2_WIDE_DOT_INTRIN)."""
    from tvm.script import tirx as T

    a_dtype, b_dtype = ("int16", "int16") if widened else (data_dtype, "int8")
    a_stored, b_stored = ("uint8", "int8") if widened else (None, None)

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((depth,), a_dtype, offset_factor=1),
        B: T.Buffer((lanes, depth), b_dtype, offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:depth], B[0:lanes, 0:depth])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, depth):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + _as_int32(A[vk], a_stored) * _as_int32(B[vi, vk], b_stored)

    return desc


def _pixel_desc(depth: int, widened_weight: bool = False, lanes: int = 8):
    """The description of the pixel-vectorized ones (conv1x1_int8.py): C[lanes] += sum_k
    A[lanes, k] (uint8) * B[k] (int8), k < depth -- ``lanes`` pixels (8 on AVX2, 16 with VNNI)
    against one output channel's weights. ``widened_weight``: B is stored as int16
    (common.AVX2_PIXEL_DOT_INTRIN)."""
    from tvm.script import tirx as T

    b_dtype, b_stored = ("int16", "int8") if widened_weight else ("int8", None)

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((lanes, depth), "uint8", offset_factor=1),
        B: T.Buffer((depth,), b_dtype, offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:lanes, 0:depth], B[0:depth])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, depth):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + _as_int32(A[vi, vk], None) * _as_int32(B[vk], b_stored)

    return desc


_registered: set[str] = set()


def register_once(name: str, make_impl, lanes: int = 0, depth: int = 0, make_desc=None) -> str:
    """Register intrinsic ``name`` (description ``make_desc()``, by default :func:`_dot_desc` of
    ``lanes`` x ``depth``; implementation ``make_impl()``) once per process, lazily; return its name.

    Only our intrinsics are built; ``tvm.s_tir.tensor_intrin`` (all backends, ~30 s to import on
    this machine, research note B3) is not imported at all."""
    if name in _registered:
        return name
    from tvm.s_tir import TensorIntrin

    try:
        TensorIntrin.get(name)  # registered by an earlier import of this module (reload)
    except Exception:  # noqa: BLE001 - not registered yet
        desc = make_desc() if make_desc is not None else _dot_desc(lanes, depth)
        TensorIntrin.register(name, desc, make_impl())
    _registered.add(name)
    return name


def _vnni_impl():
    from tvm.script import tirx as T

    # LLVM >= 22: vpdpbusd(<16 x i32> acc, <64 x i8> u8, <64 x i8> s8); older: all <16 x i32>.
    byte_operands = codegen.llvm_version_major() >= 22
    a_type, b_type = ("uint8x64", "int8x64") if byte_operands else ("int32x16", "int32x16")

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            # the 4 activation bytes as one int32, broadcast to all 16 lanes
            a4 = T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 16)
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], dtype="int32x16"),
                T.reinterpret(a4, dtype=a_type),
                T.reinterpret(B.vload([0, 0], dtype="int8x64"), dtype=b_type),
                dtype="int32x16",
            )

    return impl


def register_vnni_intrinsic() -> str:
    """Register :data:`VNNI_DOT_INTRIN` once per process (lazily: only when a rule is about to
    tensorize for a VNNI target) and return its name."""
    return register_once(VNNI_DOT_INTRIN, _vnni_impl, VNNI_LANES, VNNI_DEPTH)


# Pixel-vectorized variant (conv1x1_int8.Conv1x1Int8PixelsVNNI): C[16] += sum_k A[16, k] (uint8) *
# B[k] (int8), k < 4 -- 16 pixels x 4 input channels (the 64 bytes of one zmm) against one output
# channel's 4 weights broadcast as a 32-bit word; one ``vpdpbusd``, exact for any int8 weights.
VNNI_PIXEL_DOT_INTRIN = "edgekiln_dot_16px4_u8i8i32_vnni"


def _vnni_pixel_impl():
    from tvm.script import tirx as T

    byte_operands = codegen.llvm_version_major() >= 22  # see _vnni_impl
    a_type, b_type = ("uint8x64", "int8x64") if byte_operands else ("int32x16", "int32x16")

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((16, 4), "uint8", offset_factor=1),
        B: T.Buffer((4,), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:16, 0:4], B[0:4])
            T.writes(C[0:16])
            # the output channel's 4 weight bytes as one int32, broadcast to all 16 lanes
            w4 = T.broadcast(T.reinterpret(B.vload([0], "int8x4"), dtype="int32"), 16)
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], dtype="int32x16"),
                T.reinterpret(A.vload([0, 0], dtype="uint8x64"), dtype=a_type),
                T.reinterpret(w4, dtype=b_type),
                dtype="int32x16",
            )

    return impl


def register_vnni_pixel_intrinsic() -> str:
    """Register :data:`VNNI_PIXEL_DOT_INTRIN` once per process (lazily) and return its name."""
    return register_once(VNNI_PIXEL_DOT_INTRIN, _vnni_pixel_impl,
                          make_desc=lambda: _pixel_desc(VNNI_DEPTH, lanes=VNNI_LANES))


# --- int8 dot products on AVX2 (vpmaddwd; vpmaddubsw for small weights), the *AVX2 rules ---------

# Our 8x2 u8 x s8 -> s32 dot-product intrinsic (matmul_int8.MatmulInt8AVX2, whose activation operand
# is read in place): C[8] += sum_k A[k] (uint8) * B[8, k] (int8), k < 2.
# The two activation bytes are zero-extended to int16 and broadcast as one 32-bit word, the 16
# weight bytes sign-extended to <16 x i16> (vpmovsxbw), and ``vpmaddwd`` sums each pair of int16
# products into an int32 lane, exactly (|255 * 127 * 2| < 2^31), then ``vpaddd`` accumulates.
# ``vpmaddubsw`` (u8 x s8 -> saturating int16 pair sums, 2 * 255 * 127 > 32767) is not bit-exact
# for 8-bit weights and is used only where the weights are proven within +-64
# (AVX2_MADDUBS_DOT_INTRIN below). ``llvm.x86.avx2.pmadd.wd`` has had the signature
# <8 x i32>(<16 x i16>, <16 x i16>) in every LLVM version TVM supports, so unlike vpdpbusd it
# needs no version switch.
AVX2_DOT_INTRIN = "edgekiln_dot_8x2_u8i8i32_avx2"
AVX2_LANES = 8  # int32 accumulators per ymm register
AVX2_DEPTH = 2  # uint8 x int8 products summed into each lane


def _avx2_impl():
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((2,), "uint8", offset_factor=1),
        B: T.Buffer((8, 2), "int8", offset_factor=1),
        C: T.Buffer((8,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:2], B[0:8, 0:2])
            T.writes(C[0:8])
            # the 2 activation bytes as one 16-bit word broadcast to 8 words, then zero-extended
            # byte by byte to int16 (vpbroadcastw + vpmovzxbw: [a0, a1] in every int32 lane)
            a2 = T.broadcast(T.reinterpret(A.vload([0], "uint8x2"), dtype="uint16"), 8)
            C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                T.cast(T.reinterpret(a2, dtype="uint8x16"), "int16x16"),
                T.cast(B.vload([0, 0], dtype="int8x16"), "int16x16"),
                dtype="int32x8",
            )

    return impl


def register_avx2_intrinsic() -> str:
    """Register :data:`AVX2_DOT_INTRIN` once per process (lazily) and return its name."""
    return register_once(AVX2_DOT_INTRIN, _avx2_impl, AVX2_LANES, AVX2_DEPTH)


# Pixel-vectorized variant for 1x1 convs (conv1x1_int8.py): C[8] += sum_k A[8, k] (uint8) *
# B[k] (int16), k < 2 -- 8 pixels x 2 input channels of data (16 bytes, zero-extended with
# vpmovzxbw) against one output channel's weight pair, pre-widened to int16 at compile time so the
# pair is one 32-bit word broadcast with vpbroadcastd. Exact for the same reason as above (the
# int16 weights hold int8 values).
AVX2_PIXEL_DOT_INTRIN = "edgekiln_dot_8px2_u8i16i32_avx2"


def _pixel_dot_impl():
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((8, 2), "uint8", offset_factor=1),
        B: T.Buffer((2,), "int16", offset_factor=1),
        C: T.Buffer((8,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:8, 0:2], B[0:2])
            T.writes(C[0:8])
            w2 = T.broadcast(T.reinterpret(B.vload([0], "int16x2"), dtype="int32"), 8)
            C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                T.cast(A.vload([0, 0], dtype="uint8x16"), "int16x16"),
                T.reinterpret(w2, dtype="int16x16"),
                dtype="int32x8",
            )

    return impl


def register_avx2_pixel_intrinsic() -> str:
    """Register :data:`AVX2_PIXEL_DOT_INTRIN` once per process (lazily) and return its name."""
    return register_once(AVX2_PIXEL_DOT_INTRIN, _pixel_dot_impl, make_desc=lambda: _pixel_desc(AVX2_DEPTH, widened_weight=True))


# Both operands pre-widened to int16 (conv2d_int8.Conv2dInt8AVX2): C[8] += sum_k A[k] * B[8, k],
# k < 2, where A holds uint8 values in int16 (the per-call data pack writes them widened) and B
# int8 values in int16 (the weight pack, widened at compile time). The activation pair is then one
# 32-bit word broadcast straight from memory (vpbroadcastd, a load-port operation) and the 32-byte
# weight vector is a plain load: the kernel has no vpbroadcastw / vpmovzxbw / vpmovsxbw left, which
# on Zen 3 competed with vpmaddwd for the vector pipes (measured 15-28% faster on ResNet-18's 3x3
# convs). Exact for the reason above: vpmaddwd multiplies int16 values that are bytes.
AVX2_WIDE_DOT_INTRIN = "edgekiln_dot_8x2_w16i32_avx2"


def _wide_dot_impl():
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((2,), "int16", offset_factor=1),
        B: T.Buffer((8, 2), "int16", offset_factor=1),
        C: T.Buffer((8,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:2], B[0:8, 0:2])
            T.writes(C[0:8])
            a2 = T.broadcast(T.reinterpret(A.vload([0], "int16x2"), dtype="int32"), 8)
            C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                T.reinterpret(a2, dtype="int16x16"),
                B.vload([0, 0], dtype="int16x16"),
                dtype="int32x8",
            )

    return impl


def register_avx2_wide_intrinsic() -> str:
    """Register :data:`AVX2_WIDE_DOT_INTRIN` once per process (lazily) and return its name."""
    return register_once(AVX2_WIDE_DOT_INTRIN, _wide_dot_impl, make_desc=lambda: _dot_desc(AVX2_LANES, AVX2_DEPTH, widened=True))


# 8x4 u8 x s8 -> s32 with ``vpmaddubsw`` for weights proven small (conv2d_int8.Conv2dInt8AVX2Maddubs):
# C[8] += sum_k A[k] (uint8) * B[8, k] (int8), k < 4 -- the description of the VNNI intrinsic at
# 8 lanes. ``vpmaddubsw`` multiplies 32 u8 x s8 byte pairs and adds adjacent products into int16
# with saturation; ``vpmaddwd`` by ones then adds adjacent int16 pairs into int32 lanes. The int16
# pair sum a0*b0 + a1*b1 with a in [0, 255] lies in [255 * (min(b0,0) + min(b1,0)),
# 255 * (max(b0,0) + max(b1,0))], so it never saturates when every |b| <= WEIGHT_BOUND_MADDUBS = 64
# (255 * 128 = 32640 <= 32767): the implementation equals the description exactly for such weights
# and only for them. The rule claims a conv only after reading that bound off its constant weight
# (``constant_param_range``); 8-bit codes up to 127 can saturate and never reach this intrinsic.
# 32 multiply-adds per vpmaddubsw + vpmaddwd + vpaddd, from a 4-byte broadcast and a 32-byte
# weight load (measured 1.3-1.5x faster than the int16 form on ResNet-18's 3x3 convs, Zen 3).
AVX2_MADDUBS_DOT_INTRIN = "edgekiln_dot_8x4_u8i7i32_avx2"
MADDUBS_DEPTH = 4
WEIGHT_BOUND_MADDUBS = 64


def _quad_sums(unsigned_bytes, signed_bytes):
    """<8 x i32>: each lane the sum of 4 adjacent products of the 32 unsigned bytes (passed as
    <32 x i8>) with the 32 signed bytes -- ``vpmaddubsw`` (pairs into saturating int16) then
    ``vpmaddwd`` by ones (pairs of those into int32). Exact while no pair sum saturates."""
    from tvm.script import tirx as T

    pair_sums = T.call_llvm_pure_intrin(
        T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"), unsigned_bytes, signed_bytes, dtype="int16x16"
    )
    return T.call_llvm_pure_intrin(
        T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), pair_sums, T.broadcast(T.int16(1), 16), dtype="int32x8"
    )


def _maddubs_impl():
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((8, 4), "int8", offset_factor=1),
        C: T.Buffer((8,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:4], B[0:8, 0:4])
            T.writes(C[0:8])
            a4 = T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 8)
            C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + _quad_sums(
                T.reinterpret(a4, dtype="int8x32"), B.vload([0, 0], dtype="int8x32"))

    return impl


def register_avx2_maddubs_intrinsic() -> str:
    """Register :data:`AVX2_MADDUBS_DOT_INTRIN` once per process (lazily) and return its name."""
    return register_once(AVX2_MADDUBS_DOT_INTRIN, _maddubs_impl, AVX2_LANES, MADDUBS_DEPTH)


# Pixel-vectorized variant (conv1x1_int8.Conv1x1Int8PixelsAVX2Maddubs): C[8] += sum_k A[8, k]
# (uint8) * B[k] (int8), k < 4 -- 8 pixels x 4 input channels (32 bytes) against one output
# channel's 4 weights broadcast as one 32-bit word. Exact under the same weight bound.
AVX2_PIXEL_MADDUBS_INTRIN = "edgekiln_dot_8px4_u8i7i32_avx2"


def _pixel_maddubs_impl():
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((8, 4), "uint8", offset_factor=1),
        B: T.Buffer((4,), "int8", offset_factor=1),
        C: T.Buffer((8,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:8, 0:4], B[0:4])
            T.writes(C[0:8])
            w4 = T.broadcast(T.reinterpret(B.vload([0], "int8x4"), dtype="int32"), 8)
            C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + _quad_sums(
                T.reinterpret(A.vload([0, 0], dtype="uint8x32"), dtype="int8x32"), T.reinterpret(w4, dtype="int8x32"))

    return impl


def register_avx2_pixel_maddubs_intrinsic() -> str:
    """Register :data:`AVX2_PIXEL_MADDUBS_INTRIN` once per process (lazily) and return its name."""
    return register_once(AVX2_PIXEL_MADDUBS_INTRIN, _pixel_maddubs_impl, make_desc=lambda: _pixel_desc(MADDUBS_DEPTH))


# --- int8 dot products on AArch64 (the dot-product extension, FEAT_DotProd) ----------------------

# Our 4x4 s8 x s8 -> s32 dot-product intrinsic: C[4] += sum_k A[k] (int8) * B[4, k] (int8), k < 4,
# one ``sdot v.4s, v.16b, v.16b`` with A's 4-byte word broadcast by ``ld1r`` (what LLVM emits for
# the rules' tiles; the by-element form ``sdot .., v.4b[i]``, which would share one activation load
# among 4 words, is not selected). The instruction multiplies signed by signed (or,
# ``udot``, unsigned by unsigned) bytes; there is no mixed form before the I8MM extension, so the
# integer-only form's uint8 activations are shifted to int8 in the Relax module before fusion
# (targets/lowering/signed_activations.py: x - 128 with a 128 * sum(w) correction, exact), and the
# rules claim int8 x int8 convs and matmuls on these targets. Each lane sums 4 products of at most
# 128 * 128, exactly, in int32, so the kernel is bit-exact for any int8 weights (unlike vpmaddubsw).
# Same description as TVM's ``dot_4x4_i8i8s32_sdot`` except that the accumulator is ``local`` (held
# in registers by our rules, see VNNI_DOT_INTRIN).
ARM_SDOT_INTRIN = "edgekiln_dot_4x4_i8i8i32_sdot"
ARM_SDOT_LANES = 4  # int32 accumulators per 128-bit NEON register
ARM_SDOT_DEPTH = 4  # int8 x int8 products summed into each lane


def has_arm_dotprod(target: Target) -> bool:
    """True if ``target`` is an AArch64 LLVM target with the dot-product extension (``sdot``/
    ``udot``: ARMv8.4-A, optional from v8.2; Cortex-A55/A76/A78/X1, Neoverse N1; not the Cortex-A72
    of the Raspberry Pi 4), read from its mcpu/mattr through LLVM."""
    if target.kind.name != "llvm":
        return False
    mtriple = str(target.attrs.get("mtriple", "")) if target.attrs is not None else ""
    if not mtriple.startswith(("aarch64", "arm64")):
        return False
    try:
        return bool(codegen.target_has_features("dotprod", target))
    except Exception:  # noqa: BLE001 - an LLVM without the AArch64 backend: no dot product
        return False


def _arm_sdot_impl():
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "int8", offset_factor=1),
        B: T.Buffer((4, 4), "int8", offset_factor=1),
        C: T.Buffer((4,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:4], A[0:4], B[0:4, 0:4])
            T.writes(C[0:4])
            # the 4 activation bytes as one int32, broadcast to the 4 lanes
            a4 = T.broadcast(T.reinterpret(A.vload([0], "int8x4"), dtype="int32"), 4)
            C[T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"),
                C.vload([0], dtype="int32x4"),
                T.reinterpret(a4, dtype="int8x16"),
                B.vload([0, 0], dtype="int8x16"),
                dtype="int32x4",
            )

    return impl


def register_arm_sdot_intrinsic() -> str:
    """Register :data:`ARM_SDOT_INTRIN` once per process (lazily) and return its name."""
    return register_once(
        ARM_SDOT_INTRIN, _arm_sdot_impl,
        make_desc=lambda: _dot_desc(ARM_SDOT_LANES, ARM_SDOT_DEPTH, data_dtype="int8"),
    )



def register_transpose_intrinsic(pixels: int, planes: int, dtype: str) -> str:
    """Register (once) and name the tensor intrinsic that interleaves ``planes`` rows into pixels:
    ``C[i, j] = A[j, 0, i]`` for i < ``pixels``, j < ``planes``, A a strided (planes, 1, pixels)
    region (row j of plane j, e.g. ``pixels`` columns of one image row of channel c0 + j in NCHW)
    and C a contiguous (pixels, planes) one (the NCHW{planes}c layout).

    Implementation: ``planes`` contiguous vector loads of ``pixels`` elements, one shufflevector
    picking element ``j * pixels + i`` of their concatenation for output ``i * planes + j``, one
    contiguous store of ``pixels * planes`` elements. LLVM lowers the shuffle to unpack/pshufb/
    blend sequences: for 8 x 16 bytes on AVX2, 8 loads, about 40 shuffles and 4 32-byte stores,
    where a per-pixel gather costs 8 byte loads and inserts per 8 bytes stored."""
    from tvm.script import tirx as T

    def make_desc():
        @T.prim_func(s_tir=True)
        def desc(a: T.handle, c: T.handle) -> None:
            s0 = T.int64()
            s1 = T.int64()
            A = T.match_buffer(a, (planes, 1, pixels), dtype, strides=[s0, s1, 1], offset_factor=1)
            C = T.match_buffer(c, (pixels, planes), dtype, offset_factor=1)
            with T.sblock("root"):
                T.reads(A[0:planes, 0:1, 0:pixels])
                T.writes(C[0:pixels, 0:planes])
                for i, j in T.grid(pixels, planes):
                    with T.sblock("copy"):
                        vi, vj = T.axis.remap("SS", [i, j])
                        C[vi, vj] = A[vj, 0, vi]

        return desc

    def make_impl():
        @T.prim_func(s_tir=True)
        def impl(a: T.handle, c: T.handle) -> None:
            s0 = T.int64()
            s1 = T.int64()
            A = T.match_buffer(a, (planes, 1, pixels), dtype, strides=[s0, s1, 1], offset_factor=1)
            C = T.match_buffer(c, (pixels, planes), dtype, offset_factor=1)
            with T.sblock("root"):
                T.reads(A[0:planes, 0:1, 0:pixels])
                T.writes(C[0:pixels, 0:planes])
                C.vstore([0, 0], T.Shuffle([A.vload([j, 0, 0], f"{dtype}x{pixels}") for j in range(planes)],
                                           [T.int32(j * pixels + i) for i in range(pixels) for j in range(planes)]))

        return impl

    return register_once(f"edgekiln_transpose_{dtype}_{pixels}x{planes}", make_impl, make_desc=make_desc)


# Function attribute set by ``schedules.attach_constant_ranges``: [[param index, min, max], ...]
# for the integer constants a Relax module passes to the function (union over its call sites).
CONSTANT_RANGES_ATTR = "edgekiln.constant_param_ranges"


def constant_param_range(func: tirx.PrimFunc, buffer) -> tuple[int, int] | None:
    """(min, max) of the constant that every call of ``func`` passes for parameter ``buffer``, or
    None when the parameter is not such a constant (or no ranges were attached)."""
    index = read_buffer_param_index(func, buffer)
    ranges = func.attrs.get(CONSTANT_RANGES_ATTR) if func.attrs is not None else None
    if index is None or ranges is None:
        return None
    for entry in ranges:
        if int(entry[0]) == index:
            return int(entry[1]), int(entry[2])
    return None


def within_maddubs_bound(func: tirx.PrimFunc, weight) -> bool:
    """True if parameter ``weight`` of ``func`` is a constant within +-WEIGHT_BOUND_MADDUBS at every
    call, so vpmaddubsw's int16 pair sums with any uint8 activations are exact."""
    bounds = constant_param_range(func, weight)
    return bounds is not None and max(-bounds[0], bounds[1]) <= WEIGHT_BOUND_MADDUBS


class VNNIDot:
    """Mixin of the int8 rules for AVX-512 VNNI targets: the 16x4 vpdpbusd dot product."""

    lanes, depth = VNNI_LANES, VNNI_DEPTH
    # the activation operand's dtype the rule claims (the weights are int8 for every rule)
    data_dtype = "uint8"
    # True: the conv rule writes its data pack and weight pack as int16 (``AVX2WideDot``)
    widen_operands = False
    # int32x16 accumulators per register tile (32 zmm registers; see conv2d_int8.MAX_ACCUMULATORS)
    max_accumulators = 16

    def accepts(self, target: Target) -> bool:
        return has_avx512_vnni(target)

    def register_intrinsic(self) -> str:
        return register_vnni_intrinsic()


class AVX2Dot(VNNIDot):
    """Mixin of the int8 rules for AVX2 targets without VNNI: the 8x2 vpmaddwd dot product."""

    lanes, depth = AVX2_LANES, AVX2_DEPTH
    # int32x8 accumulators per tile: 16 ymm registers, less nb sign-extended weight vectors and
    # the broadcasts (see conv2d_int8's docstring for the measured tiles)
    max_accumulators = 8

    def accepts(self, target: Target) -> bool:
        return has_avx2_int8(target)

    def register_intrinsic(self) -> str:
        return register_avx2_intrinsic()


class AVX2WideDot(AVX2Dot):
    """Mixin of the AVX2 conv rule: the 8x2 vpmaddwd dot product on int16-widened packs."""

    widen_operands = True

    def register_intrinsic(self) -> str:
        return register_avx2_wide_intrinsic()


class AVX2MaddubsDot(AVX2Dot):
    """Mixin of the AVX2 rules for weights within +-WEIGHT_BOUND_MADDUBS: the 8x4 vpmaddubsw dot
    product (exact only for such weights; the rule checks them)."""

    depth = MADDUBS_DEPTH
    # the claim depends on the weights' values (schedules.value_claimed_functions)
    claims_by_value = True
    # 14 accumulators (2 x 7 on ResNet-18's images): the weight and ones vectors and the broadcast
    # leave room for them with no sign extensions in the loop. Measured on Zen 3, ms, 2x4 -> 2x7:
    # 64->64 3x3 @56 1.84 -> 1.66, 128->128 @28 1.74 -> 1.51, the 7x7 s2 stem 3.66 -> 3.26; 16
    # accumulators (2x8, 4x4) spill or gain nothing.
    max_accumulators = 14

    def register_intrinsic(self) -> str:
        return register_avx2_maddubs_intrinsic()


class ArmDotprodDot(VNNIDot):
    """Mixin of the int8 rules for AArch64 targets with the dot-product extension: the 4x4
    ``sdot`` (int8 x int8) dot product on activations shifted to int8 (see ARM_SDOT_INTRIN)."""

    lanes, depth = ARM_SDOT_LANES, ARM_SDOT_DEPTH
    data_dtype = "int8"
    # int32x4 accumulators per tile: 32 NEON registers, less the nb weight vectors, the activation
    # vector whose lanes the by-element sdot reads, and LLVM's hoisted loads (max_accumulators)
    max_accumulators = 24

    def accepts(self, target: Target) -> bool:
        return has_arm_dotprod(target)

    def register_intrinsic(self) -> str:
        return register_arm_sdot_intrinsic()


def register_int8_intrinsics(target: Target) -> None:
    """Register the int8 dot-product intrinsics the int8 rules use on ``target`` (if any), e.g.
    before replaying tuning records whose traces tensorize with them."""
    if has_arm_dotprod(target):
        register_arm_sdot_intrinsic()
    elif has_avx512_vnni(target):
        register_vnni_intrinsic()
    elif has_avx2_int8(target):
        register_avx2_intrinsic()
        register_avx2_wide_intrinsic()
        register_avx2_maddubs_intrinsic()
        register_avx2_pixel_intrinsic()
        register_avx2_pixel_maddubs_intrinsic()


def column_stride(padded_width: int, kernel_width: int, out_width: int) -> int:
    """Stride of a conv along the output columns, read off the shapes: (W_padded - KW) // (OW - 1)
    (exact for undilated kernels; 1 for a single output column)."""
    return 1 if out_width <= 1 else (padded_width - kernel_width) // (out_width - 1)


def int8_dot_loads(block) -> tuple | None:
    """For a reduction block ``out = out + int32(X[..]) * int32(Y[..])`` with an int32 ``out`` and
    8-bit ``X``/``Y``, return the two loads ``(x_load, y_load)`` in the order written (``.source``
    is the buffer, ``.indices`` the index expressions); None for any other body (float, operands
    widened to int32 before the product, a zero-point subtraction inside the product...)."""
    from tvm import ir

    store = block.body
    if not isinstance(store, tirx.BufferStore) or str(store.buffer.dtype) != "int32":
        return None
    value = store.value
    if not isinstance(value, ir.prim.expr.Add):
        return None
    acc, prod = value.a, value.b
    if not (isinstance(acc, ir.TensorLoad) and acc.source.same_as(store.buffer)):
        return None
    if not isinstance(prod, ir.prim.expr.Mul):
        return None
    loads = []
    for operand in (prod.a, prod.b):
        if not (isinstance(operand, ir.prim.expr.Cast) and str(operand.ty) == "int32"):
            return None
        load = operand.value
        if not isinstance(load, ir.TensorLoad) or str(load.source.dtype) not in ("int8", "uint8"):
            return None
        loads.append(load)
    return loads[0], loads[1]
