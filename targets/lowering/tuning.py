"""MetaSchedule tuning that is reused: tune once into a keyed record directory, apply it in builds.

    summary = tune(model_proto, get_target("cpu"), {"x": (1, 3, 224, 224)}, Path("records"), 32,
                   progress=print_progress)
    key_dir = find_records(Path("records"), resolved_tvm_target, notes)      # None if no match
    mod, applied = apply_records(mod, resolved_tvm_target, key_dir)          # before default schedules

Records layout (one directory per key, so records made by another TVM / tvm-ffi build or for
another CPU are never applied by accident -- they replay schedule traces whose meaning depends
on both)::

    records_dir/<target-hash>-tvm<tvm version>-ffi<tvm-ffi version>/
        database_workload.json        MetaSchedule JSONDatabase: one line per tuned PrimFunc
        database_tuning_record.json   one line per measured schedule (appended as tuning runs)
        meta.json                     target JSON, versions, and one entry per tuning run
        logs/                         MetaSchedule's own per-task logs (not needed to apply)

:func:`prune_records` turns such a set into the small one shipped in targets/records/ (only the
workloads where tuning beat the default schedules, one record each; meta.json keeps the runs).

Why the module is prepared here exactly like build.py prepares it: the database is keyed by the
structural hash of each fused PrimFunc (attributes included), so a function is found only if
tuning saw the very same function that the build schedules. :func:`prepare_for_tuning` runs
build.py's steps (DecomposeOpsForInference, CanonicalizeBindings, zero pipeline) plus
``AttachAttrLayoutFreeBuffers``, which :func:`apply_records` and
``schedules.apply_default_schedules`` also run, so constant weights may be re-laid-out by the
tuned schedule and folded at compile time (``SplitLayoutRewritePreproc`` + ``FoldConstant`` in
``apply_default_schedules``).

Tuning starts from our default schedules: before the search, each task's PrimFunc is scheduled by
the default rule that build.py would use, measured with the same builder/runner as the search,
and committed to the database as a tuning record. MetaSchedule cannot take a hand schedule as a
design space, but the database always answers a query with the fastest record of a function, so
the database never holds anything slower than what a build without records gets. The search itself
does not see the seeds (see :func:`_search_view`): MetaSchedule cannot evolve a hand schedule (it
has no sampling decisions to mutate), and replaying one that packs weights through its
postprocessors aborts the task scheduler.

Blockers handled (shared/research/tvm-0.27.md §0): B3 via :mod:`targets.lowering.ms_worker`
(x86/ARM tensor intrinsics only, also as the builder's worker initializer); ``num-cores`` is
required by MetaSchedule and added for tuning when a target lacks it; B1 (tvm-ffi 0.1.15
segfaults) is excluded by the pin in pyproject.toml and caught by the smoke test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx
import tvm
from tvm import relax

from compiler.errors import OptionError
from targets.lowering import importer, ms_worker, tvm_target
from targets.lowering.errors import lowering_step
from targets.registry import Target

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
META_FILE = "meta.json"

# Tasks whose name contains one of these are tuned. Pools, reductions and elementwise functions
# are memory bound: the default rules already do what tuning would find, and MetaSchedule gives
# every selected task the full trial budget.
DEFAULT_OP_NAMES = ("conv2d", "matmul", "dense")

# A measurement that failed to build or run: MetaSchedule stores run_secs = 1e10 for those.
_INVALID_SECONDS = 1e9


@dataclasses.dataclass
class TuningProgress:
    """One progress event: sent after the default schedules were measured (``trials_in_batch`` is
    0, ``phase == "defaults"``) and after every measured batch of the search (``phase == "search"``).

    Latencies are in microseconds (None when nothing valid was measured yet).
    """

    phase: str
    task_name: str
    task_index: int
    n_tasks: int
    task_trials: int
    trials_per_task: int
    trials_in_batch: int
    total_trials: int
    total_budget: int
    batch_best_us: float | None
    task_best_us: float | None
    default_us: float | None
    elapsed_s: float


@dataclasses.dataclass
class TaskSummary:
    """One tuned task: trials measured in this run, our default schedule's latency and the best
    latency now in the database (microseconds; None if never measured)."""

    name: str
    trials: int
    default_us: float | None
    best_us: float | None


@dataclasses.dataclass
class TuningSummary:
    """What :func:`tune` did.

    Attributes:
        records_path: the key directory holding the database (pass it to :func:`apply_records`).
        tasks: tuned tasks in MetaSchedule's order.
        skipped: fused functions not tuned (not matching ``op_names``).
        trials: candidates measured by the search in this run (the default-schedule seeds excluded).
        seconds: wall time of the whole call.
        interrupted: True if Ctrl-C / a KeyboardInterrupt from ``progress`` stopped the search;
            every record measured before that is in the database.
        notes: decisions taken, in words (num-cores added, tasks already seeded...).
    """

    records_path: Path
    tasks: list[TaskSummary]
    skipped: list[str]
    trials: int
    seconds: float
    interrupted: bool
    notes: list[str]


# ----------------------------------------------------------------------------------------------
# Keys


def _target_json(resolved: tvm.target.Target) -> dict[str, Any]:
    return tvm_target.export(resolved)


def record_key(resolved: tvm.target.Target) -> str:
    """``<target-hash>-tvm<version>-ffi<version>`` for a resolved TVM target.

    The hash covers the whole exported target (kind, mcpu, features, num-cores...): a schedule
    tuned for znver4 with 2 cores is not the best (or even valid, with tensor intrinsics) on
    another CPU.
    """
    import tvm_ffi

    canonical = json.dumps(_target_json(resolved), sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    return f"{digest}-tvm{tvm.__version__}-ffi{tvm_ffi.__version__}"


def _resolve(target: Target | tvm.target.Target) -> tvm.target.Target:
    if isinstance(target, tvm.target.Target):
        return target
    resolved, _ = tvm_target.resolve(target)
    return resolved


def find_records(
    records_root: Path, target: Target | tvm.target.Target, notes: list[str] | None = None
) -> Path | None:
    """The key directory under ``records_root`` for ``target`` and this TVM / tvm-ffi, or None.

    ``records_root`` may also be a key directory itself (a user passing one record set). Record
    sets for other targets or versions are ignored; when some exist but none matches, a note
    saying why is appended to ``notes`` (records made by another TVM build replay traces that may
    not mean the same thing, so they are never applied).
    """
    records_root = Path(records_root)
    notes = notes if notes is not None else []
    resolved = _resolve(target)
    key = record_key(resolved)
    if not records_root.is_dir():
        notes.append(f"tuning records: {records_root} does not exist; building with default schedules")
        return None
    candidates = [records_root] if (records_root / META_FILE).is_file() else sorted(
        p for p in records_root.iterdir() if (p / META_FILE).is_file()
    )
    for path in candidates:
        if path.name == key and (path / WORKLOAD_FILE).is_file() and (path / RECORD_FILE).is_file():
            return path
    if candidates:
        mismatches = []
        for path in candidates:
            try:
                meta = json.loads((path / META_FILE).read_text())
            except (OSError, ValueError):
                mismatches.append(f"{path.name} (unreadable meta.json)")
                continue
            why = []
            if meta.get("target") != _target_json(resolved):
                why.append("another target")
            versions = meta.get("versions", {})
            for name, value in _versions().items():
                if name in ("tvm", "tvm-ffi") and versions.get(name) != value:
                    why.append(f"{name} {versions.get(name)} (this is {value})")
            mismatches.append(f"{path.name} ({', '.join(why) or 'key differs'})")
        notes.append(
            f"tuning records in {records_root} ignored, none has key {key}: " + "; ".join(mismatches)
        )
    else:
        notes.append(f"tuning records: no record set in {records_root}")
    return None


def _versions() -> dict[str, str]:
    from targets.lowering import versions

    return versions()


# ----------------------------------------------------------------------------------------------
# Preparation shared with build.py


def _is_arm(resolved: tvm.target.Target) -> bool:
    mtriple = str(resolved.attrs.get("mtriple", "")) if resolved.attrs is not None else ""
    return mtriple.startswith(("aarch64", "arm"))


def _with_num_cores(resolved: tvm.target.Target, notes: list[str]) -> tvm.target.Target:
    """MetaSchedule refuses targets without ``num-cores`` ("physical core number must be
    defined"); schedules tuned here run on this machine, so its physical core count is right."""
    if resolved.kind.name != "llvm" or "num-cores" in resolved.attrs:
        return resolved
    cores = tvm_target.physical_core_count()
    notes.append(f"num-cores={cores} (this machine) added to the target for tuning")
    return tvm.target.Target({**_target_json(resolved), "num-cores": cores})


@contextlib.contextmanager
def _nameable_ms_logger():
    """Detach unnamed handlers from MetaSchedule's logger while it configures its loggers.

    MetaSchedule rebuilds its logging config from the *names* of the handlers already on
    ``tvm.s_tir.meta_schedule`` and crashes (``'NoneType' object has no attribute 'format'``) on
    a handler without a name, such as one a host application or test runner attached.
    """
    import logging

    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    unnamed = [h for h in logger.handlers if h.get_name() is None]
    for handler in unnamed:
        logger.removeHandler(handler)
    try:
        yield
    finally:
        for handler in unnamed:
            logger.addHandler(handler)


def prepare_for_tuning(mod: tvm.IRModule, resolved: tvm.target.Target) -> tvm.IRModule:
    """build.py's preparation of an imported module, plus ``AttachAttrLayoutFreeBuffers``.

    The database is keyed by structural hashes of the fused PrimFuncs, so this reuses
    ``build.prepare`` exactly. ``AttachAttrLayoutFreeBuffers`` is part of the key too (it marks
    constant weight parameters in the function attributes); :func:`apply_records` and
    ``apply_default_schedules`` run it as well.
    """
    from targets.lowering.build import prepare

    mod = prepare(mod, resolved)
    with resolved:
        mod = relax.transform.AttachAttrLayoutFreeBuffers()(mod)
    return mod


def _scheduled_names(mod: tvm.IRModule) -> set[str]:
    from tvm import tirx

    out = set()
    for gvar, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc) and func.attrs is not None and "tirx.is_scheduled" in func.attrs:
            if bool(func.attrs["tirx.is_scheduled"]):
                out.add(gvar.name_hint)
    return out


