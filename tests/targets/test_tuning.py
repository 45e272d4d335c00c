"""MetaSchedule tuning that is reused (targets/lowering/tuning.py).

Tuning runs are tiny (a 64x64 MatMul+Relu, 4 trials, ~20 s each on 2 cores) but real: candidates
are built by worker processes (with the B3 initializer) and timed by MetaSchedule's runner. The
records are then applied in a fresh module prepared like targets/lowering/build.py prepares it,
compiled, and compared with ONNX Runtime.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

from compiler.verify import compare
from tests.tolerances import TVM_BACKEND

tvm = pytest.importorskip("tvm")
pytest.importorskip("xgboost")  # the default cost model (the `tune` extra)
pytestmark = pytest.mark.tvm

from tvm import relax  # noqa: E402

from targets.lowering import importer, schedules, tuning, tvm_target  # noqa: E402
from targets.registry import get_target  # noqa: E402

HEADER = '<ir_version: 8, opset_import: ["" : 17]>\n'
SHAPES = {"x": [64, 64]}
TRIALS = 4


def matmul_relu_model() -> onnx.ModelProto:
    proto = onnx.parser.parse_model(
        HEADER + "g (float[64,64] x) => (float[64,64] y) { m = MatMul(x, W)\n y = Relu(m) }"
    )
    rng = np.random.default_rng(0)
    proto.graph.initializer.append(
        onnx.numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "W")
    )
    onnx.checker.check_model(proto)
    return proto


def build_with_records(proto: onnx.ModelProto, resolved, records: Path | None):
    """targets/lowering/build.py's build() with the records applied where the lead will wire them:
    after the zero pipeline, before the default schedules. Returns (executable, applied, report)."""
    mod = importer.import_onnx(proto, SHAPES)
    with resolved:
        mod = relax.transform.DecomposeOpsForInference()(mod)
        mod = relax.transform.CanonicalizeBindings()(mod)
        mod = relax.get_pipeline("zero")(mod)
        applied = []
        if records is not None:
            mod, applied = tuning.apply_records(mod, resolved, records)
        mod, report = schedules.apply_default_schedules(mod, resolved)
        executable = tvm.compile(mod, target=resolved)
    return executable, applied, report


def check_against_ort(proto: onnx.ModelProto, executable) -> None:
    import onnxruntime as ort

    x = np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32)
    expected = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    vm = relax.VirtualMachine(executable, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    result = compare([got], expected, TVM_BACKEND)
    assert result["passed"], result


def record_lines(key_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (key_dir / tuning.RECORD_FILE).read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def cpu():
    return get_target("cpu")


@pytest.fixture(scope="module")
def resolved(cpu):
    return tvm_target.resolve(cpu)[0]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, cpu):
    """One tuning run shared by the tests below: (records root, summary, progress events)."""
    root = tmp_path_factory.mktemp("records")
    events: list[tuning.TuningProgress] = []
    summary = tuning.tune(matmul_relu_model(), cpu, SHAPES, root, TRIALS, progress=events.append)
    return root, summary, events


def test_tune_writes_keyed_records_seeded_with_the_default_schedule(tuned, resolved):
    root, summary, events = tuned
    assert not summary.interrupted
    assert summary.records_path == root / tuning.record_key(resolved)
    assert [t.name for t in summary.tasks] == ["fused_matmul_relu1"]
    task = summary.tasks[0]
    assert task.trials == TRIALS and summary.trials == TRIALS
    # The default schedule was measured and committed first, so the best record is never worse.
    assert task.default_us is not None and task.best_us is not None
    assert task.best_us <= task.default_us
    assert len(record_lines(summary.records_path)) == TRIALS + 1
    assert events[0].phase == "defaults" and events[0].default_us == task.default_us
    search = [e for e in events if e.phase == "search"]
    assert search and search[-1].total_trials == TRIALS and search[-1].total_budget == TRIALS

    meta = json.loads((summary.records_path / tuning.META_FILE).read_text())
    assert meta["target"] == tvm_target.export(resolved)
    assert meta["versions"]["tvm"] == tvm.__version__
    (run,) = meta["runs"]
    assert run["trials_per_task"] == TRIALS and run["trials"] == TRIALS and run["interrupted"] is False
    assert run["tasks"] == ["fused_matmul_relu1"] and len(run["model_sha256"]) == 64


def test_records_apply_in_a_fresh_build_and_match_onnxruntime(tuned, resolved):
    root, summary, _ = tuned
    notes: list[str] = []
    key_dir = tuning.find_records(root, resolved, notes)
    assert key_dir == summary.records_path and notes == []
    # A record set passed directly (its key directory) is found too.
    assert tuning.find_records(key_dir, resolved) == key_dir

    proto = matmul_relu_model()
    executable, applied, report = build_with_records(proto, resolved, key_dir)
    assert applied == ["fused_matmul_relu1"]
    # The tuned function is left to the database; nothing else needed a default rule here.
    assert "fused_matmul_relu1" not in report.scheduled and report.unscheduled == []
    check_against_ort(proto, executable)


def test_records_for_another_target_are_ignored_with_a_note(tuned, resolved):
    root, _, _ = tuned
    other_cpu = "skylake-avx512" if str(resolved.attrs["mcpu"]) != "skylake-avx512" else "znver4"
    other = tvm.target.Target({"kind": "llvm", "mcpu": other_cpu, "num-cores": 2})
    notes: list[str] = []
    assert tuning.find_records(root, other, notes) is None
    assert len(notes) == 1 and "another target" in notes[0] and summary_key(root) in notes[0]
    # Same target, other TVM version in the key: ignored as well.
    renamed = root.parent / "renamed-records"
    renamed.mkdir(exist_ok=True)
    src = root / summary_key(root)
    fake = renamed / src.name.replace("-tvm", "-tvm0.0.0-old")
    fake.mkdir(exist_ok=True)
    for name in (tuning.WORKLOAD_FILE, tuning.RECORD_FILE):
        (fake / name).write_bytes((src / name).read_bytes())
    meta = json.loads((src / tuning.META_FILE).read_text())
    meta["versions"]["tvm"] = "0.0.0"
    (fake / tuning.META_FILE).write_text(json.dumps(meta))
    notes = []
    assert tuning.find_records(renamed, resolved, notes) is None
    assert "tvm 0.0.0" in notes[0]


def summary_key(root: Path) -> str:
    (key_dir,) = [p for p in root.iterdir() if p.is_dir()]
    return key_dir.name


def test_keyboard_interrupt_keeps_the_records_found_so_far(tmp_path, cpu, resolved):
    """KeyboardInterrupt from the progress callback after the first batch: the search stops, the
    batch is in the database, and the (MetaSchedule-found, not seeded) records apply and are
    correct -- this also covers weight re-layout by MetaSchedule's RewriteLayout."""
    calls = []

    def progress(event):
        calls.append(event)
        if event.phase == "search":
            raise KeyboardInterrupt

    summary = tuning.tune(
        matmul_relu_model(), cpu, SHAPES, tmp_path, TRIALS, progress=progress, seed_defaults=False,
        num_trials_per_iter=2,
    )
    assert summary.interrupted
    assert len(calls) == 1 and summary.trials == 2 == summary.tasks[0].trials
    assert any("interrupted" in note for note in summary.notes)
    assert len(record_lines(summary.records_path)) == 2
    meta = json.loads((summary.records_path / tuning.META_FILE).read_text())
    assert meta["runs"][-1]["interrupted"] is True and meta["runs"][-1]["trials"] == 2

    proto = matmul_relu_model()
    executable, applied, _ = build_with_records(proto, resolved, tuning.find_records(tmp_path, resolved))
    assert applied == ["fused_matmul_relu1"]
    check_against_ort(proto, executable)


