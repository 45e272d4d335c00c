"""``python -m benchmarks.ab``: one model compiled from two or more source trees, timed interleaved.

    git worktree add /tmp/base HEAD                      # the code before your change
    python -m benchmarks.ab mobilenetv2 --quantize int8 base=/tmp/base new=.
    python -m benchmarks.ab resnet18 --quantize int8 base=. big-tiles=. --env big-tiles:EK_TILE=12

Each ``NAME=TREE`` variant is compiled by that tree's own code (``benchmarks.compile_child`` run
with the tree as working directory and ``PYTHONPATH``; ``--env NAME:KEY=VALUE`` sets environment
variables for one variant's compile, e.g. a switch an experiment reads), on the same calibration
inputs as the latency suite. The artifacts' outputs on the benchmark input are compared bit for bit
with the first variant's (a schedule change must not change an integer result). Then every variant
and the ONNX Runtime reference (``quantize_static`` int8 with ``--quantize``, else the fp32 model;
one intra-op thread) are timed round-robin (``timing.interleaved_samples``), ``--runs`` rounds of one
untimed and one timed call each, so a burst of load from other processes lands on all of them alike.

Reported per variant: the 10th / 25th percentile and median latency, and the **paired ratio**: the
median over rounds of (variant's time / reference's time in the same round). On a shared VM whose
speed moves by 2x within minutes the paired ratio is the number to compare; the ratio of medians
taken minutes apart is not. ``--pin CPU`` restricts the timing (not the compiles: the target's core
count is the process's CPU affinity, see targets/records/README.md) to one core.
"""

from __future__ import annotations

import os

os.environ.setdefault("TVM_NUM_THREADS", "1")  # before the TVM runtime starts its thread pool

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks import latency  # noqa: E402
from benchmarks.ort_quant import quantize_static_qdq  # noqa: E402
from benchmarks.timing import interleaved_samples  # noqa: E402

REFERENCE = "onnxruntime"


class ABError(Exception):
    """A bad variant spec or a variant that did not compile (one line for the user)."""


def parse_variants(specs: list[str], envs: list[str]) -> dict[str, tuple[Path, dict[str, str]]]:
    """``NAME=TREE`` specs and ``NAME:KEY=VALUE`` environment settings -> {name: (tree, env)}."""
    variants: dict[str, tuple[Path, dict[str, str]]] = {}
    for spec in specs:
        name, sep, tree = spec.partition("=")
        if not sep or not name or not tree:
            raise ABError(f"variant '{spec}': expected NAME=TREE (a source tree of edgekiln)")
        if name in variants or name == REFERENCE:
            raise ABError(f"variant '{spec}': the name '{name}' is already taken")
        path = Path(tree).resolve()
        if not (path / "benchmarks" / "compile_child.py").is_file():
            raise ABError(f"variant '{spec}': {path} is not an edgekiln source tree (no benchmarks/compile_child.py)")
        variants[name] = (path, {})
    for setting in envs:
        name, sep, assignment = setting.partition(":")
        key, eq, value = assignment.partition("=")
        if not sep or not eq or not key:
            raise ABError(f"--env '{setting}': expected NAME:KEY=VALUE")
        if name not in variants:
            raise ABError(f"--env '{setting}': no variant named '{name}'")
        variants[name][1][key] = value
    return variants


def summarize(samples: dict[str, list[float]], reference: str) -> dict[str, dict]:
    """Percentiles per name and the median over rounds of (time / reference's time that round)."""
    ref = np.array(samples[reference])
    out = {}
    for name, values in samples.items():
        ms = np.array(values)
        p10, p25, p50 = np.percentile(ms, [10, 25, 50])
        out[name] = {"p10_ms": float(p10), "p25_ms": float(p25), "median_ms": float(p50),
                     "paired_ratio": float(np.median(ms / ref)), "rounds": len(values)}
    return out


