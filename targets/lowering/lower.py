"""``lower_model``: ONNX model + Target -> compiled library in an output directory.

This module only sequences the steps (target resolution, import, build, export) and gathers
their timings and notes; each step lives in its own module. The build depends on the TVM target's
kind:

    llvm  (cpu, rpi4)           build.py: CPU schedule rules; a .so, cross-linked for boards
    cuda  (jetson-*, gpu)       cuda.py: TVM's GPU pipeline, kernels compiled by nvcc for sm_XX
    c     (fpga)                hls.py: C source of every kernel in a tar, for an HLS flow

Cross targets check their toolchain first (cross.py): a missing cross compiler raises
ToolchainMissingError (a LoweringError naming the Debian package) before any TVM work. After
export the artifact's format is read back from its bytes (ELF machine, CUDA fatbin arch) and
recorded in ``LoweringResult.artifact``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx

from compiler.errors import OptionError
from targets.lowering import build as build_step
from targets.lowering import batch_split, cross, importer, tvm_target
from targets.lowering.errors import lowering_step
from targets.registry import Target


@dataclasses.dataclass
class LoweringResult:
    """What lowering produced.

    Attributes:
        library_file: file name inside ``out_dir`` (``model.so`` or ``model.tar``).
        tvm_target: the resolved TVM target as JSON (``Target.export()``), host values filled in.
        seconds: wall time per step: ``import``, ``build``, ``export``.
        scheduled: PrimFunc name -> schedule rule that scheduled it.
        unscheduled: PrimFuncs left with TVM's naive loops (slow).
        notes: decisions taken while lowering, in words (for the report).
        input_names / output_names: graph inputs and outputs in graph order; pass ``input_names``
            to :func:`targets.lowering.load_library`.
        artifact: the artifact's format as read back from the written file: ``format`` (``elf``
            or ``c-source-tar``), ``machine`` (ELF e_machine: ``x86_64``, ``aarch64``), ``cuda``
            (``[[kind, sm_XX], ...]`` of embedded fatbins; empty when CUDA shipped as source),
            ``files`` (tar members).
        kernels: with ``kernel_library``: the kernels ``main`` calls, in order, with their
            argument signatures (targets/lowering/kernels.py); empty otherwise.
        kernel_library_file: with ``kernel_library``: ``<library_name>.kernels.so`` in ``out_dir``,
            the kernels alone, for timing them one by one on a device; None otherwise.
        per_image_batch: N when ``main`` runs the batch-1 network on each of N images
            (batch_split.py), else None.
    """

    library_file: str
    tvm_target: dict[str, Any] | str
    seconds: dict[str, float]
    scheduled: dict[str, str]
    unscheduled: list[str]
    notes: list[str]
    input_names: list[str] = dataclasses.field(default_factory=list)
    output_names: list[str] = dataclasses.field(default_factory=list)
    artifact: dict[str, Any] = dataclasses.field(default_factory=dict)
    kernels: list = dataclasses.field(default_factory=list)
    kernel_library_file: str | None = None
    per_image_batch: int | None = None


def _vpmaddwd_rules() -> set[str]:
    """Names of the rules that run 8-bit weights on AVX2 with vpmaddwd; their vpmaddubsw variants
    take the same kernels when the weights are 7-bit (``--quantize int8-w7``)."""
    from targets.lowering.schedules.conv1x1_int8 import Conv1x1Int8PixelsAVX2
    from targets.lowering.schedules.conv2d_int8 import Conv2dInt8AVX2
    from targets.lowering.schedules.matmul_int8 import MatmulInt8AVX2

    return {Conv2dInt8AVX2.name, Conv1x1Int8PixelsAVX2.name, MatmulInt8AVX2.name}


def plan_batch(model_proto: onnx.ModelProto, target: Target, input_shapes: Mapping[str, Sequence[int]],
               per_image: str, kind: str, kernel_library: bool = False) -> batch_split.BatchPlan:
    """Whether the artifact runs the batch image by image (batch_split.plan), for CPU targets;
    tuning calls this too, so its kernels are the ones the build will schedule."""
    shapes = importer.static_shapes(model_proto, input_shapes)
    if kind != "llvm" or kernel_library:
        if per_image == "on":
            why = "per-kernel measurement" if kernel_library else f"{kind} targets"
            raise OptionError(f"--per-image on is not supported for {why} (CPU builds only)")
        return batch_split.BatchPlan(None, model_proto, shapes)
    return batch_split.plan(model_proto, shapes, batch_split.target_cache_bytes(target), per_image)


def _library_name(target: Target, library_name: str) -> str:
    if not library_name or "/" in library_name or library_name.startswith("."):
        raise OptionError(f"invalid library name '{library_name}'")
    if target.export_format not in ("so", "tar"):
        raise OptionError(f"target '{target.name}': unknown export_format '{target.export_format}' (so or tar)")
    return f"{library_name}.{target.export_format}"


def lower_model(
    model_proto: onnx.ModelProto,
    target: Target,
    input_shapes: Mapping[str, Sequence[int]],
    out_dir: Path,
    library_name: str = "model",
    tuning_records: Path | None = None,
    kernel_library: bool = False,
    per_image: str = "auto",
) -> LoweringResult:
    """Compile ``model_proto`` for ``target`` into ``out_dir/<library_name>.<so|tar>``.

    ``input_shapes`` gives the static shape of inputs with symbolic dims (others may be omitted).
    ``tuning_records`` is a records root (or one key directory) written by ``compile --tune``; the
    records matching this target and TVM version are applied, others are ignored with a note.
    ``kernel_library`` also writes the kernels alone (``<library_name>.kernels.so``) and lists the
    calls of ``main`` (per-kernel timing on a device; CPU targets only).
    ``per_image`` (auto, on, off): run a batched model image by image inside the artifact where
    the graph allows it and, for ``auto``, the cache model predicts less memory traffic
    (batch_split.py; CPU targets only, not with ``kernel_library``).
    Raises UnsupportedModelError for operators TVM cannot import, OptionError for bad shapes or
    target specs, LoweringError (one line naming the step) for anything TVM fails on.
    """
    out_dir = Path(out_dir)
    file_name = _library_name(target, library_name)
    seconds: dict[str, float] = {}

    with lowering_step("target resolution", target.name):
        resolved, notes = tvm_target.resolve(target)
    # Cheap checks first, so a missing toolchain or a float graph fails before TVM works.
    cross.check_integer_only(model_proto, target)
    cross.require_cross_compiler(target)

    kind = str(resolved.kind.name)
    split = plan_batch(model_proto, target, input_shapes, per_image, kind, kernel_library)
    if split.note:
        notes.append(split.note)
    start = time.perf_counter()
    mod = importer.import_onnx(split.model, split.shapes, notes)
    seconds["import"] = time.perf_counter() - start

    if kernel_library and kind != "llvm":
        raise OptionError(f"target '{target.name}': per-kernel measurement supports CPU (llvm) targets only, not {kind}")
    kernel_file, kernel_list = None, []
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / file_name
    if kind == "c":
        from targets.lowering import hls

        if target.export_format != "tar":
            raise OptionError(f"target '{target.name}': the C target exports C source, so export_format must be tar")
        built, kernels = hls.build(mod, resolved)
        seconds["build"] = built.seconds
        seconds["export"] = hls.export(built.executable, path, kernels)
        artifact = _read_back_tar(path)
        notes.append(f"C source for an HLS flow: {len(kernels)} kernels with plain loop nests (see HOST_DRIVER.txt in {file_name})")
    else:
        if kind == "cuda":
            from targets.lowering import cuda

            built, cuda_notes = cuda.build(mod, resolved)
            notes += cuda_notes
        else:
            records = None
            if tuning_records is not None:
                from targets.lowering import tuning

                records = tuning.find_records(Path(tuning_records), resolved, notes)
                if records is None:
                    notes.append(f"no tuning records for this target and TVM version under {tuning_records}; default schedules only")
            built = build_step.build(mod, resolved, records, per_image_batch=split.batch)
            if records is not None:
                tuned = sum(1 for rule in built.schedule_report.scheduled.values() if rule == "tuned")
                notes.append(f"tuning records {records}: {tuned} kernel(s) use a tuned schedule, the others the default rules")
        seconds["build"] = built.seconds
        seconds["export"] = build_step.export(built.executable, path, target.cross_compiler)
        artifact = _read_back_library(path, target, kind, resolved, notes)
        if kernel_library:
            kernel_file, kernel_list = _export_kernels(built, out_dir, library_name, target)

    report = built.schedule_report
    vpmaddwd_rules = _vpmaddwd_rules()
    byte_kernels = sum(1 for rule in report.scheduled.values() if rule in vpmaddwd_rules)
    if byte_kernels:
        # The vpmaddubsw rules need weights within +-64; 8-bit codes reach 127 (schedules/common.py).
        notes.append(
            f"{byte_kernels} int8 conv/matmul kernel(s) use AVX2 vpmaddwd on int16 operands (exact, no VNNI on "
            "this CPU); --quantize int8-w7 (7-bit weights) lets them use the exact vpmaddubsw kernels, "
            "about 1.3x faster, at roughly 2 dB of output SQNR"
        )
    if report.unscheduled:
        notes.append(
            f"{len(report.unscheduled)} of {len(report.unscheduled) + len(report.scheduled)} kernels have no "
            "schedule rule and keep TVM's naive loops (slow): " + ", ".join(report.unscheduled[:8])
            + (", ..." if len(report.unscheduled) > 8 else "")
        )
    return LoweringResult(
        library_file=file_name,
        tvm_target=tvm_target.export(resolved),
        seconds=seconds,
        scheduled=dict(report.scheduled),
        unscheduled=list(report.unscheduled),
        notes=notes,
        input_names=[value.name for value in importer.graph_inputs(model_proto)],
        output_names=[value.name for value in model_proto.graph.output],
        artifact=artifact,
        kernels=kernel_list,
        kernel_library_file=kernel_file,
        per_image_batch=split.batch,
    )


def _export_kernels(built, out_dir: Path, library_name: str, target: Target) -> tuple[str, list]:
    """``<library_name>.kernels.so`` and the kernel calls of ``main`` (targets/lowering/kernels.py)."""
    from targets.lowering import kernels

    name = f"{library_name}.kernels.so"
    kernels.export_kernels(built.executable, out_dir / name, target.cross_compiler)
    return name, kernels.kernel_calls(built.module, built.executable)


def _host_triple(target: Target, resolved) -> str | None:
    """The triple the library's host code is for: the spec's, else the TVM target's (host) mtriple."""
    if target.host_triple:
        return target.host_triple
    host = resolved.host if resolved.host is not None else resolved
    triple = host.attrs.get("mtriple") if host.attrs is not None else None
    return str(triple) if triple else None


