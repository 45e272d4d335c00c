"""The public Python API: ``compile_model`` and ``load_artifact``.

``compile_model`` is what the ``compile`` command runs::

    load + validate (frontend) -> Pipeline of passes (each checked against ONNX Runtime)
    -> save model.opt.onnx -> lower through TVM -> check the artifact against ONNX Runtime
    -> accuracy on the eval split -> report.json / report.html -> rename the directory into place
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from compiler.artifact import Artifact, atomic_output_dir, check_output_dir, load_artifact, signature_of, write_manifest
from compiler.calibration_data import CalibrationSet, calibration_batches
from compiler.context import CompileContext, Feeds
from compiler.errors import OptionError, UnsupportedModelError, VerificationError
from compiler.frontend import FRONTEND_FACTS, load_and_prepare
from compiler.ir import Model, copy_model, count_parameters, file_sha256, save_model, to_proto
from compiler.pass_base import Fact, Pass, Tolerance
from compiler.pipeline import Pipeline, PassRecord
from compiler.progress import Progress
from compiler.verify import compare, ort_session, policy_for, random_feeds, run_onnxruntime

__all__ = ["compile_model", "estimate_model", "load_artifact", "CompileResult", "Artifact", "default_pipeline", "DEFAULT_VERIFY_MAX_PARAMS"]

#: ``verify="auto"`` checks every pass against ONNX Runtime when the model has at most this many
#: weights (each check is one ORT run per verification feed; cheap for small models).
DEFAULT_VERIFY_MAX_PARAMS = 30_000_000
#: At most this many calibration batches are used as verification feeds.
VERIFY_FEEDS = 2
#: Timed runs per kernel for ``profile_layers`` (medians; see compiler/layer_profile.py).
PROFILE_REPEATS = 20


@dataclasses.dataclass
class CompileResult:
    output_dir: Path
    report: dict[str, Any]

    def load(self) -> Artifact:
        return load_artifact(self.output_dir)


#: Where ``--tune`` writes records when no ``--tuning-records`` directory is given.
DEFAULT_RECORDS_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgekiln" / "tuning"
#: Records shipped with edgekiln (per target key); applied when the user names none.
SHIPPED_RECORDS_DIR = Path(__file__).resolve().parents[1] / "targets" / "records"


def default_pipeline(
    target,
    quantize: str | None = None,
    output_format: str = "integer",
    observer: str | None = None,
    prune: float | None = None,
    lowrank: str | None = None,
    rounding: str | None = None,
) -> str:
    """The pass spec used when the user gives none: canonicalize, then the compressions asked for
    in the order prune -> low-rank -> quantize (structure first, so quantization calibrates the
    final graph).

    ``quantize`` is ``None`` or ``"int8"``/``"int8-w7"``/``"int4"`` (:data:`QUANTIZE_WEIGHT_BITS`); ``output_format`` ``"integer"`` emits the
    integer-only (HAWQ-V3 dyadic) graph, ``"qdq"`` the QuantizeLinear/DequantizeLinear form that
    ONNX Runtime and TensorRT consume.
    """
    return "canonicalize" + _compression_spec(prune, lowrank) + _quantize_spec(quantize, output_format, observer, rounding)


def _mixed_precision_spec(budgets: Mapping[str, str] | None, max_drop: float | None, sensitivity: str | None = None) -> str:
    """``--budget size=2MB|latency=0.7x|bops=1G`` and ``--max-drop POINTS``: choose per-layer bit
    widths by the ILP of ``mixed-precision`` before ``quantize``; ``--sensitivity`` picks its
    estimator (perturbation or hessian)."""
    if not budgets and max_drop is None:
        if sensitivity is not None:
            raise OptionError("--sensitivity picks the estimator of mixed precision: add --budget or --max-drop")
        return ""
    options = []
    for key, value in (budgets or {}).items():
        if key not in ("size", "latency", "bops"):
            raise OptionError(f"--budget {key}={value}: expected size=..., latency=... or bops=...")
        options.append(f"{key}={value}")
    if max_drop is not None:
        options.append(f"max_drop={max_drop}")
    if sensitivity is not None:
        if sensitivity not in ("perturbation", "hessian"):
            raise OptionError(f"--sensitivity {sensitivity}: expected perturbation or hessian")
        options.append(f"sensitivity={sensitivity}")
    return ",mixed-precision{" + ",".join(options) + "}"


def _compression_spec(prune: float | None, lowrank: str | None) -> str:
    """``--prune RATIO``: cut RATIO of the target's estimated latency by removing channels, with
    least-squares reconstruction. ``--lowrank auto|ENERGY``: factorize Gemm/MatMul/Conv where the
    cost model predicts a speed-up (``auto``) or keeping ENERGY of the singular-value energy."""
    spec = ""
    if prune is not None:
        if not 0.0 < prune < 1.0:
            raise OptionError(f"--prune {prune}: expected a ratio between 0 and 1 (e.g. 0.3)")
        spec += f",prune-channels{{ratio={prune},mode=latency}}"
    if lowrank is not None:
        if lowrank == "auto":
            spec += ",factorize-conv,factorize-gemm{data_aware=true}"
        else:
            try:
                energy = float(lowrank)
            except ValueError:
                raise OptionError(f"--lowrank {lowrank}: expected 'auto' or an energy fraction such as 0.99") from None
            if not 0.0 < energy <= 1.0:
                raise OptionError(f"--lowrank {lowrank}: the energy fraction must be in (0, 1]")
            spec += f",factorize-conv{{energy={energy}}},factorize-gemm{{energy={energy},data_aware=true}}"
    return spec


#: ``--quantize`` choices -> weight bits. ``int8-w7`` keeps 8-bit activations with 7-bit weight codes
#: (ONNX Runtime's ``reduce_range``): on x86 CPUs without VNNI the int8 convs then run on the exact
#: ``vpmaddubsw`` kernel (schedules.conv2d_int8.Conv2dInt8AVX2Maddubs), for about one bit of weight
#: precision.
QUANTIZE_WEIGHT_BITS = {"int8": 8, "int8-w7": 7, "int4": 4}

#: ``per_image`` values (targets/lowering/batch_split.py ``MODES``; named here so that checking the
#: option does not import TVM, which a compile with ``lower=False`` never needs).
PER_IMAGE_MODES = ("auto", "on", "off")


def _quantize_spec(quantize: str | None, output_format: str, observer: str | None, rounding: str | None = None) -> str:
    if quantize is None:
        for flag, value in (("--observer", observer), ("--weight-rounding", rounding)):
            if value:
                raise OptionError(f"{flag} {value} is a quantization option: add --quantize int8 (or int4)")
        return ""
    bits = QUANTIZE_WEIGHT_BITS.get(quantize)
    if bits is None:
        raise OptionError(f"--quantize {quantize}: expected one of {', '.join(QUANTIZE_WEIGHT_BITS)}")
    if output_format not in ("integer", "qdq"):
        raise OptionError(f"--format {output_format}: expected integer or qdq")
    name = "quantize" if output_format == "integer" else "export-qdq"
    options = [f"bits={bits}"] if bits != 8 else []
    if observer:
        options.append(f"observer={observer}")
    if rounding and rounding != "nearest":
        if rounding != "gptq":
            raise OptionError(f"--weight-rounding {rounding}: expected nearest or gptq")
        if output_format != "integer":
            raise OptionError("--weight-rounding gptq applies to the integer-only form (--format integer)")
        options.append(f"rounding={rounding}")
    return f",{name}" + ("{" + ",".join(options) + "}" if options else "")


def _sidecar(model_path: Path, kind: str) -> Path | None:
    candidate = model_path.with_name(f"{model_path.stem}.{kind}.npz")
    return candidate if candidate.is_file() else None


def _calibration_feeds(source, model: Model, shapes: dict[str, tuple[int, ...]]) -> CalibrationSet:
    """Batches of the compiled input shapes from any calibration source (compiler.calibration_data)."""
    dtypes = {v.name: v.dtype.numpy() for v in model.graph.inputs if v.name in shapes}
    return calibration_batches(source, shapes, dtypes)


class _StageChecker:
    """Per-pass numeric check: each pass's output vs the previous stage's, on the same feeds.

    A pass is judged by its declared tolerance class; the first pass that diverges stops the
    compilation with a VerificationError naming it.
    """

    def __init__(self, feeds: list[Feeds], reference: list[list[np.ndarray]], passes_before: Callable[[], list[str]]):
        self.feeds = feeds
        self.original = reference
        self.previous = reference
        self.passes_before = passes_before

    def __call__(self, p: Pass, record: PassRecord, model: Model) -> dict[str, Any] | None:
        if not record.modified:
            return {"policy": policy_for(p.tolerance).name, "skipped": "model not modified"}
        session = ort_session(model)
        outputs = [session.run(None, feeds) for feeds in self.feeds]
        flat = lambda runs: [o for run in runs for o in run]  # noqa: E731
        check = compare(flat(outputs), flat(self.previous), policy_for(p.tolerance))
        check["vs_original_max_abs"] = compare(flat(outputs), flat(self.original), "lossy")["max_abs"]
        if not check["passed"]:
            raise VerificationError(
                f"pass '{p.name}' changed the model's outputs beyond the {check['policy']} tolerance "
                f"(max abs {check.get('max_abs', float('nan')):.3g}; passes before it: "
                f"{', '.join(self.passes_before()) or 'none'})"
            )
        self.previous = outputs
        return check


def _time_callable(fn: Callable[[], Any], budget_s: float = 2.0, min_runs: int = 3, max_runs: int = 20) -> dict[str, Any]:
    """Median wall time of ``fn`` after one warm-up, with as many runs as fit in ``budget_s``."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    runs = int(min(max_runs, max(min_runs, budget_s / max(first, 1e-6))))
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return {"median_ms": float(np.median(samples) * 1e3), "min_ms": float(np.min(samples) * 1e3), "runs": runs}