def test_ctrl_c_asks_for_a_stop_and_a_second_one_interrupts():
    before = signal.getsignal(signal.SIGINT)
    with tuning._Interrupt() as interrupt:
        os.kill(os.getpid(), signal.SIGINT)
        assert interrupt.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_untunable_requests_are_rejected(tmp_path, cpu):
    from compiler.errors import OptionError

    with pytest.raises(OptionError, match="at least 1 trial"):
        tuning.tune(matmul_relu_model(), cpu, SHAPES, tmp_path, 0)
    summary = tuning.tune(matmul_relu_model(), cpu, SHAPES, tmp_path, 2, op_names=("conv2d",))
    assert summary.tasks == [] and summary.skipped == ["fused_matmul_relu1"] and summary.trials == 0


def test_metaschedule_tune_context_does_not_crash():
    """B1: with apache-tvm-ffi 0.1.15.x creating any TuneContext segfaults. Run in a subprocess so a
    segfault fails this test instead of killing the test session."""
    code = textwrap.dedent(
        """
        from targets.lowering.ms_worker import fast_tensor_intrin
        fast_tensor_intrin()
        import tvm
        from tvm import te
        from tvm.s_tir import meta_schedule as ms
        A = te.placeholder((64, 64), name="A")
        B = te.placeholder((64, 64), name="B")
        k = te.reduce_axis((0, 64), name="k")
        C = te.compute((64, 64), lambda i, j: te.sum(A[i, k] * B[k, j], axis=k), name="C")
        mod = tvm.IRModule({"main": te.create_prim_func([A, B, C])})
        ctx = ms.TuneContext(
            mod=mod, target=tvm.target.Target({"kind": "llvm", "num-cores": 2}),
            space_generator="post-order-apply", search_strategy="evolutionary", task_name="smoke",
        )
        assert len(ctx.generate_design_space()) > 0
        print("tune-context-ok")
        """
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tune-context-ok" in proc.stdout


@pytest.mark.slow
def test_conv_with_packed_weight_seed_tunes_and_applies(tmp_path, cpu, resolved):
    """~75 s. The default conv schedule packs its constant weight; seeding the database with it must
    not crash the search (MetaSchedule's RewriteLayout aborts on such traces unless they are kept
    from the search), and the applied record must still be pre-packed at compile time."""
    import onnxruntime as ort

    proto = onnx.parser.parse_model(
        HEADER + "g (float[1,16,16,16] x) => (float[1,32,16,16] y) { c = Conv(x, W, B) <pads=[1,1,1,1]>\n y = Relu(c) }"
    )
    rng = np.random.default_rng(0)
    proto.graph.initializer.append(
        onnx.numpy_helper.from_array(rng.standard_normal((32, 16, 3, 3)).astype(np.float32) * 0.2, "W")
    )
    proto.graph.initializer.append(onnx.numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "B"))
    shapes = {"x": [1, 16, 16, 16]}
    summary = tuning.tune(proto, cpu, shapes, tmp_path, 2, num_trials_per_iter=2)
    (task,) = summary.tasks
    assert task.trials == 2 and task.default_us is not None and task.best_us <= task.default_us

    mod = importer.import_onnx(proto, shapes)
    with resolved:
        mod = relax.transform.DecomposeOpsForInference()(mod)
        mod = relax.transform.CanonicalizeBindings()(mod)
        mod = relax.get_pipeline("zero")(mod)
        mod, applied = tuning.apply_records(mod, resolved, summary.records_path)
        mod, _ = schedules.apply_default_schedules(mod, resolved)
        executable = tvm.compile(mod, target=resolved)
    assert applied == ["fused_conv2d_add_relu1"]
    x = rng.standard_normal((1, 16, 16, 16)).astype(np.float32)
    expected = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    result = compare([got], expected, TVM_BACKEND)
    assert result["passed"], result