def run(model: str, variants: dict[str, tuple[Path, dict[str, str]]], quantize: str | None, batch: int, rounds: int,
        pin: int | None = None) -> dict:
    """Compile every variant, compare outputs, time them with the reference; returns the result."""
    from compiler.artifact import load_artifact

    path = latency.model_for(model, batch)
    feeds = latency._input_feeds(path)
    calibration = [latency._input_feeds(path, seed=s) for s in range(8)]
    result: dict = {"model": model, "batch": batch, "quantize": quantize, "variants": {}}
    with tempfile.TemporaryDirectory(prefix="edgekiln-ab-") as tmp:
        tmp_path = Path(tmp)
        calib = None
        if quantize:
            calib = latency.write_calibration(calibration, tmp_path / "calib.npz")
            reference_model = quantize_static_qdq(path, tmp_path / "ort-int8.onnx", calibration)
        else:
            reference_model = path
        session = latency._ort_session(reference_model, threads=1)
        fns: dict[str, Callable[[], object]] = {REFERENCE: lambda: session.run(None, feeds)}
        first_outputs = None
        for name, (tree, env) in variants.items():
            print(f"compiling {name} from {tree} ...", flush=True)
            try:
                info = latency.compile_ours(path, tmp_path / name, calib=calib, quantize=quantize or "int8",
                                            tree=tree, env=env)
            except RuntimeError as exc:
                raise ABError(f"compile of {name} in {tree} failed: {exc}") from exc
            artifact = load_artifact(tmp_path / name)
            outputs = artifact.run(feeds)
            if first_outputs is None:
                first_outputs, identical = outputs, True
            else:
                identical = all(np.array_equal(a, b) for a, b in zip(first_outputs, outputs))
            result["variants"][name] = {"tree": str(tree), "env": env, "compile_s": info["compile_s"],
                                        "outputs_identical_to_first": identical}
            fns[name] = lambda artifact=artifact: artifact.run(feeds)
        if pin is not None:
            os.sched_setaffinity(0, {pin})
        # one timed run per callable per round, no time limit: round i of each list is paired
        stats = summarize(interleaved_samples(fns, runs=rounds, block=1, max_seconds=float("inf")), REFERENCE)
    result["reference"] = {"kind": "onnxruntime int8 (quantize_static QDQ)" if quantize else "onnxruntime fp32", **stats[REFERENCE]}
    for name in variants:
        result["variants"][name].update(stats[name])
    return result


def table(result: dict) -> str:
    first = next(iter(result["variants"].values()))
    lines = [f"{result['model']} batch {result['batch']} {result['quantize'] or 'fp32'}, {first['rounds']} paired rounds; "
             f"reference: {result['reference']['kind']}",
             f"{'variant':14s} {'p10 ms':>8s} {'p25 ms':>8s} {'median':>8s} {'/ref':>7s} {'/first':>7s}  outputs"]
    base = first["paired_ratio"]
    rows = [(REFERENCE, result["reference"], "")] + [
        (name, v, "identical" if v["outputs_identical_to_first"] else "DIFFER") for name, v in result["variants"].items()]
    for name, v, same in rows:
        lines.append(f"{name:14s} {v['p10_ms']:8.3f} {v['p25_ms']:8.3f} {v['median_ms']:8.3f} {v['paired_ratio']:7.3f} "
                     f"{v['paired_ratio'] / base:7.3f}  {same}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=("digits", "transformer", "resnet18", "mobilenetv2"))
    parser.add_argument("variants", nargs="+", metavar="NAME=TREE", help="a variant: a name and an edgekiln source tree")
    parser.add_argument("--quantize", choices=("int8", "int8-w7"), default=None,
                        help="compile --quantize (the reference is then ONNX Runtime's quantize_static int8)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME:KEY=VALUE",
                        help="an environment variable for one variant's compile (repeatable)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=60, help="paired rounds (default 60)")
    parser.add_argument("--pin", type=int, default=None, metavar="CPU", help="time on this CPU only")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    if args.runs < 5:
        parser.error("--runs must be at least 5")
    if args.pin is not None and args.pin not in os.sched_getaffinity(0):
        parser.error(f"--pin {args.pin}: not one of this process's CPUs {sorted(os.sched_getaffinity(0))}")
    try:
        variants = parse_variants(args.variants, args.env)
        result = run(args.model, variants, args.quantize, args.batch, args.runs, args.pin)
    except ABError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
