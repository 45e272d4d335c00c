"""Cost model vs measured per-layer latency on this host (or a board), before and after calibration.

    python -m benchmarks.cost_model [--models resnet18 mobilenetv2] [--repeats 30] [--no-save]
    python -m benchmarks.cost_model --target rpi4 --rpc-tracker HOST:9190 --rpc-key rpi4

With ``--rpc-tracker``/``--rpc-key`` the kernels are timed on the board registered at the TVM RPC
tracker (each kernel alone, by the board's time_evaluator; targets/calibrate_cost.py), and the
fitted record is saved for ``--target``, so the next ``compile --target rpi4`` estimates with it.
``--models`` takes zoo names or paths of .onnx files.

For each model: lower for ``cpu``, time every kernel (targets/calibrate_cost.py; the median of
``--repeats`` runs per kernel, after a warm-up run), pair kernels with ONNX node groups, and print,
for each predictor, the Spearman rank correlation between predicted and measured per-kernel times,
the error of the summed per-kernel prediction against the summed measured kernels (``layers``),
and the error of the whole-model prediction (every fused group of the model) against the measured
end-to-end run time (``model``). Predictors:

- ``roofline (uncalibrated)``: max(compute, memory) + overhead, the target's spec numbers;
- ``factor/family (all)``: the older fit, one efficiency factor per op family, fitted on all models;
- ``coeffs (all)``: the coefficient model (a*compute + b*activation + w*weight + c per family,
  NNLS), fitted on all models (in-sample);
- ``coeffs (this model)`` and ``coeffs (other models)``: fitted on this model only / on the other
  models only (cross-model, held out).

The all-models coefficient fit is saved as the ``--target`` calibration record unless ``--no-save``.
Predictions are estimates; the times are measurements (a shared machine: expect a few % noise).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from targets import calibrate_cost as cc
from targets import get_target
from targets.cost_model import RooflineCostModel


def _line(label: str, result: dict[str, float], model_error: float) -> str:
    return (f"  {label:<26} spearman {result['spearman']:6.3f}   predicted {result['predicted_ms']:7.2f} ms"
            f"   measured {result['measured_ms']:7.2f} ms   error layers {result['total_error'] * 100:+6.1f}%"
            f"  model {model_error * 100:+6.1f}%")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenetv2"])
    parser.add_argument("--target", default="cpu")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--prior-weight", type=float, default=1.0,
                        help="pull of each family's coefficients toward the pooled ones (0: independent)")
    parser.add_argument("--no-save", dest="save", action="store_false")
    parser.add_argument("--rpc-tracker", metavar="HOST:PORT", help="measure on a board registered at this TVM RPC tracker")
    parser.add_argument("--rpc-key", metavar="KEY", help="the board's device key (its rpc_server --key)")
    parser.add_argument("--rpc-timeout", metavar="SECONDS", type=float, help="wait for a free server (default: 60)")
    args = parser.parse_args(argv)
    from compiler.errors import EdgekilnError

    try:
        return _run(args)
    except EdgekilnError as exc:  # unreachable tracker, unknown key, a model that does not build...
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def _run(args: argparse.Namespace) -> int:
    from tests.data.make_models import model_path

    def model_file(name: str):
        return Path(name) if name.endswith(".onnx") else model_path(name)

    target = get_target(args.target)
    rpc = None
    if args.rpc_tracker or args.rpc_key:
        from targets.lowering.rpc import RpcDevice, check_available, device_kind

        rpc = RpcDevice.from_options(args.rpc_tracker, args.rpc_key, args.rpc_timeout, device_kind(target.to_json()))
        check_available(rpc)
        print(f"measuring on {rpc.describe()}: each kernel timed alone by the board's time_evaluator\n")
    samples: dict[str, list[cc.LayerSample]] = {}
    groups: dict[str, list[cc.LayerGroup]] = {}
    measured_model_s: dict[str, float] = {}
    for name in args.models:
        model = cc.prepare_model(model_file(name), target)
        samples[name], info = cc.collect_samples(model, target, args.repeats, rpc=rpc)
        groups[name] = cc.group_nodes(model, RooflineCostModel(target))
        measured_model_s[name] = info["measured_model_ms"] / 1e3
        print(f"{name}: {info['paired']} of {info['kernels']} kernels paired with {info['groups']} node groups "
              f"({info['unpaired_kernels']} unpaired); model {info['measured_model_ms']:.2f} ms "
              f"(sum of kernels {info['kernel_sum_ms']:.2f} ms), median of {args.repeats} runs")
    pooled = cc.calibrate(samples, target, args.prior_weight)
    print(f"\nestimate model fitted on {', '.join(args.models)} ({pooled.layers} kernels): "
          f"t = a*compute + b*activation + w*weight + c[us] (roofline seconds; a, b, w are inverse efficiencies)")
    for family, coeffs in [*pooled.coefficients.items(), ("(pooled)", pooled.pooled)]:
        print(f"  {family:<15} " + "  ".join(f"{k[0]}={v:7.3f}" for k, v in zip(("a", "b", "w", "c"), coeffs)))
    print("  factor/family: " + ", ".join(f"{k}={v:.2f}" for k, v in pooled.factors.items())
          + f"; default {pooled.default:.2f}\n")

    def model_error(name: str, record: cc.Calibration | None, factors: bool = False) -> float:
        if record is None:
            predicted = sum(g.predicted_s for g in groups[name])
        elif factors:
            predicted = sum(g.predicted_s * record.factors.get(g.family, record.default) for g in groups[name])
        else:
            predicted = sum(max(record.predict(g.family, g.features, g.predicted_s), 0.0) for g in groups[name])
        return predicted / measured_model_s[name] - 1.0

    for name, layer_samples in samples.items():
        print(f"{name} ({len(layer_samples)} kernels)")
        print(_line("roofline (uncalibrated)", cc.score(layer_samples), model_error(name, None)))
        print(_line("factor/family (all)", cc.score(layer_samples, pooled.factors, pooled.default),
                    model_error(name, pooled, factors=True)))
        print(_line("coeffs (all)", cc.score(layer_samples, calibration=pooled), model_error(name, pooled)))
        own = cc.calibrate({name: layer_samples}, target, args.prior_weight)
        print(_line("coeffs (this model)", cc.score(layer_samples, calibration=own), model_error(name, own)))
        others = {k: v for k, v in samples.items() if k != name}
        if others:
            held = cc.calibrate(others, target, args.prior_weight)
            print(_line(f"coeffs ({'+'.join(others)})", cc.score(layer_samples, calibration=held),
                        model_error(name, held)))
    if args.save:
        print(f"\nsaved {cc.save_calibration(pooled)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
