"""Relax module -> compiled executable -> exported library.

Pipeline (shared/research/tvm-0.27.md, recommendation 2):

    DecomposeOpsForInference   batch_norm/layer_norm/gelu... -> primitive ops (inference semantics)
    CanonicalizeBindings       drop trivial rebinds left by the importer, so fusion sees clean chains
    strided_pointwise          (x86) 1x1 convs with stride > 1 as a subsampling slice + a stride-1
                               conv (strided_pointwise.py: the pointwise kernels read NCHW, the
                               strided conv's rules copied the whole input)
    requant_float              (x86) the int64 requantizer chains of the integer-only form as the
                               exact float64 computation (requant_float.py: no 64-bit vector
                               multiply on x86 before AVX-512DQ)
    flat_pixels                (x86 AVX2, AVX-512 VNNI) 8-bit 1x1 convs on 14x14- and 7x7-like images as
                               convs over a flat pixel row padded to whole 8- or 16-pixel vectors
                               (pixel-vectorized rule; which convs per target: flat_pixels.POLICIES)
    wide_rows                  (x86 AVX2, AVX-512 VNNI) 8-bit stride-1 depthwise convs with rows that
                               are not whole int32 vectors (14/28 columns on AVX2, 28/56 with
                               AVX-512) on rows padded to whole vectors, cropped after the epilogue
    signed_activations         (AArch64 with sdot) uint8 x int8 convs/matmuls as int8 x int8 with
                               a constant correction, exact (sdot multiplies int8 by int8 only)
    zero pipeline              LegalizeOps -> AnnotateTIROpPattern -> FoldConstant -> FuseOps -> FuseTIR
    apply_records              (optional) tuned schedules from a MetaSchedule database (tuning.py)
    apply_default_schedules    our CPU schedule rules for every PrimFunc not scheduled yet
    tvm.compile                the rest of TVM's default Relax pipeline + TIR codegen
    export_library             a shared library (.so) with the weights embedded, or a .tar of
                               objects for cross targets that are linked on the board

Everything runs under ``with tvm_target`` because legalization, the schedules and codegen read
``Target.current()``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import tvm
from tvm import relax

from targets.lowering import (batch_split, flat_pixels, int4, requant_float, schedules, signed_activations,
                              strided_pointwise, wide_rows)
from targets.lowering.errors import lowering_step


@dataclasses.dataclass
class BuildOutput:
    executable: tvm.runtime.Executable
    schedule_report: schedules.ScheduleReport
    seconds: float
    #: the scheduled module ``tvm.compile`` compiled (kernel signatures: targets/lowering/kernels.py)
    module: tvm.IRModule | None = None


def prepare(mod: tvm.IRModule, tvm_target: tvm.target.Target) -> tvm.IRModule:
    """Graph optimization, legalization and fusion: the module that schedules (and tuning) see.

    Tuning records are keyed by the structural hash of these fused PrimFuncs, so tuning.py calls
    this same function; any change here invalidates shipped records.
    """
    with tvm_target:
        with lowering_step("graph optimization (DecomposeOpsForInference, CanonicalizeBindings)"):
            mod = relax.transform.DecomposeOpsForInference()(mod)
            mod = relax.transform.CanonicalizeBindings()(mod)
        if schedules.common.is_x86_cpu(tvm_target):
            with lowering_step("strided 1x1 convs on a subsampled input (strided_pointwise)"):
                mod, _ = strided_pointwise.subsample_strided_pointwise(mod)
            with lowering_step("float64 requantization (requant_float)"):
                mod, _, _ = requant_float.rewrite_requant_chains(mod)
        # int32 lanes of the x86 int8 rules' vectors (8 on AVX2 without VNNI, 16 with AVX-512
        # VNNI; 0 elsewhere): the pixel vector of flat_pixels and the row vector of wide_rows
        int8_lanes = (schedules.common.AVX2_LANES if schedules.common.has_avx2_int8(tvm_target)
                      else schedules.common.VNNI_LANES if schedules.common.has_avx512_vnni(tvm_target) else 0)
        if int8_lanes:
            with lowering_step("1x1 convs on a flat pixel row (flat_pixels)"):
                mod, _ = flat_pixels.flatten_small_image_1x1(mod, int8_lanes)
            with lowering_step("stride-1 8-bit depthwise convs on whole-vector rows (wide_rows)"):
                mod, _ = wide_rows.widen_depthwise_rows(mod, int8_lanes)
        if schedules.common.has_arm_dotprod(tvm_target):
            with lowering_step("int8 activations for sdot (signed_activations)"):
                mod, _ = signed_activations.shift_uint8_activations(mod)
        with lowering_step("legalize/fuse (zero pipeline)"):
            mod = relax.get_pipeline("zero")(mod)
    return mod


def build(mod: tvm.IRModule, tvm_target: tvm.target.Target, records: Path | None = None,
          per_image_batch: int | None = None) -> BuildOutput:
    """Optimize, schedule and compile ``mod`` for ``tvm_target``. TVM errors become LoweringError.

    ``records`` is a tuning-record directory (tuning.find_records); functions it covers keep their
    tuned schedule and are reported as scheduled by rule ``"tuned"``. ``per_image_batch`` = N: ``mod``
    is the batch-1 network, and the executable's ``main`` runs it on each of N images
    (batch_split.py); records and rules see only the batch-1 kernels.
    """
    start = time.perf_counter()
    mod = prepare(mod, tvm_target)
    with tvm_target:
        tuned: list[str] = []
        if records is not None:
            from targets.lowering import tuning

            with lowering_step("applying tuning records", str(records)):
                # Kernels a rule claims by their weight values keep that rule: a record, keyed by
                # the kernel's structure, was tuned without it (schedules.value_claimed_functions).
                # Applying records renames the functions it schedules; call sites pair them up.
                by_value = schedules.value_claimed_functions(mod, tvm_target)
                originals = {name: mod[name] for name in by_value}
                callees = schedules.call_tir_callees(mod)
                mod, tuned = tuning.apply_records(mod, tvm_target, records)
                renamed = dict(zip(callees, schedules.call_tir_callees(mod)))
                for name, func in originals.items():
                    new_name = renamed.get(name, name)
                    if new_name in tuned:
                        if func.attrs is not None and "global_symbol" in func.attrs:
                            func = func.with_attr("global_symbol", new_name)
                        mod[new_name] = func
                        tuned.remove(new_name)
        with lowering_step("scheduling"):
            mod, unpackers = int4.schedule_unpack_kernels(mod, tvm_target)
            mod, report = schedules.apply_default_schedules(mod, tvm_target)
            report.scheduled.update(dict.fromkeys(unpackers, "int4-unpack"))
        if per_image_batch is not None:
            with lowering_step("per-image wrapper"):
                mod, added = batch_split.wrap_per_image(mod, per_image_batch, tvm_target)
            report.scheduled.update(added)
        names = {gvar.name_hint for gvar in mod.get_global_vars()}
        for name in tuned:
            # A tuned conv whose weight was pre-packed is renamed "<name>_prepacked".
            report.scheduled[name if name in names else f"{name}_prepacked"] = "tuned"
        with lowering_step("compile"):
            executable = tvm.compile(mod, target=tvm_target)
    return BuildOutput(executable, report, time.perf_counter() - start, mod)


def export(executable: tvm.runtime.Executable, path: Path, cross_compiler: str | None = None) -> float:
    """Write ``executable`` to ``path`` (``.so``, or ``.tar`` of objects); returns the seconds taken.

    ``cross_compiler`` (e.g. ``aarch64-linux-gnu-gcc``) links a ``.so`` for another architecture.
    The file is written beside its final name and renamed, so a failed export leaves no partial file.
    """
    start = time.perf_counter()
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    with lowering_step("export", path.name):
        try:
            if cross_compiler and path.suffix == ".so":
                from tvm.support import cc

                executable.export_library(str(tmp), fcompile=cc.cross_compiler(cross_compiler))
            else:
                executable.export_library(str(tmp))
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
    return time.perf_counter() - start