def open_database(records_path: Path, create: bool = False):
    """A MetaSchedule JSONDatabase on the two files of ``records_path`` (a key directory)."""
    from tvm.s_tir import meta_schedule as ms

    records_path = Path(records_path)
    return ms.database.JSONDatabase(
        path_workload=str(records_path / WORKLOAD_FILE),
        path_tuning_record=str(records_path / RECORD_FILE),
        allow_missing=create,
    )


def apply_records(
    mod: tvm.IRModule, resolved: tvm.target.Target, records_path: Path
) -> tuple[tvm.IRModule, list[str]]:
    """Schedule the PrimFuncs of a prepared module that the database at ``records_path`` covers.

    ``mod`` is the module after build.py's zero pipeline, before ``apply_default_schedules``.
    Returns the module and the names of the functions that got a tuned schedule; they carry
    ``tirx.is_scheduled``, so ``apply_default_schedules`` leaves them alone and schedules the rest,
    and its ``SplitLayoutRewritePreproc`` + ``FoldConstant`` pre-pack the weights that tuned
    schedules re-lay out (MetaSchedule's RewriteLayout).
    """
    ms_worker.fast_tensor_intrin(arm=_is_arm(resolved))  # traces may tensorize (dot_16x4_vnni...)
    before = _scheduled_names(mod)
    # Seeded records of int8 kernels replay our own dot-product intrinsic (VNNI, or AVX2 vpmaddwd):
    # it must be registered in this process before the database is applied (the rules register it
    # lazily, possibly not yet).
    from targets.lowering.schedules.common import register_int8_intrinsics

    register_int8_intrinsics(resolved)
    with lowering_step("apply tuning records", str(records_path)):
        with resolved:
            mod = relax.transform.AttachAttrLayoutFreeBuffers()(mod)
            with open_database(records_path):
                mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
    applied = sorted(_scheduled_names(mod) - before)
    return mod, applied


