"""``lower_model``: ONNX model + Target -> compiled library in an output directory.

This module only sequences the steps (target resolution, import, build, export) and gathers
their timings and notes; each step lives in its own module.
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
from targets.lowering import importer, tvm_target
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
    """

    library_file: str
    tvm_target: dict[str, Any] | str
    seconds: dict[str, float]
    scheduled: dict[str, str]
    unscheduled: list[str]
    notes: list[str]
    input_names: list[str] = dataclasses.field(default_factory=list)
    output_names: list[str] = dataclasses.field(default_factory=list)


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
) -> LoweringResult:
    """Compile ``model_proto`` for ``target`` into ``out_dir/<library_name>.<so|tar>``.

    ``input_shapes`` gives the static shape of inputs with symbolic dims (others may be omitted).
    ``tuning_records`` is a records root (or one key directory) written by ``compile --tune``; the
    records matching this target and TVM version are applied, others are ignored with a note.
    Raises UnsupportedModelError for operators TVM cannot import, OptionError for bad shapes or
    target specs, LoweringError (one line naming the step) for anything TVM fails on.
    """
    out_dir = Path(out_dir)
    file_name = _library_name(target, library_name)
    seconds: dict[str, float] = {}

    with lowering_step("target resolution", target.name):
        resolved, notes = tvm_target.resolve(target)

    start = time.perf_counter()
    mod = importer.import_onnx(model_proto, input_shapes)
    seconds["import"] = time.perf_counter() - start

    records = None
    if tuning_records is not None:
        from targets.lowering import tuning

        records = tuning.find_records(Path(tuning_records), resolved, notes)
        if records is None:
            notes.append(f"no tuning records for this target and TVM version under {tuning_records}; default schedules only")
    built = build_step.build(mod, resolved, records)
    seconds["build"] = built.seconds

    out_dir.mkdir(parents=True, exist_ok=True)
    seconds["export"] = build_step.export(built.executable, out_dir / file_name, target.cross_compiler)

    report = built.schedule_report
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
    )
