"""Compile one model in a child process and print its compile time and peak memory as JSON.

A separate process gives an honest peak RSS for the compile (TVM's memory is native, invisible to
tracemalloc) and a cold start like a user's.
"""

from __future__ import annotations

import json
import resource
import sys
import time


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("output")
    parser.add_argument("--input-shape", action="append", default=[])
    parser.add_argument("--passes", default=None)
    parser.add_argument("--quantize", default=None)
    parser.add_argument("--calib", default=None)
    parser.add_argument("--tuning-records", default=None,
                        help="a records directory, or 'none' for the default schedules only (no shipped records)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    import tempfile

    from compiler.api import compile_model
    from compiler.frontend import parse_input_shape

    shapes = dict(parse_input_shape(s) for s in args.input_shape)
    with tempfile.TemporaryDirectory() as no_records:
        # An empty records directory overrides the shipped records (compile_model applies those
        # when given none), so "none" measures the hand-written default schedules alone.
        records = no_records if args.tuning_records == "none" else args.tuning_records
        result = compile_model(
            args.model, output=args.output, input_shapes=shapes, passes=args.passes,
            quantize=args.quantize, calibration=args.calib, tuning_records=records,
            verify=False, measure=False, force=True, progress=False,
        )
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lowering = result.report.get("lowering") or {}
    print(json.dumps({
        "compile_s": seconds,
        "peak_rss_mb": peak_mb,
        "unscheduled": lowering.get("unscheduled", []),
        "tuned_functions": sum(1 for rule in (lowering.get("scheduled") or {}).values() if rule == "tuned"),
        "lowering_s": result.report.get("run", {}).get("lowering_s"),
        # N when the artifact runs the batch image by image (targets/lowering/batch_split.py)
        "per_image_batch": lowering.get("per_image_batch"),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