# ----------------------------------------------------------------------------------------------
# Tuning


class _Stop(Exception):
    """Raised from the measure callback to end the search (Ctrl-C or KeyboardInterrupt from the
    progress callback). It crosses MetaSchedule's C++ task scheduler, which turns it into a
    RuntimeError; ``_Interrupt.requested`` tells the two apart."""


class _Interrupt:
    """SIGINT during tuning: the first Ctrl-C asks the search to stop after the batch being
    measured (its records are then saved); a second one interrupts immediately."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def _mean_us(run_secs) -> float | None:
    if not run_secs:
        return None
    values = [float(s) for s in run_secs]
    mean = sum(values) / len(values)
    return None if mean >= _INVALID_SECONDS else mean * 1e6


def _best_us(db, workload) -> float | None:
    top = db.get_top_k(workload, 1)
    return _mean_us(top[0].run_secs) if top else None


def _selected(task_name: str, op_names: Sequence[str] | None) -> bool:
    # Same test as tune_relax's task selection (substring of the task name).
    return not op_names or any(op in task_name for op in op_names)


def _seed_defaults(tasks, resolved, db, builder, runner, notes: list[str]) -> dict[str, float | None]:
    """Measure our default schedule of every task not yet in the database and commit it.

    Returns task name -> default latency (us) for the tasks measured now. The schedule is the
    trace of the rule that build.py's ``apply_default_schedules`` would pick, so replaying the
    record gives exactly the default schedule.
    """
    from tvm.s_tir import meta_schedule as ms

    from targets.lowering import schedules

    rules = schedules.default_rules()
    pending = []
    for task in tasks:
        task_mod = task.dispatched[0]
        if db.has_workload(task_mod) and db.get_top_k(db.commit_workload(task_mod), 1):
            continue  # tuned before: its best record is at least as fast as the default
        func = task_mod["main"]
        sch = next((s for s in (rule.apply(func, resolved, False) for rule in rules) if s is not None), None)
        if sch is None:
            notes.append(f"{task.task_name}: no default rule applies; the search starts from scratch")
            continue
        # Argument shapes as the built kernel sees them: MetaSchedule's builder drops weight
        # packing blocks (the packed weight becomes the parameter), exactly as for its own
        # candidates, so packing is timed as free -- as it is after FoldConstant in a build.
        args_info = ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True)
        pending.append((task, task_mod, sch, args_info))
    defaults: dict[str, float | None] = {}
    if not pending:
        return defaults
    built = builder.build([ms.builder.BuilderInput(sch.mod, resolved) for _, _, sch, _ in pending])
    inputs, kept = [], []
    for (task, task_mod, sch, args_info), result in zip(pending, built):
        if result.error_msg:
            notes.append(f"{task.task_name}: default schedule failed to build for measurement")
            continue
        inputs.append(ms.runner.RunnerInput(result.artifact_path, "cpu", args_info))
        kept.append((task, task_mod, sch, args_info, result.artifact_path))
    futures = runner.run(inputs) if inputs else []
    for (task, task_mod, sch, args_info, artifact), future in zip(kept, futures):
        result = future.result()
        _remove_artifact(artifact)
        latency = None if result.error_msg else _mean_us(result.run_secs)
        if latency is None:
            notes.append(f"{task.task_name}: default schedule failed to run for measurement")
            continue
        workload = db.commit_workload(task_mod)
        db.commit_tuning_record(
            ms.database.TuningRecord(sch.trace, workload, list(result.run_secs), resolved, args_info)
        )
        defaults[task.task_name] = latency
    return defaults


def _remove_artifact(path: str) -> None:
    import shutil

    shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def _from_search(record) -> bool:
    """True for records MetaSchedule's search produced: their traces mark where the postprocessors
    start (``EnterPostproc``). Our default-schedule seeds have no such mark."""
    return any(inst.kind.name == "EnterPostproc" for inst in record.trace.insts)


def _search_view(db):
    """``db`` as the search should see it: without our default-schedule seeds.

    The evolutionary search replays the best records of a task and runs its postprocessors on
    them to build its initial population. On a seed that already re-lays out a weight (our conv
    and matmul rules pack constant weights), MetaSchedule's RewriteLayout postprocessor hits a C++
    check (``args.size() == initial_indices_orig.size()``) inside a parallel loop, which aborts the
    whole task scheduler. A seed has no sampling decisions either, so the search could not evolve
    it anyway. Hiding seeds from ``get_top_k`` keeps everything else (commits, queries) on the
    real database, so seeds still compete when a build queries the best record.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class _SearchView(ms.database.PyDatabase):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def has_workload(self, mod):
            return self.inner.has_workload(mod)

        def commit_workload(self, mod):
            return self.inner.commit_workload(mod)

        def commit_tuning_record(self, record):
            self.inner.commit_tuning_record(record)

        def get_top_k(self, workload, top_k):
            # At most one seed per workload is ever committed (_seed_defaults skips workloads
            # already in the database), so one extra record keeps the answer exact.
            records = self.inner.get_top_k(workload, top_k + 1)
            return [r for r in records if _from_search(r)][:top_k]

        def get_all_tuning_records(self):
            return [r for r in self.inner.get_all_tuning_records() if _from_search(r)]

        def query_tuning_record(self, mod, target, workload_name):
            return self.inner.query_tuning_record(mod, target, workload_name)

        def query_schedule(self, mod, target, workload_name):
            return self.inner.query_schedule(mod, target, workload_name)

        def query_ir_module(self, mod, target, workload_name):
            return self.inner.query_ir_module(mod, target, workload_name)

        def __len__(self):
            return len(self.inner)

    return _SearchView(db)