def _environment() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in ("edgekiln", "onnx", "onnx-ir", "onnxscript", "onnxruntime", "apache-tvm", "apache-tvm-ffi", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


def _model_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    return {key: int(after[key]) - int(before[key]) for key in ("nodes", "params", "macs")}


def compile_model(
    model: str | os.PathLike,
    target: str = "cpu",
    output: str | os.PathLike | None = None,
    *,
    passes: str | Pipeline | Sequence[Pass] | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    calibration: str | os.PathLike | Mapping[str, np.ndarray] | Iterable[Feeds] | None = None,
    eval_data: str | os.PathLike | None = None,
    verify: bool | str = "auto",
    lower: bool = True,
    measure: bool = True,
    force: bool = False,
    quantize: str | None = None,
    output_format: str = "integer",
    observer: str | None = None,
    rounding: str | None = None,
    prune: float | None = None,
    lowrank: str | None = None,
    budgets: Mapping[str, str] | None = None,
    max_drop: float | None = None,
    sensitivity: str | None = None,
    tune: int = 0,
    tuning_records: str | os.PathLike | None = None,
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
    progress: bool | None = None,
    rpc_tracker: str | None = None,
    rpc_key: str | None = None,
    rpc_timeout: float | None = None,
    profile_layers: bool = False,
    per_image: str = "auto",
) -> CompileResult:
    """Compile an ONNX model for ``target`` into the output directory ``output``.

    Args:
        model: path of the .onnx file.
        target: a target name (``compile --list-targets``) or a ``targets.Target``.
        output: output directory; default ``./<model-stem>-<target>/``.
        passes: pipeline spec text, a ``Pipeline`` or a list of ``Pass`` instances; default
            :func:`default_pipeline`.
        input_shapes: static shapes for inputs with symbolic dims, e.g. ``{"x": (1, 3, 224, 224)}``.
        calibration: representative inputs: an .npz of stacked samples keyed by input name, a dict
            of such arrays, or an iterable of feed dicts. Default: ``<stem>.calib.npz`` beside the
            model if present, else seeded random inputs (verification only).
        eval_data: .npz with inputs and ``labels`` for the accuracy report (default: the
            ``<stem>.eval.npz`` sidecar if present).
        verify: check every pass and the artifact against ONNX Runtime; ``"auto"`` = when the model
            has at most :data:`DEFAULT_VERIFY_MAX_PARAMS` weights. The artifact is always checked.
        lower: build the TVM library (False: ONNX passes and report only).
        measure: time the artifact and ONNX Runtime on this machine for the report.
        force: replace an existing output directory.
        quantize: ``"int8"`` (or ``"int8-w7"`` / ``"int4"`` weights, :data:`QUANTIZE_WEIGHT_BITS`)
            appends integer-only quantization to the
            pipeline; needs calibration data. With explicit ``passes`` it is appended to them.
        output_format: ``"integer"`` (integer-only graph) or ``"qdq"`` (Q/DQ pairs for ORT/TensorRT).
        observer: activation range observer for quantization: minmax, percentile or mse.
        rounding: weight rounding for quantization: ``"nearest"`` (default) or ``"gptq"`` (codes
            chosen per layer to minimise its output error on the calibration data).
        prune: remove channels until this fraction of the target's estimated latency is saved.
        lowrank: ``"auto"`` (factorize where the cost model predicts a speed-up) or an energy
            fraction such as ``"0.99"``.
        budgets: mixed precision: ``{"size": "2MB", "latency": "0.7x", "bops": "1G"}`` (any
            subset); per-layer bits are chosen by an ILP against the target's cost model.
        max_drop: mixed precision: allowed top-1 agreement drop vs fp32 in points; layers are
            raised to 8 bits / float until it holds.
        sensitivity: mixed precision's per-layer sensitivity estimator: ``"perturbation"``
            (default: output change with one layer quantized) or ``"hessian"`` (Hutchinson Hessian
            trace x squared quantization error, run on the graph as torch ops).
        tune: MetaSchedule trials per task to run before building (0: no tuning); records go to
            ``tuning_records`` or :data:`DEFAULT_RECORDS_DIR` and are used by this build.
        tuning_records: a records directory to apply (tvmc's --tuning-records); default: records
            shipped with edgekiln for this target, if any.
        progress: show a progress bar on stderr (default: when stderr is a terminal).
        rpc_tracker, rpc_key: ``"HOST:PORT"`` of a TVM RPC tracker and the device key of a board
            registered there: after building, the library runs on the board, is checked against
            ONNX Runtime and timed there (``run.artifact_rpc`` in the report). ``rpc_timeout``:
            seconds to wait for a free server (default 60).
        profile_layers: with pruning / low-rank passes, lower the fp32 model before the first and
            after the last of them and time every kernel (here, or on the board when
            ``rpc_tracker`` is given), to fill the measured column of the report's per-layer
            compression table (:mod:`compiler.layer_profile`). Costs two extra builds.
        per_image: ``"auto"`` (default), ``"on"`` or ``"off"``: run a batched model image by image
            inside the artifact (one batch-1 network called N times) where the graph provably acts
            image by image and, for ``auto``, the target's cache model predicts less memory
            traffic (targets/lowering/batch_split.py). The report's lowering notes say which.

    Returns:
        CompileResult with the output directory and the report dict.

    Raises:
        EdgekilnError (and subclasses): every user-caused problem, with a one-line message.
    """
    from targets import get_target

    started = time.perf_counter()
    model_path = Path(model)
    target_obj = get_target(target)
    out_dir = Path(output) if output is not None else Path.cwd() / f"{model_path.stem}-{target_obj.name}"
    check_output_dir(out_dir, force)
    pipeline = _build_pipeline(target_obj, passes, quantize, output_format, observer, prune, lowrank, budgets, max_drop,
                               sensitivity, rounding)
    if tune < 0:
        raise OptionError(f"--tune {tune}: the number of trials per task must be positive")
    if per_image not in PER_IMAGE_MODES:
        raise OptionError(f"--per-image {per_image}: expected one of {', '.join(PER_IMAGE_MODES)}")
    if tuning_records is not None and not Path(tuning_records).is_dir() and not tune:
        raise OptionError(f"--tuning-records {tuning_records}: no such directory")
    remote = None
    if rpc_tracker is not None or rpc_key is not None:
        from targets.lowering.rpc import device_for_compile

        remote = device_for_compile(target_obj, rpc_tracker, rpc_key, rpc_timeout, lower)  # fails before any work

    bar = Progress(total=7 if profile_layers else 6, enabled=progress)
    bar.stage("load")
    ir_model, shapes = load_and_prepare(model_path, input_shapes)
    original = copy_model(ir_model)
    calib_source = calibration if calibration is not None else _sidecar(model_path, "calib")
    calib_set = _calibration_feeds(calib_source, ir_model, shapes)
    calib_feeds = calib_set.batches
    eval_path = Path(eval_data) if eval_data is not None else _sidecar(model_path, "eval")
    if eval_path is not None and not eval_path.is_file():
        raise OptionError(f"--eval {eval_path}: no such file")
    if not calib_feeds and any(p.name in ("quantize", "export-qdq") for p in pipeline):
        raise OptionError(
            f"quantization needs calibration data: give --calib FILE.npz (inputs keyed by name) "
            f"or put {model_path.stem}.calib.npz beside {model_path}"
        )
    verify_feeds = calib_feeds[:VERIFY_FEEDS] or [random_feeds(ir_model, shapes, seed=seed)]
    params = count_parameters(ir_model)
    do_verify = (params <= DEFAULT_VERIFY_MAX_PARAMS) if verify == "auto" else bool(verify)

    from targets.cost_model import RooflineCostModel
    from compiler.report import build_report, model_summary, render_html, write_json

    cost_model = RooflineCostModel(target_obj)
    ctx = CompileContext(
        target=target_obj,
        cost_model=cost_model,
        calibration=calib_feeds,
        options={"seed": seed, **(options or {})},
        input_shapes=shapes,
    )
    if lower:
        from targets.lowering.importer import check_supported

        check_supported(to_proto(ir_model))  # fail before any work on an operator TVM cannot import
    reference = _reference_outputs(original, verify_feeds, model_path)
    summary_before = model_summary(original, cost_model)

    # -- passes --------------------------------------------------------------------------------
    bar.stage("passes")
    ran: list[str] = []
    checker = _StageChecker(verify_feeds, reference, lambda: list(ran)) if do_verify else None
    summaries = [summary_before]

    snapshots = _CompressionSnapshots(pipeline, ir_model) if profile_layers else None

    def after_pass(p: Pass, record: PassRecord, current: Model):
        check = checker(p, record, current) if checker else None
        ran.append(p.name)
        summaries.append(model_summary(current, cost_model) if record.modified else summaries[-1])
        if snapshots is not None:
            snapshots.after(len(ran) - 1, current)
        return check

    ir_model, records = pipeline.run(ir_model, ctx, initial_facts=FRONTEND_FACTS, after_pass=after_pass, progress=bar.detail)
    summary_after = summaries[-1]
    lossy = any(p.tolerance == Tolerance.LOSSY for p, r in zip(pipeline, records) if r.modified)
    integer_records = [r for p, r in zip(pipeline, records) if r.modified and Fact.INTEGER_ONLY in p.provides]
    islands = sum(int(r.stats.get("islands", 0)) for r in integer_records)
    # Bit-exactness across runtimes is claimed only for graphs without float islands.
    integer_only = bool(integer_records) and islands == 0
    integer_check: dict[str, Any] | None = None

    quantization = _quantization_summary(original, ir_model, verify_feeds) if integer_records else None

    with atomic_output_dir(out_dir, force) as tmp:
        save_model(ir_model, tmp / "model.opt.onnx")
        (tmp / "pipeline.txt").write_text(str(pipeline) + "\n")
        optimized_proto = to_proto(ir_model)

        # -- lowering ----------------------------------------------------------------------------
        bar.stage("lower")
        lowering: dict[str, Any] | None = None
        library = None
        lib = device_lib = device_check = None
        result = None
        skipped_reason: str | None = None
        artifact_check = None
        timings: dict[str, Any] = {}
        if lower:
            from targets.lowering import load_library, lower_model
            from targets.lowering.cross import ToolchainMissingError

            records_root = _tuning_records(optimized_proto, target_obj, shapes, tune, tuning_records, timings, per_image)
            try:
                result = lower_model(optimized_proto, target_obj, shapes, tmp, tuning_records=records_root,
                                     per_image=per_image)
            except ToolchainMissingError as exc:
                # DESIGN: a missing toolchain still gives the optimized model, the cost model and
                # the report; the status says what to install.
                result = None
                skipped_reason = str(exc)
        if lower and result is not None:
            library = result.library_file
            lowering = {
                "library": result.library_file,
                "tvm_target": result.tvm_target,
                "scheduled": result.scheduled,
                "unscheduled": result.unscheduled,
                "notes": result.notes,
                "artifact": result.artifact,
                "per_image_batch": result.per_image_batch,
            }
            timings["lowering_s"] = result.seconds
            integer_model = optimized_proto if integer_only else None
            if target_obj.runs_locally:
                bar.stage("verify")
                lib = load_library(tmp / library, list(shapes))
                artifact_check, integer_check = _check_artifact(lib, verify_feeds, reference, lossy, integer_model)
                if measure:
                    feeds0 = verify_feeds[0]
                    timings["artifact"] = _time_callable(lambda: lib.run(feeds0))
                    ref_session = ort_session(original, optimize=True)
                    timings["onnxruntime_fp32"] = _time_callable(lambda: ref_session.run(None, feeds0))
            if remote is not None:  # the same checks on the board, and its latency measured there
                bar.stage("device")
                from targets.lowering.rpc import RemoteLibrary

                device_lib = RemoteLibrary(remote, tmp / library, list(shapes))
                device_check, device_integer = _check_artifact(device_lib, verify_feeds, reference, lossy, integer_model, remote.describe())
                artifact_check, integer_check = artifact_check or device_check, integer_check or device_integer
                if measure:
                    timings["artifact_rpc"] = device_lib.time(verify_feeds[0])

        compression_profile = None
        if snapshots is not None:
            bar.stage("profile")
            compression_profile = snapshots.profile(target_obj, records, remote, lower)

        # -- accuracy ------------------------------------------------------------------------------
        bar.stage("accuracy")
        accuracy = _accuracy(eval_path, shapes, original, ir_model, lib or device_lib,
                             "artifact_tvm" if lib is not None else "artifact_tvm_rpc")
        if device_lib is not None:
            device_lib.close()  # free the board for the next client now, not at garbage collection

        summary = {
            "before": _summary_numbers(summary_before),
            "after": _summary_numbers(summary_after),
            "estimated_latency_ms": {
                "before": summary_before.get("estimated_ms"),
                "after": summary_after.get("estimated_ms"),
                "source": "roofline",
            },
            "verification": {
                "feeds": "calibration" if calib_feeds else "random (seeded)",
                "num_feeds": len(verify_feeds),
                "per_pass": do_verify,
                "artifact_vs_onnxruntime": artifact_check,
                **({"artifact_on_device_vs_onnxruntime": device_check} if device_check else {}),
                "integer_bit_exact": integer_check
                if integer_check or not integer_records
                else {"passed": None, "reason": _unchecked_integer_reason(islands, target_obj, result, remote)},
            },
            "calibration": {"samples": calib_set.samples, "batches": len(calib_feeds), "note": calib_set.note}
            if calib_feeds else None,
            "accuracy": accuracy,
            "quantization": quantization,
            "unscheduled_functions": lowering["unscheduled"] if lowering else None,
            **({"compression_profile": compression_profile} if compression_profile is not None else {}),
        }
        pass_dicts = []
        for index, record in enumerate(records):
            entry = dataclasses.asdict(record)
            entry.pop("seconds")
            entry["delta"] = _model_delta(_summary_numbers(summaries[index]), _summary_numbers(summaries[index + 1]))
            pass_dicts.append(entry)
            timings.setdefault("passes_s", {})[f"{index:02d}-{record.name}"] = record.seconds
        timings["total_s"] = time.perf_counter() - started
        report = build_report(
            model_path=str(model_path),
            model_sha256=file_sha256(model_path),
            target_json=target_obj.to_json(),
            pipeline_spec=str(pipeline),
            pass_records=pass_dicts,
            summary=summary,
            environment=_environment(),
            status="ok" if lower and result is not None else "lowering-skipped",
            lowering=lowering if lowering is not None else {"skipped": skipped_reason or "--no-lower"},
            timing=timings,
            layers_before=summary_before,
            layers_after=summary_after,
        )
        write_json(report, tmp / "report.json")
        (tmp / "report.html").write_text(render_html(report))
        write_manifest(
            tmp,
            signature=signature_of(ir_model),
            library=library,
            target=target_obj.to_json(),
            onnx_file="model.opt.onnx",
        )
        bar.stage("done")
    bar.close()
    return CompileResult(out_dir, report)


def _quantization_summary(original: Model, quantized: Model, feeds_list: list[Feeds]) -> dict[str, Any]:
    """Per-layer SQNR (worst first) and output agreement with fp32, for the report."""
    from compiler.quant_report import layer_sqnr, output_agreement

    rows = layer_sqnr(original, quantized, feeds_list)
    for row in rows:  # JSON has no inf: an exact layer is reported as null / "exact"
        if row["sqnr_db"] == float("inf"):
            row["sqnr_db"] = None
    agreement = output_agreement(original, quantized, feeds_list)
    agreement.pop("outputs", None)
    return {"layers": rows, "output_agreement": agreement, "feeds": len(feeds_list)}


def _tuning_records(model_proto, target, shapes, tune: int, records, timings: dict[str, Any],
                    per_image: str = "auto") -> Path | None:
    """Run ``--tune`` if asked and return the records root the build should apply (or None)."""
    if tune:
        from targets.lowering.tuning import print_progress
        from targets.lowering.tuning import tune as run_tuning

        root = Path(records) if records is not None else DEFAULT_RECORDS_DIR
        summary = run_tuning(model_proto, target, shapes, root, tune, progress=print_progress, per_image=per_image)
        timings["tuning_s"] = summary.seconds
        return root
    if records is not None:
        return Path(records)
    return SHIPPED_RECORDS_DIR if SHIPPED_RECORDS_DIR.is_dir() else None


def _unchecked_integer_reason(islands: int, target, lowered, remote) -> str:
    """Why an integer-only graph's bit-exactness across runtimes was not checked (report text)."""
    if islands:
        return f"not claimed: {islands} float island(s) in the graph"
    if lowered is None:
        return "not checked: the model was not lowered to an artifact"
    if not target.runs_locally and remote is None:
        return (f"not checked: the {target.name} artifact does not run on this machine; "
                "compile with --rpc-tracker and --rpc-key to check it on the board")
    return "not checked"


def _check_artifact(lib, feeds_list: list[Feeds], reference: list[list[np.ndarray]], lossy: bool,
                    integer_model=None, where: str | None = None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Run the compiled library ``lib`` (here, or on a board: anything with ``run(feeds)``) on the
    verification feeds and compare with ONNX Runtime on the original model; with ``integer_model``
    also the bit-exact check. Raises VerificationError (naming ``where``) on a difference."""
    outputs = [lib.run(feeds) for feeds in feeds_list]
    flat = lambda runs: [o for run in runs for o in run]  # noqa: E731
    check = compare(flat(outputs), flat(reference), "lossy" if lossy else "tvm-backend")
    if where:
        check["where"] = where
    if not check["passed"]:
        raise VerificationError(
            f"the compiled artifact{' on ' + where if where else ''} differs from ONNX Runtime on the original model "
            f"beyond the {check['policy']} tolerance (max abs {check['max_abs']:.3g})"
        )
    integer = _integer_exactness(integer_model, feeds_list, outputs, where) if integer_model is not None else None
    return check, integer


def _integer_exactness(model_proto, feeds_list: list[Feeds], artifact_outputs: list[list[np.ndarray]],
                       where: str | None = None) -> dict[str, Any]:
    """Integer-only graphs must give bit-identical outputs in the numpy reference interpreter,
    ONNX Runtime and the TVM artifact; raise VerificationError naming the pair that differs."""
    from compiler.reference import run_reference

    session = ort_session(model_proto)
    result: dict[str, Any] = {"feeds": len(feeds_list), "reference_vs_onnxruntime": True, "artifact_vs_onnxruntime": True}
    for feeds, tvm_out in zip(feeds_list, artifact_outputs):
        ort_out = session.run(None, feeds)
        ref_out = run_reference(model_proto, feeds)
        pairs = {"reference_vs_onnxruntime": ref_out, "artifact_vs_onnxruntime": tvm_out}
        for key, got in pairs.items():
            if not all(np.array_equal(a, b) for a, b in zip(got, ort_out)):
                raise VerificationError(
                    f"integer-only graph is not bit-exact: {key.replace('_vs_', ' vs ').replace('_', ' ')} "
                    f"differ{' on ' + where if where and key.startswith('artifact') else ''} "
                    f"(max abs {compare(got, ort_out, 'lossy')['max_abs']:.3g})"
                )
    if where:
        result["where"] = where
    result["passed"] = True
    return result


def _reference_outputs(model: Model, feeds_list: list[Feeds], model_path: Path) -> list[list[np.ndarray]]:
    """ONNX Runtime's outputs of the original model: the reference every check compares with."""
    try:
        session = ort_session(model)
        return [session.run(None, feeds) for feeds in feeds_list]
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedModelError(f"{model_path}: ONNX Runtime cannot run the model: {first}") from None


def _summary_numbers(summary: dict[str, Any]) -> dict[str, Any]:
    return {key: summary[key] for key in ("nodes", "params", "macs", "weight_bytes")}


def _accuracy(eval_path: Path | None, shapes, original: Model, optimized: Model, lib,
              lib_label: str = "artifact_tvm") -> dict[str, Any] | None:
    """Top-1 on the eval split for the original (ORT), optimized (ORT) and compiled (TVM) model
    (``lib``: run here, or on a board for ``artifact_tvm_rpc``)."""
    if eval_path is None:
        return None
    from compiler.accuracy import evaluate_classification, load_npz_feeds

    names = list(shapes)
    arrays, labels = load_npz_feeds(eval_path, names)
    if labels is None:
        raise OptionError(f"--eval {eval_path}: needs a 'labels' array for the accuracy report")
    batch = shapes[names[0]][0]
    runs: dict[str, Callable] = {
        "original_onnxruntime": ort_session(original).run,
        "optimized_onnxruntime": ort_session(optimized).run,
    }
    result: dict[str, Any] = {"data": str(eval_path), "metric": "top1"}
    for key, session_run in runs.items():
        result[key] = evaluate_classification(lambda f, r=session_run: r(None, f), arrays, labels, batch, names)
    if lib is not None:
        result[lib_label] = evaluate_classification(lib.run, arrays, labels, batch, names)
    return result


class _CompressionSnapshots:
    """Copies of the model before the first and after the last compression pass of ``pipeline``
    (for ``profile_layers``); :meth:`profile` times both and fills the rows' measured columns."""

    def __init__(self, pipeline: Pipeline, model: Model):
        from compiler.layer_profile import COMPRESSION_PASSES

        positions = [i for i, p in enumerate(pipeline) if p.name in COMPRESSION_PASSES]
        self.first, self.last = (positions[0], positions[-1]) if positions else (None, None)
        self.before = copy_model(model) if self.first == 0 else None
        self.after_model: Model | None = None

    def after(self, index: int, model: Model) -> None:
        if self.first is not None and index == self.first - 1:
            self.before = copy_model(model)
        if index == self.last:
            self.after_model = copy_model(model)

    def profile(self, target, records: Sequence[PassRecord], remote, lower: bool) -> dict[str, Any]:
        from compiler.layer_profile import attach_measured, profile_models, profile_summary

        if self.before is None or self.after_model is None:
            return {"skipped": "no pruning or low-rank pass in the pipeline"}
        if not lower:
            return {"skipped": "--no-lower: nothing is built, so nothing is timed"}
        if not target.runs_locally and remote is None:
            return {"skipped": f"target '{target.name}' does not run here; give --rpc-tracker/--rpc-key to time it on the board"}
        repeats = PROFILE_REPEATS
        before, after = profile_models(self.before, self.after_model, target, repeats, rpc=remote)
        filled = attach_measured([(r.name, r.stats) for r in records], before, after)
        where = remote.describe() if remote is not None else "this machine"
        return profile_summary(before, after, repeats, where, filled)


def _build_pipeline(target, passes, quantize, output_format, observer, prune, lowrank, budgets=None, max_drop=None,
                    sensitivity=None, rounding=None) -> Pipeline:
    """The user's passes (or the default pipeline) with the compressions asked for appended."""
    mixed = _mixed_precision_spec(budgets, max_drop, sensitivity)
    if mixed and quantize is None:
        raise OptionError("--budget/--max-drop choose bit widths for quantization: add --quantize int8")
    if passes is None and not mixed:
        return Pipeline.parse(default_pipeline(target, quantize, output_format, observer, prune, lowrank, rounding))
    pipeline = _as_pipeline(passes if passes is not None else "canonicalize")
    extra = (_compression_spec(prune, lowrank) + mixed + _quantize_spec(quantize, output_format, observer, rounding)).lstrip(",")
    return Pipeline([*pipeline, *Pipeline.parse(extra)]) if extra else pipeline


def estimate_model(
    model: str | os.PathLike,
    target: str = "cpu",
    *,
    passes: str | Pipeline | Sequence[Pass] | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    calibration=None,
    quantize: str | None = None,
    output_format: str = "integer",
    observer: str | None = None,
    prune: float | None = None,
    lowrank: str | None = None,
    seed: int = 0,
    rounding: str | None = None,
) -> list[dict[str, Any]]:
    """Run the passes (no verification, no TVM) and return the target's per-layer cost estimate
    (``targets.cost_model.estimate_table``): what ``compile --estimate-only`` prints."""
    from targets import get_target
    from targets.cost_model import RooflineCostModel, estimate_table

    model_path = Path(model)
    target_obj = get_target(target)
    pipeline = _build_pipeline(target_obj, passes, quantize, output_format, observer, prune, lowrank, rounding=rounding)
    ir_model, shapes = load_and_prepare(model_path, input_shapes)
    calib_source = calibration if calibration is not None else _sidecar(model_path, "calib")
    ctx = CompileContext(
        target=target_obj,
        cost_model=RooflineCostModel(target_obj),
        calibration=_calibration_feeds(calib_source, ir_model, shapes).batches,
        options={"seed": seed},
        input_shapes=shapes,
    )
    ir_model, _ = pipeline.run(ir_model, ctx, initial_facts=FRONTEND_FACTS)
    return estimate_table(ir_model, target_obj)


def _as_pipeline(passes) -> Pipeline:
    if isinstance(passes, Pipeline):
        return passes
    if isinstance(passes, str):
        return Pipeline.parse(passes)
    return Pipeline(passes)
