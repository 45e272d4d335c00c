"""Cost model vs measured per-layer latency on this host, before and after calibration.

    python -m benchmarks.cost_model [--models resnet18 mobilenetv2] [--repeats 10] [--no-save]

For each model: lower for ``cpu``, time every kernel (targets/calibrate_cost.py), pair kernels with
ONNX node groups, and print the Spearman rank correlation and the summed-time error of the
roofline estimate before calibration, after calibration on all models (in-sample), and after
calibration on the *other* models only (held out). The pooled fit is saved as the ``cpu``
calibration record unless ``--no-save``. Estimates are estimates; the times are measurements.
"""

from __future__ import annotations

import argparse
import sys

from targets import calibrate_cost as cc
from targets import get_target


def _line(label: str, result: dict[str, float]) -> str:
    return (f"  {label:<26} spearman {result['spearman']:6.3f}   predicted {result['predicted_ms']:8.2f} ms"
            f"   measured {result['measured_ms']:8.2f} ms   error {result['total_error'] * 100:+6.1f}%")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenetv2"])
    parser.add_argument("--target", default="cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-save", dest="save", action="store_false")
    args = parser.parse_args(argv)

    from tests.data.make_models import model_path

    target = get_target(args.target)
    samples: dict[str, list[cc.LayerSample]] = {}
    for name in args.models:
        model = cc.prepare_model(model_path(name), target)
        samples[name], info = cc.collect_samples(model, target, args.repeats)
        print(f"{name}: {info['paired']} of {info['kernels']} kernels paired with {info['groups']} node groups; "
              f"model {info['measured_model_ms']:.2f} ms (sum of kernels {info['kernel_sum_ms']:.2f} ms)")
    pooled = cc.calibrate(samples, target)
    print(f"\nfitted factors (measured / roofline) on {', '.join(args.models)}: "
          + ", ".join(f"{k}={v:.2f}" for k, v in pooled.factors.items()) + f"; default {pooled.default:.2f}\n")
    for name, layer_samples in samples.items():
        print(f"{name} ({len(layer_samples)} layers)")
        print(_line("roofline (uncalibrated)", cc.score(layer_samples)))
        print(_line("calibrated (all models)", cc.score(layer_samples, pooled.factors, pooled.default)))
        others = {k: v for k, v in samples.items() if k != name}
        if others:
            held = cc.calibrate(others, target)
            print(_line("calibrated (held out)", cc.score(layer_samples, held.factors, held.default)))
    if args.save:
        print(f"\nsaved {cc.save_calibration(pooled)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
