"""``python -m benchmarks.compression``: structured pruning and low-rank rewrites, measured in one run.

    python -m benchmarks.compression                           # all models, 20 timed runs each
    python -m benchmarks.compression --models digits --runs 30

For each model it compiles, on the host CPU with TVM and in the same process, four variants:

    baseline   canonicalize only
    prune      --prune 0.3
    lowrank    --lowrank auto
    both       --prune 0.3 --lowrank auto

and records for each the measured latency (median of ``--runs`` runs after warm-up; the variants are
timed interleaved, in blocks that rotate, so load bursts on a shared machine hit all of them alike),
its ratio to the baseline artifact measured in this run, the report's estimated latency before/after, and an accuracy
proxy against the baseline artifact: top-1 agreement and cosine similarity of the outputs -- on
the 540 held-out digits for the digits example (real data; it also gets its real top-1 on that
split, from the report), on 16 seeded random inputs for the zoo models. Zoo models are calibrated with seeded random inputs (there is no real data for them).

Per layer (unless ``--no-profile``): every compressed variant is compiled with ``profile_layers``,
so each entry carries the passes' per-layer rows -- kept channels / ranks, estimated ms before and
after, TVM-measured ms before and after (per-kernel medians), error, and why a layer was left alone
-- and the profiled whole-model times (``profile``; "VM ratio" in the table: the compressed fp32
model's Relax VM time over the uncompressed one's, without the Python staging of ``run``, which
dominates a 30-microsecond model like digits).

Results go to ``benchmarks/results/compression-<UTC time>.json``. A variant that fails to compile
or run is recorded with ``"status": "failed"`` and the error, never dropped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

from benchmarks import machine
from benchmarks.timing import measure_interleaved

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
MODELS = ("digits", "transformer", "resnet18", "mobilenetv2")
#: variant name -> (prune, lowrank)
VARIANTS = {
    "baseline": (None, None),
    "prune": (0.3, None),
    "lowrank": (None, "auto"),
    "both": (0.3, "auto"),
}
#: Zoo models: input name, shape, dtype (batch 1).
ZOO_INPUTS = {
    "resnet18": ("x", (1, 3, 224, 224), "float32"),
    "mobilenetv2": ("x", (1, 3, 224, 224), "float32"),
    "transformer": ("tokens", (1, 32), "int64"),
}
PROXY_INPUTS = 16
CALIB_SAMPLES = 8


def _random_input(shape, dtype: str, rng: np.random.Generator) -> np.ndarray:
    if np.issubdtype(np.dtype(dtype), np.integer):
        return rng.integers(0, 256, size=shape, dtype=dtype)
    return rng.standard_normal(shape).astype(dtype)


def model_setup(name: str) -> dict:
    """Model path, calibration source, eval data and the 16 proxy feeds for a benchmark model."""
    if name == "digits":
        path = REPO / "examples" / "digits_cnn.onnx"
        inputs = ("x", (1, 1, 8, 8), "float32")
        calibration = REPO / "examples" / "digits_cnn.calib.npz"
        eval_data = REPO / "examples" / "digits_cnn.eval.npz"
    else:
        sys.path.insert(0, str(REPO))
        from tests.data.make_models import model_path

        path = model_path(name, batch=1)
        inputs = ZOO_INPUTS[name]
        input_name, shape, dtype = inputs
        rng = np.random.default_rng(1234)
        # Stacked samples keyed by input name; compile_model splits them into batches of 1.
        calibration = {input_name: np.concatenate([_random_input(shape, dtype, rng) for _ in range(CALIB_SAMPLES)])}
        eval_data = None
    input_name, shape, dtype = inputs
    if eval_data is not None:  # real held-out inputs, one feed per sample
        proxy = [{input_name: x[None]} for x in np.load(eval_data)[input_name]]
    else:
        rng = np.random.default_rng(0)
        proxy = [{input_name: _random_input(shape, dtype, rng)} for _ in range(PROXY_INPUTS)]
    return {"path": Path(path), "calibration": calibration, "eval_data": eval_data, "proxy_feeds": proxy}


def _agreement(reference: list[np.ndarray], candidate: list[np.ndarray]) -> dict:
    """Top-1 agreement (argmax over the last axis, every position) and cosine of the first output."""
    agree, total, cosines = 0, 0, []
    for ref, out in zip(reference, candidate):
        a, b = ref.astype(np.float64), out.astype(np.float64)
        agree += int(np.sum(a.argmax(-1) == b.argmax(-1)))
        total += a.argmax(-1).size
        denom = np.linalg.norm(a) * np.linalg.norm(b)
        cosines.append(float(a.ravel() @ b.ravel() / denom) if denom else float("nan"))
    return {
        "top1_agreement": agree / total if total else None,
        "cosine_mean": float(np.mean(cosines)),
        "cosine_min": float(np.min(cosines)),
        "max_abs_diff": float(max(np.max(np.abs(r.astype(np.float64) - c)) for r, c in zip(reference, candidate))),
    }


def _compression_summary(report: dict) -> dict:
    """Per-pass what changed (from the report's pass records), kept short."""
    out = {}
    for entry in report.get("passes", []):
        name = entry.get("name")
        if name in ("canonicalize",) or name is None:
            continue
        out[name] = {"modified": entry.get("modified"), "delta": entry.get("delta")}
    return out


def _layer_rows(report: dict) -> list[dict]:
    """The report's per-layer compression rows, without the node lists (kept short)."""
    from compiler.layer_profile import compression_rows

    keys = ("layer", "op", "status", "before", "after", "estimated_ms_before", "estimated_ms_after",
            "measured_ms_before", "measured_ms_after", "error", "reason")
    return [{"pass": name, **{k: row.get(k) for k in keys}} for name, row in compression_rows(report.get("passes", []))]


def bench_variant(name: str, variant: str, setup: dict, workdir: Path, runs: int, profile: bool = True) -> dict:
    from compiler.api import compile_model, load_artifact

    prune, lowrank = VARIANTS[variant]
    entry: dict = {"prune": prune, "lowrank": lowrank}
    out_dir = workdir / f"{name}-{variant}"
    start = time.perf_counter()
    try:
        result = compile_model(
            setup["path"],
            output=out_dir,
            prune=prune,
            lowrank=lowrank,
            calibration=setup["calibration"],
            eval_data=setup["eval_data"],
            verify=False,
            measure=False,
            force=True,
            progress=False,
            profile_layers=profile and variant != "baseline",
        )
    except Exception as exc:  # noqa: BLE001 - a benchmark records failures, it does not stop
        entry.update(status="failed", stage="compile", error=f"{type(exc).__name__}: {exc}", compile_s=time.perf_counter() - start)
        entry["traceback"] = traceback.format_exc(limit=4)
        return entry
    entry["compile_s"] = time.perf_counter() - start
    report = result.report
    summary = report.get("summary", {})
    est = summary.get("estimated_latency_ms") or {}
    entry["estimated_ms"] = {"before": est.get("before"), "after": est.get("after")}
    entry["params"] = {
        "before": (summary.get("before") or {}).get("parameters"),
        "after": (summary.get("after") or {}).get("parameters"),
    }
    entry["passes"] = _compression_summary(report)
    entry["layers"] = _layer_rows(report)
    if summary.get("compression_profile"):
        entry["profile"] = summary["compression_profile"]
    accuracy = summary.get("accuracy")
    if accuracy:
        entry["eval_top1"] = {
            k: (accuracy.get(k) or {}).get("top1") for k in ("original_onnxruntime", "optimized_onnxruntime", "artifact_tvm")
        }
    try:
        artifact = load_artifact(result.output_dir)
        entry["outputs"] = [artifact.run(f)[0] for f in setup["proxy_feeds"]]
    except Exception as exc:  # noqa: BLE001
        entry.update(status="failed", stage="run", error=f"{type(exc).__name__}: {exc}")
        entry["traceback"] = traceback.format_exc(limit=4)
        return entry
    entry["status"] = "ok"
    entry["artifact"] = artifact  # timed by bench_model with the other variants, then dropped
    return entry


def bench_model(name: str, runs: int, variants=tuple(VARIANTS), profile: bool = True) -> dict:
    setup = model_setup(name)
    record: dict = {"model": name, "path": str(setup["path"]), "proxy_inputs": len(setup["proxy_feeds"]),
                    "proxy_data": "held-out eval split" if setup["eval_data"] else "seeded random", "variants": {}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"edgekiln-compress-{name}-") as tmp:
        for variant in ("baseline", *[v for v in variants if v != "baseline"]):
            print(f"  {name} {variant} ...", file=sys.stderr, flush=True)
            record["variants"][variant] = bench_variant(name, variant, setup, Path(tmp), runs, profile)
        feeds0 = setup["proxy_feeds"][0]
        ok = {v: e for v, e in record["variants"].items() if e.get("status") == "ok"}
        timed = measure_interleaved({v: (lambda a=e["artifact"]: a.run(feeds0)) for v, e in ok.items()}, runs=runs)
        for variant, entry in ok.items():
            entry["latency"] = timed[variant]
            entry.pop("artifact")
    base = record["variants"]["baseline"]
    for variant, entry in record["variants"].items():
        if entry.get("status") != "ok" or base.get("status") != "ok":
            continue
        entry["ratio_to_baseline"] = entry["latency"]["median_ms"] / base["latency"]["median_ms"]
        entry["proxy"] = _agreement(base["outputs"], entry["outputs"])
    for entry in record["variants"].values():
        entry.pop("outputs", None)
    record["seconds"] = time.perf_counter() - started
    return record


def _fmt(value, spec: str, width: int) -> str:
    return f"{value:{width}{spec}}" if isinstance(value, (int, float)) and value is not None else f"{'-':>{width}}"


def _table(results: list[dict]) -> str:
    head = (
        f"{'model':<12} {'variant':<9} {'median ms':>10} {'ratio':>6} {'VM ratio':>8} {'est before':>10} {'est after':>10} "
        f"{'top1 agr':>8} {'cos mean':>8} {'eval top1':>9} {'compile s':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        for variant, e in r["variants"].items():
            if e.get("status") != "ok":
                lines.append(f"{r['model']:<12} {variant:<9} {e.get('status')} at {e.get('stage')}: {e.get('error', '')[:80]}")
                continue
            proxy = e.get("proxy", {})
            est = e.get("estimated_ms", {})
            top1 = (e.get("eval_top1") or {}).get("artifact_tvm")
            lines.append(
                f"{r['model']:<12} {variant:<9} {_fmt(e['latency']['median_ms'], '.3f', 10)} {_fmt(e.get('ratio_to_baseline'), '.2f', 6)} "
                f"{_fmt((e.get('profile') or {}).get('ratio'), '.2f', 8)} "
                f"{_fmt(est.get('before'), '.3f', 10)} {_fmt(est.get('after'), '.3f', 10)} "
                f"{_fmt(proxy.get('top1_agreement'), '.3f', 8)} {_fmt(proxy.get('cosine_mean'), '.4f', 8)} "
                f"{_fmt(top1, '.4f', 9)} {_fmt(e.get('compile_s'), '.1f', 9)}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compression", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), help="baseline always runs")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per variant after warm-up (default 20)")
    parser.add_argument("--threads", type=int, default=1, help="TVM_NUM_THREADS for the artifacts (default 1: steady on a shared machine; 0 = all cores)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where the JSON goes (default benchmarks/results)")
    parser.add_argument("--no-save", action="store_true", help="print only; write no result file")
    parser.add_argument("--no-profile", action="store_true", help="skip the per-layer before/after kernel timing (two extra builds per compressed variant)")
    args = parser.parse_args(argv)
    saved_threads = os.environ.get("TVM_NUM_THREADS")
    if args.threads > 0:  # read by TVM's thread pool when the first library runs
        os.environ["TVM_NUM_THREADS"] = str(args.threads)
    try:
        return _run(args)
    finally:  # main() is also called in-process (tests): leave the environment as it was
        if saved_threads is None:
            os.environ.pop("TVM_NUM_THREADS", None)
        else:
            os.environ["TVM_NUM_THREADS"] = saved_threads


def _run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    results = []
    for name in args.models:
        print(f"benchmarking {name} ...", file=sys.stderr, flush=True)
        results.append(bench_model(name, args.runs, tuple(args.variants), not args.no_profile))
    record = {
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine.describe(),
        "runs": args.runs,
        "threads": args.threads or "all cores",
        "target": "cpu",
        "results": results,
        "total_s": time.perf_counter() - started,
    }
    print(_table(results))
    print(f"machine: {record['machine']['cpu']}, {record['machine']['logical_cores']} cores; total {record['total_s']:.0f} s")
    if not args.no_save:
        args.results_dir.mkdir(parents=True, exist_ok=True)
        stamp = record["time"].replace(":", "").replace("+00:00", "Z").replace("+0000", "Z")
        path = args.results_dir / f"compression-{stamp}.json"
        path.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