def _make_progress_callback(state: dict, progress, interrupt: _Interrupt):
    """A MetaSchedule measure callback that reports each measured batch and ends the search when
    asked. It runs after AddToDatabase (it is appended to the default callbacks), so a batch is in
    the JSON files before the search can be stopped."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class _Progress(ms.measure_callback.PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            name = str(task_scheduler.tasks_[task_id].ctx.task_name)
            n = len(measure_candidates)
            state["trials"] += n
            state["task_trials"][name] = state["task_trials"].get(name, 0) + n
            batch = [_mean_us(r.run_secs) for r in runner_results if not r.error_msg]
            batch = [b for b in batch if b is not None]
            best = min(batch) if batch else None
            if best is not None and (state["best"].get(name) is None or best < state["best"][name]):
                state["best"][name] = best
            if progress is not None:
                try:
                    progress(
                        TuningProgress(
                            phase="search",
                            task_name=name,
                            task_index=int(task_id),
                            n_tasks=state["n_tasks"],
                            task_trials=state["task_trials"][name],
                            trials_per_task=state["trials_per_task"],
                            trials_in_batch=n,
                            total_trials=state["trials"],
                            total_budget=state["budget"],
                            batch_best_us=best,
                            task_best_us=state["best"].get(name),
                            default_us=state["defaults"].get(name),
                            elapsed_s=time.perf_counter() - state["start"],
                        )
                    )
                except KeyboardInterrupt:
                    interrupt.requested = True
            if interrupt.requested:
                raise _Stop("tuning interrupted")

    return _Progress()


def _write_meta(key_dir: Path, resolved: tvm.target.Target, run: dict[str, Any]) -> None:
    """Add ``run`` to meta.json (written to a temporary file and renamed: never half-written)."""
    path = key_dir / META_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        meta = {}
    meta.update({"key": key_dir.name, "target": _target_json(resolved), "versions": _versions()})
    meta.setdefault("runs", []).append(run)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    tmp.replace(path)


def print_progress(event: TuningProgress) -> None:
    """A ready-made ``progress`` callback: one line per event on stderr."""
    import sys

    def us(v):
        return "-" if v is None else f"{v:.1f} us"

    if event.phase == "defaults":
        line = f"[tune] {event.task_name}: default schedule {us(event.default_us)}"
    else:
        line = (
            f"[tune] {event.total_trials}/{event.total_budget} trials, {event.elapsed_s:.0f} s | "
            f"task {event.task_index + 1}/{event.n_tasks} {event.task_name}: "
            f"{event.task_trials}/{event.trials_per_task}, best {us(event.task_best_us)} "
            f"(default {us(event.default_us)})"
        )
    print(line, file=sys.stderr, flush=True)


def tune(
    model_proto: onnx.ModelProto,
    target: Target,
    input_shapes: Mapping[str, Sequence[int]],
    records_dir: Path,
    trials_per_task: int,
    *,
    progress: Callable[[TuningProgress], None] | None = None,
    op_names: Sequence[str] | None = DEFAULT_OP_NAMES,
    seed_defaults: bool = True,
    cost_model: str = "xgb",
    num_trials_per_iter: int | None = None,
    builder_timeout_s: float = 90.0,
    runner_timeout_s: float = 60.0,
    seed: int = 0,
    per_image: str = "auto",
) -> TuningSummary:
    """Tune ``model_proto`` for ``target`` with MetaSchedule into ``records_dir/<key>/``.

    ``trials_per_task`` candidates are measured per selected task (``op_names``: substrings of
    the fused function names; None tunes every function). Tuning into an existing key directory
    continues from its records. ``progress`` receives a :class:`TuningProgress` per measured batch;
    raising KeyboardInterrupt from it, or pressing Ctrl-C, stops the search after the current batch
    and returns with ``interrupted=True`` (everything measured is already in the database).
    ``cost_model="xgb"`` needs the ``tune`` extra (xgboost-cpu); ``"random"`` needs nothing.
    ``per_image`` is the build's (lower.plan_batch): a batch the build runs image by image is tuned
    as the batch-1 network, whose kernels the build schedules.

    Raises OptionError for targets whose code cannot run on this machine (candidates are timed
    locally) and for ``trials_per_task < 1``.
    """
    from tvm.s_tir import meta_schedule as ms

    start = time.perf_counter()
    if trials_per_task < 1:
        raise OptionError(f"tuning needs at least 1 trial per task, got {trials_per_task}")
    if not target.runs_locally:
        raise OptionError(
            f"target '{target.name}' cannot be tuned here: candidates are timed on this machine, and "
            "its code does not run on it (RPC tuning on the board is not supported)"
        )
    notes: list[str] = []
    with lowering_step("target resolution", target.name):
        resolved, resolve_notes = tvm_target.resolve(target)
    notes += resolve_notes
    key_dir = Path(records_dir) / record_key(resolved)  # keyed like a build will look it up
    tuning_target = _with_num_cores(resolved, notes)
    arm = _is_arm(resolved)
    ms_worker.fast_tensor_intrin(arm=arm)  # before any TuneContext exists (B3)

    from targets.lowering.lower import plan_batch

    split = plan_batch(model_proto, target, input_shapes, per_image, str(resolved.kind.name))
    mod = importer.import_onnx(split.model, split.shapes)
    with lowering_step("tuning preparation"):
        mod = prepare_for_tuning(mod, resolved)
        all_tasks = ms.relax_integration.extract_tasks(mod, tuning_target)
    tasks = [t for t in all_tasks if _selected(t.task_name, op_names)]
    skipped = [t.task_name for t in all_tasks if not _selected(t.task_name, op_names)]
    key_dir.mkdir(parents=True, exist_ok=True)
    run_meta: dict[str, Any] = {
        "model_sha256": hashlib.sha256(model_proto.SerializeToString()).hexdigest(),
        "input_shapes": {k: list(v) for k, v in input_shapes.items()},
        "trials_per_task": trials_per_task,
        "op_names": list(op_names) if op_names else None,
        "cost_model": cost_model,
        "tasks": [t.task_name for t in tasks],
    }
    if not tasks:
        notes.append("no function matches op_names; nothing tuned")
        run_meta.update(trials=0, seconds=time.perf_counter() - start, interrupted=False)
        _write_meta(key_dir, resolved, run_meta)
        return TuningSummary(key_dir, [], skipped, 0, run_meta["seconds"], False, notes)

    db = open_database(key_dir, create=True)
    # Workers: at most one per core (candidates are timed one at a time by the runner anyway);
    # the initializer avoids the ~30 s tensor_intrin import per worker (B3).
    workers = max(1, int(tuning_target.attrs.get("num-cores", 1)))
    builder = ms.builder.LocalBuilder(
        max_workers=workers,
        timeout_sec=builder_timeout_s,
        initializer=ms_worker.fast_tensor_intrin_arm if arm else ms_worker.fast_tensor_intrin,
    )
    runner = ms.runner.LocalRunner(timeout_sec=runner_timeout_s)

    state: dict[str, Any] = {
        "trials": 0,
        "task_trials": {},
        "best": {},
        "defaults": {},
        "n_tasks": len(tasks),
        "trials_per_task": trials_per_task,
        "budget": trials_per_task * len(tasks),
        "start": start,
    }
    interrupted = False
    with _Interrupt() as interrupt:
        try:
            if seed_defaults:
                with lowering_step("measuring default schedules"):
                    state["defaults"] = _seed_defaults(tasks, tuning_target, db, builder, runner, notes)
                if progress is not None:
                    for index, task in enumerate(tasks):
                        if task.task_name in state["defaults"]:
                            progress(
                                TuningProgress(
                                    "defaults", task.task_name, index, len(tasks), 0, trials_per_task, 0, 0,
                                    state["budget"], None, state["defaults"][task.task_name],
                                    state["defaults"][task.task_name], time.perf_counter() - start,
                                )
                            )
            if not interrupt.requested:
                callbacks = list(ms.measure_callback.MeasureCallback.create("default"))
                callbacks.append(_make_progress_callback(state, progress, interrupt))
                # tune_relax() minus its task extraction and op-name selection, which we did
                # above (its substring selection lists a task twice when two op names match).
                with _nameable_ms_logger():
                    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                        extracted_tasks=tasks, work_dir=str(key_dir), seed=seed  # logs: key_dir/logs
                    )
                ms.tune.tune_tasks(
                    tasks=contexts,
                    task_weights=weights,
                    work_dir=str(key_dir),
                    max_trials_global=state["budget"],
                    max_trials_per_task=trials_per_task,
                    num_trials_per_iter=num_trials_per_iter or min(32, trials_per_task),
                    builder=builder,
                    runner=runner,
                    database=_search_view(db),
                    cost_model=cost_model,
                    measure_callbacks=callbacks,
                )
            else:
                interrupted = True
        except KeyboardInterrupt:
            interrupted = True  # second Ctrl-C, or one in our own Python code: keep what was saved
        except Exception as exc:
            if not interrupt.requested:
                # Keep the key directory usable: what was measured before the failure stays.
                run_meta.update(trials=state["trials"], error=str(exc).splitlines()[0][:300] if str(exc) else repr(exc))
                _write_meta(key_dir, resolved, run_meta)
                raise
            interrupted = True  # _Stop, seen through the C++ task scheduler as a RuntimeError

    summaries = []
    for task in tasks:
        workload = db.commit_workload(task.dispatched[0]) if db.has_workload(task.dispatched[0]) else None
        summaries.append(
            TaskSummary(
                name=task.task_name,
                trials=state["task_trials"].get(task.task_name, 0),
                default_us=state["defaults"].get(task.task_name),
                best_us=_best_us(db, workload) if workload is not None else None,
            )
        )
    seconds = time.perf_counter() - start
    if interrupted:
        notes.append(f"interrupted after {state['trials']} of {state['budget']} trials; the records so far are kept")
    run_meta.update(trials=state["trials"], seconds=round(seconds, 2), interrupted=interrupted)
    _write_meta(key_dir, resolved, run_meta)
    return TuningSummary(key_dir, summaries, skipped, state["trials"], seconds, interrupted, notes)


# ----------------------------------------------------------------------------------------------
# Shipping: keep only what beats the default schedules


@dataclasses.dataclass
class PrunedWorkload:
    """One workload of a pruned record set: its fused function, our default schedule's latency
    (the seed; None if never measured) and the best search record's (microseconds)."""

    function: str
    default_us: float | None
    best_us: float
    kept: bool
    remeasured_default_us: float | None = None
    remeasured_best_us: float | None = None