def test_prune_keeps_only_records_that_beat_the_default_schedule(tmp_path, resolved):
    """prune_records ships a workload only when a search record beats our default-schedule seed
    by more than min_gain, with that one record; a workload the default wins is left out, so a
    build runs the current rule for it."""
    source, matmul = _fake_record_set(tmp_path, resolved, {8: (10e-6, 5e-6), 16: (10e-6, 9.8e-6)})
    kept = tuning.prune_records(source, tmp_path / "shipped", min_gain=0.05)
    assert sorted((w.kept, round(w.best_us, 1)) for w in kept) == [(False, 9.8), (True, 5.0)]
    shipped = tmp_path / "shipped" / source.name
    assert tuning.find_records(tmp_path / "shipped", resolved) == shipped
    assert len(record_lines(shipped)) == 1
    meta = json.loads((shipped / tuning.META_FILE).read_text())
    assert meta["runs"] == [{"trials": 2}] and meta["pruned"]["min_gain"] == 0.05
    (only,) = tuning.open_database(shipped).get_all_tuning_records()
    tvm.ir.assert_structural_equal(only.workload.mod, matmul(8))


def test_prune_remeasure_drops_a_record_that_only_looked_faster(tmp_path, resolved):
    """A 'search' record whose stored time (measured under other load) beats the default but whose
    schedule is TVM's naive loop nest loses when both are timed again back to back: not shipped."""
    source, _ = _fake_record_set(tmp_path, resolved, {64: (1e-3, 1e-6)}, k=256)
    (entry,) = tuning.prune_records(source, tmp_path / "shipped", min_gain=0.05, remeasure_rounds=2, target=resolved)
    assert entry.remeasured_best_us > entry.remeasured_default_us and not entry.kept
    assert tuning.open_database(tmp_path / "shipped" / source.name).get_all_tuning_records() == []