def _read_back_library(path: Path, target: Target, kind: str, resolved, notes: list[str]) -> dict[str, Any]:
    """Check the exported ``.so``'s ELF machine (and CUDA fatbin arch); the format for the report."""
    artifact: dict[str, Any] = {"format": "elf" if path.suffix == ".so" else path.suffix.lstrip(".")}
    if path.suffix == ".so":
        artifact["machine"] = cross.check_elf(path, _host_triple(target, resolved))
    if kind == "cuda":
        fatbins = cross.fatbin_archs(path.read_bytes()) if path.suffix == ".so" else []
        artifact["cuda"] = [list(entry) for entry in fatbins]
        arch = str(resolved.attrs.get("arch", ""))
        if fatbins and not any(sm == arch or arch.startswith(sm) for _, sm in fatbins):
            from compiler.errors import LoweringError

            raise LoweringError(f"exported '{path.name}' holds CUDA code for {sorted({sm for _, sm in fatbins})}, expected {arch}")
        if not fatbins:
            notes.append("the library holds CUDA C source, no compiled kernels: the board's driver must compile it")
    return artifact


def _read_back_tar(path: Path) -> dict[str, Any]:
    """Members of the exported tar (the C sources and the driver note)."""
    import tarfile

    with tarfile.open(path) as tar:
        return {"format": "c-source-tar", "files": sorted(tar.getnames())}
