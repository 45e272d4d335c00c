"""``python -m benchmarks``: run the latency suite, print a table, write JSON, check regressions.

    python -m benchmarks                                  # all models, batch 1 and 8
    python -m benchmarks --models resnet18 --batch 1 --runs 30
    python -m benchmarks --check                          # compare with the last history entry

Results go to ``benchmarks/results/<UTC time>.json`` and one line per run to
``benchmarks/results/history.jsonl``. ``--check`` exits 1 when a ratio to ONNX Runtime got more
than ``--tolerance`` worse than in the previous run on the same machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

from benchmarks import latency, machine

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("digits", "transformer", "resnet18", "mobilenetv2")


def _table(results: list[dict]) -> str:
    head = f"{'model':<12} {'batch':>5}  " + "  ".join(f"{v:>23}" for v in latency.VARIANTS)
    lines = [head, "-" * len(head), "  (median ms, median ratio / fastest-run ratio to onnxruntime_fp32)"]
    for r in results:
        cells = []
        for v in latency.VARIANTS:
            e = r["variants"].get(v)
            if not e:
                cells.append(f"{'-':>23}")
            elif "median_ms" in e:
                ratio, low = e.get("ratio_to_onnxruntime_fp32"), e.get("min_ratio_to_onnxruntime_fp32")
                cells.append(f"{e['median_ms']:>9.3f}ms {ratio:4.2f}x/{low:4.2f}x" if ratio else f"{e['median_ms']:>21.3f}ms")
            else:
                cells.append(f"{e['status']:>23}")
        lines.append(f"{r['model']:<12} {r['batch']:>5}  " + "  ".join(cells))
    return "\n".join(lines)


def _regressions(current: list[dict], previous: list[dict], tolerance: float) -> list[str]:
    old = {(r["model"], r["batch"], v): e.get("ratio_to_onnxruntime_fp32") for r in previous for v, e in r["variants"].items()}
    found = []
    for r in current:
        for v, e in r["variants"].items():
            before, now = old.get((r["model"], r["batch"], v)), e.get("ratio_to_onnxruntime_fp32")
            if before and now and now > before * (1 + tolerance):
                found.append(f"{r['model']} b{r['batch']} {v}: {before:.2f}x -> {now:.2f}x")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--variants", nargs="+", default=list(latency.VARIANTS), choices=latency.VARIANTS)
    parser.add_argument("--runs", type=int, default=20, help="timed runs per variant after warm-up (default 20)")
    parser.add_argument("--threads", type=int, default=0,
                        help="threads for ONNX Runtime (intra-op) and for edgekiln's artifacts (TVM_NUM_THREADS); 0 = all cores")
    parser.add_argument("--check", action="store_true", help="fail when a ratio regressed against the previous run")
    parser.add_argument("--tolerance", type=float, default=0.15, help="allowed relative ratio regression for --check")
    parser.add_argument("--no-save", action="store_true", help="print only; write no result files")
    args = parser.parse_args(argv)

    if args.threads > 0:
        # Read by TVM's thread pool when it starts (the first parallel kernel), after this line.
        os.environ["TVM_NUM_THREADS"] = str(args.threads)
    results = []
    for name in args.models:
        for batch in args.batch:
            print(f"benchmarking {name} batch {batch} ...", file=sys.stderr, flush=True)
            results.append(latency.bench_model(name, batch, args.runs, args.threads, tuple(args.variants)))
    record = {
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine.describe(),
        "runs": args.runs,
        "threads": args.threads or "all cores",
        "results": results,
    }
    print(_table(results))
    feats = record["machine"]["features"]
    print(f"machine: {record['machine']['cpu']} ({record['machine']['llvm_cpu']}), {record['machine']['logical_cores']} cores, threads: {record['threads']}; "
          + ", ".join(k for k, v in feats.items() if v))
    history = RESULTS / "history.jsonl"
    previous = None
    if history.exists():
        lines = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
        same = [r for r in lines if machine.same_machine(r["machine"], record["machine"])
                and r.get("threads", "all cores") == record["threads"]]
        previous = same[-1] if same else None
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        stamp = record["time"].replace(":", "").replace("+0000", "Z")
        (RESULTS / f"{stamp}.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        with history.open("a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
    if args.check and previous:
        found = _regressions(results, previous["results"], args.tolerance)
        if found:
            print("regressions:\n  " + "\n  ".join(found))
            return 1
        print("no regression against", previous["time"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