def _describe_workload(mod: tvm.IRModule) -> str:
    """``block(shape, shape, ...)`` of a workload: its first compute block and its parameter
    shapes (the database keeps the function as ``main``, without the fused name)."""
    from tvm import s_tir, tirx

    for _, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        shapes = ["x".join(str(int(d)) for d in getattr(param, "shape", ())) or "scalar" for param in func.params]
        try:
            sch = s_tir.Schedule(func)
            blocks = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
        except Exception:  # noqa: BLE001 - only a label
            blocks = []
        anchor = next((b for b in blocks if not b.startswith(("pad", "T_", "compute"))), blocks[0] if blocks else "?")
        return f"{anchor}({', '.join(shapes)})"
    return "?"


def _remeasure(pairs, resolved: tvm.target.Target, rounds: int) -> list[tuple[float | None, float | None]]:
    """Median latencies (us) of (seed record, search record) pairs, re-timed now, alternately.

    A seed is measured once, when tuning starts, and the search's candidates minutes later; on a
    shared machine the load in between can make either look faster than it is. Timing both again
    back to back, ``rounds`` times in alternation with the tuning's builder and runner, compares
    them under the same load."""
    import statistics

    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    ms_worker.fast_tensor_intrin(arm=_is_arm(resolved))
    target = _with_num_cores(resolved, [])
    workers = max(1, int(target.attrs.get("num-cores", 1)))
    builder = ms.builder.LocalBuilder(max_workers=workers, timeout_sec=90.0,
                                      initializer=ms_worker.fast_tensor_intrin_arm if _is_arm(resolved) else ms_worker.fast_tensor_intrin)
    runner = ms.runner.LocalRunner(timeout_sec=60.0)
    records = [r for pair in pairs for r in pair]
    schedules = []
    for record in records:
        sch = s_tir.Schedule(record.workload.mod)
        record.trace.apply_to_schedule(sch, remove_postproc=False)
        schedules.append(sch)
    built = builder.build([ms.builder.BuilderInput(sch.mod, target) for sch in schedules])
    inputs = [None if b.error_msg else ms.runner.RunnerInput(b.artifact_path, "cpu", r.args_info) for b, r in zip(built, records)]
    samples: list[list[float]] = [[] for _ in records]
    for _ in range(rounds):
        ready = [(i, x) for i, x in enumerate(inputs) if x is not None]
        for (i, _), future in zip(ready, runner.run([x for _, x in ready])):
            result = future.result()
            latency = None if result.error_msg else _mean_us(result.run_secs)
            if latency is not None:
                samples[i].append(latency)
    for b in built:
        if not b.error_msg:
            _remove_artifact(b.artifact_path)
    medians = [statistics.median(v) if v else None for v in samples]
    return [(medians[2 * i], medians[2 * i + 1]) for i in range(len(pairs))]