def _fake_record_set(tmp_path, resolved, timings: dict, k: int = 32):
    """A record set of matmul workloads [rows x k] @ [k x 32], one per ``timings`` entry (rows ->
    (default seed seconds, search seconds)): the seed is our Matmul rule's schedule, the search
    record TVM's unscheduled loops marked as MetaSchedule's (EnterPostproc). Returns (key dir,
    workload maker)."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.script import tirx as T

    from targets.lowering.schedules.matmul import Matmul

    def matmul(n: int):
        @T.prim_func(private=True, s_tir=True)
        def func(a: T.Buffer((n, k), "float32"), b: T.Buffer((k, 32), "float32"), c: T.Buffer((n, 32), "float32")):
            T.func_attr({"tirx.noalias": True})
            for i, j, kk in T.grid(n, 32, k):
                with T.sblock("matmul"):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, kk])
                    with T.init():
                        c[vi, vj] = T.float32(0.0)
                    c[vi, vj] = c[vi, vj] + a[vi, vk] * b[vk, vj]

        return tvm.IRModule({"main": func.with_attr("global_symbol", "main")})  # as extract_tasks gives them

    source = tmp_path / "scratch" / tuning.record_key(resolved)
    source.mkdir(parents=True)
    (source / tuning.META_FILE).write_text(json.dumps({"key": source.name, "runs": [{"trials": 2}]}))
    db = tuning.open_database(source, create=True)
    for rows, (seed_s, search_s) in timings.items():
        mod = matmul(rows)
        workload = db.commit_workload(mod)
        seed = Matmul().apply(mod["main"], resolved, False)
        search = tvm.s_tir.Schedule(mod)
        search.enter_postproc()  # what marks a trace as MetaSchedule's own
        args_info = ms.arg_info.ArgInfo.from_entry_func(mod, remove_preproc=True)
        for sch, seconds in ((seed, seed_s), (search, search_s)):
            db.commit_tuning_record(ms.database.TuningRecord(sch.trace, workload, [seconds], resolved, args_info))
    return source, matmul
