"""Regenerate the tuning records shipped in targets/records/ for this machine's ``cpu`` target.

    python -m benchmarks.ship_records --trials 16 --scratch /tmp/edgekiln-tuning

Tunes the tasks of :data:`PLAN` into a scratch record set (``--scratch``; rerunning continues it),
then writes the pruned set (``tuning.prune_records``: only workloads where MetaSchedule beat our
default schedule by more than ``--min-gain``, also when both are timed again back to back, one
record each) to
``targets/records/<target key>/``, which ``compile`` applies when the user names no records.

Records are per target key (the resolved target: LLVM CPU name and core count, plus the TVM and
tvm-ffi versions): a set made on a 2-core znver3 is not used on znver4 or on a 4-core znver3.
Tuning times candidates on this machine, so run it on an otherwise idle machine if you can.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

#: model -> task-name substrings to tune (None: every conv/matmul). The benchmark models' lists
#: are the kernels furthest from ONNX Runtime in the one-core per-kernel profile on Zen 3 (the
#: stems, MobileNetV2's stride-2 depthwise and 112/56-pixel pointwise layers); with a budget of
#: tens of trials MetaSchedule does not beat the default schedules on the well-tiled 3x3 convs.
PLAN: dict[str, list[str] | None] = {
    "digits": None,
    "mobilenetv2": ["fused_conv2d_add", "fused_conv2d1_add", "fused_conv2d3_add", "fused_conv2d4_add",
                    "fused_conv2d5_add", "fused_conv2d9_add", "fused_conv2d14_add", "fused_conv2d23_add"],
    "resnet18": ["fused_conv2d_add"],
}


def optimized_model(name: str, work: Path):
    """The benchmark model after the compile's graph passes (what lowering, and so tuning, sees)."""
    import onnx

    from benchmarks.latency import model_for
    from compiler.api import compile_model

    out = work / f"{name}-optimized"
    compile_model(str(model_for(name, 1)), output=str(out), verify=False, measure=False, force=True,
                  progress=False, lower=False)
    return onnx.load(str(out / "model.opt.onnx"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ship_records", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=16, help="MetaSchedule trials per task (default 16)")
    parser.add_argument("--scratch", type=Path, required=True, help="record set to tune into (kept; rerun continues it)")
    parser.add_argument("--models", nargs="+", default=list(PLAN), choices=list(PLAN))
    parser.add_argument("--min-gain", type=float, default=0.05, help="ship a record only if it beats the default by this fraction")
    parser.add_argument("--prune-only", action="store_true", help="do not tune; prune --scratch into targets/records")
    parser.add_argument("--remeasure", type=int, default=5, metavar="ROUNDS",
                        help="re-time each winning record against the default schedule, alternately, ROUNDS times (default 5)")
    args = parser.parse_args(argv)

    from compiler.api import SHIPPED_RECORDS_DIR
    from targets import get_target
    from targets.lowering import tuning

    target = get_target("cpu")
    if not args.prune_only:
        with tempfile.TemporaryDirectory() as work:
            for name in args.models:
                start = time.perf_counter()
                summary = tuning.tune(optimized_model(name, Path(work)), target, {}, args.scratch, args.trials,
                                      progress=tuning.print_progress, op_names=PLAN[name])
                print(f"{name}: {len(summary.tasks)} tasks, {summary.trials} trials, {time.perf_counter() - start:.0f} s",
                      file=sys.stderr)
    key_dir = tuning.find_records(args.scratch, target)
    if key_dir is None:
        print(f"no record set for this target under {args.scratch}", file=sys.stderr)
        return 1
    kept = tuning.prune_records(key_dir, SHIPPED_RECORDS_DIR, args.min_gain, args.remeasure, target)

    def us(value):
        return "-" if value is None else f"{value:.1f} us"

    for w in kept:
        again = f"  re-timed {us(w.remeasured_default_us)} vs {us(w.remeasured_best_us)}" if w.remeasured_best_us else ""
        print(f"{'ship' if w.kept else 'drop'}  default {us(w.default_us):>10}  best {us(w.best_us):>10}{again}  {w.function}")
    print(f"wrote {SHIPPED_RECORDS_DIR / key_dir.name}: {sum(w.kept for w in kept)} of {len(kept)} workloads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
