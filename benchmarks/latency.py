"""The latency suite: ONNX Runtime (fp32 and int8) against edgekiln's artifacts, in one run.

For each model and batch size it measures, in the same process:

    onnxruntime_fp32   ORT, all graph optimizations, on the original model (the reference)
    onnxruntime_int8   ORT on quantize_static(QDQ, per-channel int8 weights, uint8 activations)
    ours_fp32          edgekiln's artifact with the default schedules only (untuned: shipped
                       records disabled)
    ours_fp32_records  the same with the tuning records shipped in targets/records/ for this
                       machine's cpu target (unavailable when none match its key)
    ours_int8          edgekiln's integer-only artifact (--quantize int8, same calibration inputs)
    ours_int8_w7       the same with 7-bit weight codes (--quantize int8-w7, ORT's reduce_range):
                       on x86 CPUs without VNNI its convs run on the exact vpmaddubsw kernel

Each latency is the median of ``runs`` runs after warm-up, the variants timed in alternation (in
blocks of a few runs) so that load from other processes affects all alike; ratios are against
onnxruntime_fp32, of the medians and of the fastest runs (``min_ratio_to_onnxruntime_fp32``).
Variants that cannot run yet are recorded with ``"status": "unavailable"`` and the reason, never
silently dropped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.ort_quant import quantize_static_qdq
from benchmarks.timing import measure_interleaved

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("onnxruntime_fp32", "onnxruntime_int8", "ours_fp32", "ours_fp32_records", "ours_int8", "ours_int8_w7")

#: ``compile --quantize`` choice of each quantized variant of ours.
QUANTIZED_VARIANTS = {"ours_int8": "int8", "ours_int8_w7": "int8-w7"}


def model_for(name: str, batch: int) -> Path:
    """ONNX file of a benchmark model at a batch size (exported from the in-repo torch definitions).

    ``digits`` is the bundled example; its ONNX file has a static batch of 1, so other batch sizes
    are re-trained (deterministic, ~6 s) and exported at that batch into the model cache.
    """
    sys.path.insert(0, str(REPO))
    if name == "digits":
        if batch == 1:
            return REPO / "examples" / "digits_cnn.onnx"
        return _digits_at_batch(batch)
    from tests.data.make_models import model_path

    return model_path(name, batch=batch)


def _digits_at_batch(batch: int) -> Path:
    import torch

    from compiler.export import export_torch

    sys.path.insert(0, str(REPO / "examples"))
    import train_digits

    out = REPO / "tests" / "data" / ".cache" / f"digits_cnn-b{batch}.onnx"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    split = train_digits.split_digits()
    model = train_digits.build_model()
    train_digits.train(model, *split["train"])
    export_torch(model, (torch.zeros(batch, 1, 8, 8),), out, input_names=["x"], output_names=["logits"])
    return out


def _input_feeds(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    import onnx

    from compiler.ir import from_proto
    from compiler.verify import random_feeds

    return random_feeds(from_proto(onnx.load(str(path), load_external_data=False)), seed=seed)


def _ort_session(path: Path, threads: int, profile_prefix: Path | None = None):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads; with ``profile_prefix`` its
    per-node profiler on (files under that prefix)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if profile_prefix is not None:
        options.inter_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compile_ours(path: Path, out: Path, passes: str | None = None, calib: Path | None = None,
                 records: str | None = None, quantize: str = "int8", tree: Path = REPO,
                 env: dict[str, str] | None = None) -> dict:
    """Compile in a child process (benchmarks.compile_child) with the code of source tree
    ``tree`` (its working directory and PYTHONPATH; this checkout by default) and extra
    environment ``env``; returns the child's JSON. Raises RuntimeError with its last error line."""
    cmd = [sys.executable, "-m", "benchmarks.compile_child", str(path), str(out)]
    if passes:
        cmd += ["--passes", passes]
    if calib is not None:
        cmd += ["--quantize", quantize, "--calib", str(calib)]
    if records is not None:
        cmd += ["--tuning-records", records]
    child_env = None if tree == REPO and not env else dict(os.environ, PYTHONPATH=str(tree), **(env or {}))
    proc = subprocess.run(cmd, cwd=tree, env=child_env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_calibration(calibration: list[dict[str, np.ndarray]], path: Path) -> Path:
    """The calibration feeds as one .npz of named inputs (batches concatenated), for --calib."""
    np.savez(path, **{k: np.concatenate([c[k] for c in calibration]) for k in calibration[0]})
    return path


class Unavailable(Exception):
    """A variant that cannot be measured here (the reason is recorded, the suite goes on)."""


def shipped_records_key_dir() -> Path | None:
    """The shipped record set (targets/records/<key>) for the ``cpu`` target on this machine."""
    from compiler.api import SHIPPED_RECORDS_DIR
    from targets import get_target
    from targets.lowering.tuning import find_records

    notes: list[str] = []
    found = find_records(SHIPPED_RECORDS_DIR, get_target("cpu"), notes) if SHIPPED_RECORDS_DIR.is_dir() else None
    if found is None:
        raise Unavailable("; ".join(notes) or f"no tuning records shipped in {SHIPPED_RECORDS_DIR}")
    return found


def _prepare(variant: str, path: Path, tmp: Path, feeds, calibration, threads: int, reference_out):
    """(callable to time, entry fields) for one variant; compiles or quantizes as needed."""
    from compiler.verify import compare

    if variant == "onnxruntime_int8":
        qpath = quantize_static_qdq(path, tmp / "int8.onnx", calibration)
        session = _ort_session(qpath, threads)
        cosine = compare(session.run(None, feeds), reference_out, "lossy")["cosine"]
        return (lambda: session.run(None, feeds)), {"cosine_vs_fp32": cosine}
    from compiler.artifact import load_artifact

    if variant in ("ours_fp32", "ours_fp32_records"):
        # ours_fp32 is the untuned compile (default schedules only, shipped records disabled);
        # ours_fp32_records applies the records shipped for this machine's cpu target.
        records = "none" if variant == "ours_fp32" else str(shipped_records_key_dir())
        info = compile_ours(path, tmp / variant, records=records)
        if variant == "ours_fp32_records" and not info.get("tuned_functions"):
            raise Unavailable("the shipped records hold no workload of this model for this target")
        artifact = load_artifact(tmp / variant)
        info["max_abs_vs_ort"] = compare(artifact.run(feeds), reference_out, "lossy")["max_abs"]
        return (lambda: artifact.run(feeds)), info
    if variant in QUANTIZED_VARIANTS:
        calib = write_calibration(calibration, tmp / "calib.npz")
        info = compile_ours(path, tmp / variant, calib=calib, quantize=QUANTIZED_VARIANTS[variant])
        artifact = load_artifact(tmp / variant)
        info["cosine_vs_fp32"] = compare(artifact.run(feeds), reference_out, "lossy")["cosine"]
        return (lambda: artifact.run(feeds)), info
    raise ValueError(f"unknown variant {variant}")


def bench_model(name: str, batch: int, runs: int, threads: int, variants: tuple[str, ...]) -> dict:
    """Measure every requested variant of one model at one batch size.

    Every variant is prepared first (compiled in a child process, quantized, loaded); then all of
    them are timed together, interleaved in short blocks (timing.measure_interleaved), so the
    reference and the candidates see the same load on a shared machine."""
    path = model_for(name, batch)
    feeds = _input_feeds(path)
    calibration = [_input_feeds(path, seed=s) for s in range(8)]
    result: dict = {"model": name, "batch": batch, "variants": {}}
    entries: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        tmp_path = Path(tmp)
        ref = _ort_session(path, threads)
        reference_out = ref.run(None, feeds)
        timed = {}
        for variant in variants:
            try:
                if variant == "onnxruntime_fp32":
                    timed[variant], entries[variant] = (lambda: ref.run(None, feeds)), {}
                else:
                    timed[variant], entries[variant] = _prepare(variant, path, tmp_path, feeds, calibration, threads, reference_out)
            except Unavailable as exc:
                entries[variant] = {"status": "unavailable", "reason": str(exc)}
            except Exception as exc:  # a broken variant is a result, not a crash of the suite
                entries[variant] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
        for variant, stats in measure_interleaved(timed, runs=runs).items():
            entries[variant].update(stats)
    for variant in variants:
        entry = entries[variant]
        entry.setdefault("status", "ok")
        result["variants"][variant] = entry
    reference = result["variants"].get("onnxruntime_fp32", {})
    base, base_min = reference.get("median_ms"), reference.get("min_ms")
    for entry in result["variants"].values():
        if base and "median_ms" in entry:
            entry["ratio_to_onnxruntime_fp32"] = entry["median_ms"] / base
            # Ratio of the fastest runs: load from other processes only ever adds time, so on a
            # shared machine this is the steadier measure of the code itself.
            entry["min_ratio_to_onnxruntime_fp32"] = entry["min_ms"] / base_min
    return result