def prune_records(source: Path, dest_root: Path, min_gain: float = 0.05, remeasure_rounds: int = 0,
                  target: tvm.target.Target | None = None) -> list[PrunedWorkload]:
    """Write into ``dest_root/<source key>/`` the workloads of the record set ``source`` whose best
    MetaSchedule record is faster than our default schedule by more than ``min_gain``, each with
    that single record; return what was kept and dropped.

    Why prune: a workload whose best record is our own default-schedule seed would, if shipped,
    replay the schedule the rules produced at tuning time, and a later improvement of the rules
    would never reach it; without the workload the build simply runs the current rule. One record
    per workload is all ``apply_records`` reads (the database answers with the fastest), so the
    others only cost space. ``min_gain`` keeps measurement noise (tuning runs on a loaded machine)
    from shipping records that are not really faster; with ``remeasure_rounds`` > 0 the workloads
    that pass are timed again against their seed (:func:`_remeasure`, on ``target``: the resolved
    target the records are for) and shipped only if they still win by ``min_gain``.
    """
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    source = Path(source)
    db = open_database(source)
    groups: dict[int, list] = {}
    for record in db.get_all_tuning_records():
        groups.setdefault(tvm_ffi.structural_hash(record.workload.mod), []).append(record)
    dest = Path(dest_root) / source.name
    if dest.exists():
        import shutil

        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    out_db = open_database(dest, create=True)
    summary, candidates = [], []
    for records in groups.values():
        seeds = [(r, _mean_us(r.run_secs)) for r in records if not _from_search(r)]
        seeds = [(r, us) for r, us in seeds if us is not None]
        seed, seed_us = min(seeds, key=lambda pair: pair[1]) if seeds else (None, None)
        searched = [(r, _mean_us(r.run_secs)) for r in records if _from_search(r)]
        searched = [(r, us) for r, us in searched if us is not None]
        if not searched:
            continue
        best, best_us = min(searched, key=lambda pair: pair[1])
        entry = PrunedWorkload(_describe_workload(best.workload.mod), seed_us, best_us,
                               seed_us is None or best_us * (1 + min_gain) < seed_us)
        summary.append(entry)
        if entry.kept:
            candidates.append((entry, seed, best))
    if remeasure_rounds > 0:
        if target is None:
            raise ValueError("prune_records: re-measuring needs the target the records are for")
        pairs = [(seed, best) for _, seed, best in candidates if seed is not None]
        timed = iter(_remeasure(pairs, _resolve(target), remeasure_rounds) if pairs else [])
        for entry, seed, best in candidates:
            if seed is None:
                continue
            seed_us, best_us = next(timed)
            entry.remeasured_default_us, entry.remeasured_best_us = seed_us, best_us
            entry.kept = best_us is not None and (seed_us is None or best_us * (1 + min_gain) < seed_us)
    for entry, _, best in candidates:
        if entry.kept:
            workload = out_db.commit_workload(best.workload.mod)
            out_db.commit_tuning_record(
                ms.database.TuningRecord(best.trace, workload, list(best.run_secs), best.target, best.args_info)
            )
    meta = json.loads((source / META_FILE).read_text())
    meta["pruned"] = {
        "min_gain": min_gain,
        "workloads": [dataclasses.asdict(w) for w in summary],
    }
    (dest / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return summary
