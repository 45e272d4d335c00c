"""The ``compile`` command. Imports nothing heavy until it has parsed its arguments, so ``--help`` is fast.

Exit codes: 0 success; 2 bad input or option; 3 a pass failed; 4 verification failed;
5 lowering failed; 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXAMPLES = """\
examples:
  compile examples/digits_cnn.onnx --target cpu
      compile the bundled example; writes ./digits_cnn-cpu/ (model.so, report.html, ...)
  compile model.onnx --target cpu -o out/ --passes "canonicalize" --calib calib.npz
      choose the passes and the calibration data (an .npz of stacked inputs keyed by input name)
  compile model.onnx --quantize int8 --calib calib.npz
      integer-only int8 (HAWQ-V3 dyadic requantization), bit-exact across reference, ORT and TVM
  compile model.onnx --quantize int8-w7 --calib calib.npz
      7-bit weight codes: on x86 CPUs without VNNI (AVX2) the int8 convs use vpmaddubsw, still exact
  compile model.onnx --quantize int4 --weight-rounding gptq --calib calib.npz
      4-bit weights whose rounding is chosen per layer on the calibration data (GPTQ)
  compile model.onnx --quantize int8 --budget size=2MB --max-drop 0.5 --calib calib.npz
      mixed 8/4-bit weights chosen by an ILP under the budget, within the accuracy drop
  compile model.onnx --prune 0.3 --lowrank auto --calib calib.npz
      prune channels and factorize layers where the target's cost model says it pays
  compile model.onnx --tune 32 --tuning-records records/
      tune with MetaSchedule once; later compiles with --tuning-records records/ reuse it
  compile model.onnx --target rpi4 --rpc-tracker 127.0.0.1:9190 --rpc-key rpi4
      build for the board, then run, check and time the artifact on it through a TVM RPC tracker
  compile model.onnx --input-shape x=1,3,224,224
      fix symbolic input dims (repeat the option for several inputs)
  compile model.onnx --passes "canonicalize,my-pass{ratio=0.5}" --plugin my_passes
      run your own pass, registered with @register_pass in module my_passes
  compile --list-targets        compile --list-passes

then, in Python:
  from compiler import load_artifact
  outputs = load_artifact("digits_cnn-cpu").run({"x": x})   # like InferenceSession.run(None, feeds)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compile",
        description="Compile an ONNX model for a target board: optimize it with graph passes, lower it "
        "through Apache TVM, verify it against ONNX Runtime and write an output directory with the "
        "library, the optimized ONNX model and a report.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", nargs="?", help="the .onnx file to compile")
    parser.add_argument("-t", "--target", default="cpu", help="target name (default: cpu; see --list-targets)")
    parser.add_argument("-o", "--output", metavar="DIR", help="output directory (default: ./<model-stem>-<target>/)")
    parser.add_argument("--passes", metavar="SPEC", help='pass pipeline, e.g. "canonicalize,fold-constants" (default: canonicalize; see --list-passes; @FILE reads the spec from a file such as pipeline.txt)')
    parser.add_argument("--calib", metavar="NPZ|DIR", help="calibration inputs: .npz of stacked samples keyed by input name, or a directory of .npy files (<input>.npy stacked, or one file per sample for a one-input model); default: <model-stem>.calib.npz beside the model, if present")
    parser.add_argument("--eval", metavar="NPZ", dest="eval_data", help="held-out inputs plus 'labels' for the accuracy report (default: <model-stem>.eval.npz beside the model, if present)")
    parser.add_argument("--input-shape", metavar="NAME=D0,D1,...", action="append", default=[], help="static shape for an input with symbolic dims (repeatable)")
    quant = parser.add_argument_group("quantization")
    quant.add_argument("--quantize", choices=["int8", "int8-w7", "int4"], help="quantize to an integer-only graph (int8; int8-w7 = 7-bit weights, ONNX Runtime's reduce_range: exact and faster int8 convs on x86 CPUs without VNNI; int4 = 4-bit weights); needs calibration data")
    quant.add_argument("--format", dest="output_format", choices=["integer", "qdq"], default="integer", help="integer: integer-only HAWQ-V3 graph (default); qdq: QuantizeLinear/DequantizeLinear pairs for ONNX Runtime / TensorRT")
    quant.add_argument("--budget", metavar="KIND=VALUE", action="append", default=[], help="mixed precision: per-layer 8/4-bit widths chosen by an ILP under size=2MB, latency=0.7x (vs int8) or bops=1G (repeatable)")
    quant.add_argument("--max-drop", metavar="POINTS", type=float, help="mixed precision: allowed top-1 agreement drop vs fp32 (points); sensitive layers are raised until it holds")
    quant.add_argument("--sensitivity", choices=["perturbation", "hessian"], help="mixed precision: per-layer sensitivity estimator, output perturbation (default) or Hessian trace x quantization error")
    quant.add_argument("--observer", choices=["minmax", "percentile", "mse"], help="activation range observer (default: minmax)")
    quant.add_argument("--weight-rounding", dest="rounding", choices=["nearest", "gptq"], help="weight rounding: nearest (default) or gptq (per-layer codes that minimise the layer's output error on the calibration data; recommended for int4)")
    compress = parser.add_argument_group("pruning and low-rank (decided with the target's cost model)")
    compress.add_argument("--prune", metavar="RATIO", type=float, help="remove channels until RATIO of the estimated latency is saved (e.g. 0.3); weights re-fitted on calibration data")
    compress.add_argument("--profile-layers", action="store_true", help="time every layer with TVM before and after compression (two extra builds) to fill the measured column of the report's per-layer table")
    compress.add_argument("--lowrank", metavar="auto|ENERGY", help="factorize Gemm/MatMul/Conv: 'auto' where the cost model predicts a speed-up within the error budget, or keep ENERGY (e.g. 0.99) of the singular-value energy")
    tuning = parser.add_argument_group("tuning")
    tuning.add_argument("--tune", metavar="TRIALS", type=int, default=0, help="tune conv/matmul kernels with MetaSchedule (TRIALS per kernel) before building; Ctrl-C stops and keeps what was found")
    tuning.add_argument("--tuning-records", metavar="DIR", help="apply (and with --tune, extend) the tuning records in DIR (default for --tune: ~/.cache/edgekiln/tuning)")
    board = parser.add_argument_group("running on a board (TVM RPC; see README 'Measuring on a board')")
    board.add_argument("--rpc-tracker", metavar="HOST:PORT", help="TVM RPC tracker: after building, run the artifact on a board registered there, compare it with ONNX Runtime and time it on the board")
    board.add_argument("--rpc-key", metavar="KEY", help="device key the board's rpc_server registered with (its --key)")
    board.add_argument("--rpc-timeout", metavar="SECONDS", type=float, help="how long to wait for a free server with the key (default: 60)")
    verify = parser.add_mutually_exclusive_group()
    verify.add_argument("--verify", dest="verify", action="store_const", const=True, default="auto", help="check every pass against ONNX Runtime (default: on for models up to 30M weights)")
    verify.add_argument("--no-verify", dest="verify", action="store_const", const=False, help="skip the per-pass checks (the artifact is still checked)")
    parser.add_argument("--per-image", choices=["auto", "on", "off"], default="auto", help="batched models: run the batch image by image inside the artifact (one batch-1 network called N times), which keeps each layer's activations in cache; auto (default) does it where the graph provably acts image by image and the target's cache model predicts less memory traffic; the report's lowering notes say which")
    parser.add_argument("--arch", metavar="SM", help="GPU architecture for CUDA targets, e.g. sm_80 or sm_90 (default: the target's)")
    parser.add_argument("--estimate-only", action="store_true", help="run the passes and print the target's per-layer cost estimate; build nothing, write nothing")
    parser.add_argument("--no-lower", dest="lower", action="store_false", help="run the ONNX passes and write the report, but do not build with TVM")
    parser.add_argument("--no-measure", dest="measure", action="store_false", help="do not time the artifact and ONNX Runtime")
    parser.add_argument("--plugin", metavar="MODULE", action="append", default=[], help="import a Python module that registers extra passes (repeatable)")
    parser.add_argument("-f", "--force", action="store_true", help="replace an existing output directory")
    parser.add_argument("--seed", type=int, default=0, help="seed for random verification inputs (default: 0)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar, only errors")
    parser.add_argument("--list-targets", action="store_true", help="list the targets and exit")
    parser.add_argument("--list-passes", action="store_true", help="list the registered passes and aliases and exit")
    return parser


def _list_targets() -> None:
    from targets import list_targets

    for target in list_targets():
        aliases = f" (alias: {', '.join(target.aliases)})" if target.aliases else ""
        print(f"{target.name:<20} {target.description}{aliases}")


def _list_passes() -> None:
    from compiler.pass_base import pass_aliases, registered_passes

    for name, cls in sorted(registered_passes().items()):
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"{name:<24} {summary}")
    for alias, names in sorted(pass_aliases().items()):
        print(f"{alias:<24} alias: {','.join(names)}")


def _summary_line(result) -> str:
    report = result.report
    lines = [f"wrote {result.output_dir}/"]
    check = report.get("summary", {}).get("verification", {}).get("artifact_vs_onnxruntime")
    if check and "where" not in check:  # a check made on a board is reported on its own line below
        lines.append(f"  artifact vs ONNX Runtime: max abs error {check['max_abs']:.3g} ({check['policy']}: {'ok' if check['passed'] else 'FAILED'})")
    exact = report.get("summary", {}).get("verification", {}).get("integer_bit_exact")
    if exact:
        lines.append("  integer-only: " + ("reference == ONNX Runtime == TVM, bit-exact" if exact.get("passed") else exact.get("reason", "")))
    accuracy = report.get("summary", {}).get("accuracy")
    if accuracy:
        parts = [f"{k.replace('_', ' ')} {v['top1'] * 100:.2f}%" for k, v in accuracy.items() if isinstance(v, dict) and "top1" in v]
        lines.append("  top-1: " + ", ".join(parts))
    run = report.get("run", {})
    if "artifact" in run and "onnxruntime_fp32" in run:
        ours, ref = run["artifact"]["median_ms"], run["onnxruntime_fp32"]["median_ms"]
        lines.append(f"  latency (measured, this machine): {ours:.3f} ms vs ONNX Runtime {ref:.3f} ms ({ours / ref:.2f}x)")
    device = report.get("summary", {}).get("verification", {}).get("artifact_on_device_vs_onnxruntime")
    if device:
        lines.append(f"  on {device['where']}: max abs error {device['max_abs']:.3g} vs ONNX Runtime ({device['policy']}: ok)")
    if "artifact_rpc" in run:
        lines.append(f"  latency (measured on the device via TVM RPC, key '{run['artifact_rpc']['key']}'): "
                     f"{run['artifact_rpc']['median_ms']:.3f} ms, median of {run['artifact_rpc']['runs']}")
    lines.append(f"  report: {result.output_dir / 'report.html'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from compiler.errors import EdgekilnError

    try:
        if args.list_targets:
            _list_targets()
            return 0
        if args.list_passes or args.model is None:
            for module in args.plugin:
                _import_plugin(module)
            if args.list_passes:
                _list_passes()
                return 0
            parser.print_usage(sys.stderr)
            print("compile: error: give a model to compile (or --list-targets / --list-passes)", file=sys.stderr)
            return 2
        for module in args.plugin:
            _import_plugin(module)
        from compiler.api import compile_model
        from compiler.frontend import parse_input_shape

        shapes = dict(parse_input_shape(text) for text in args.input_shape)
        target = args.target
        if args.arch:
            from targets.registry import with_arch

            target = with_arch(target, args.arch)
        if args.estimate_only:
            from compiler.api import estimate_model

            rows = estimate_model(
                args.model, target, passes=args.passes, input_shapes=shapes, calibration=args.calib,
                quantize=args.quantize, output_format=args.output_format, observer=args.observer,
                prune=args.prune, lowrank=args.lowrank, seed=args.seed, rounding=args.rounding,
            )
            print(_estimate_table(rows))
            return 0
        passes = args.passes
        if passes is not None and passes.startswith("@"):
            passes = _read_spec_file(passes[1:])
        result = compile_model(
            args.model,
            target=target,
            output=args.output,
            passes=passes,
            input_shapes=shapes,
            calibration=args.calib,
            eval_data=args.eval_data,
            verify=args.verify,
            lower=args.lower,
            measure=args.measure,
            force=args.force,
            quantize=args.quantize,
            output_format=args.output_format,
            observer=args.observer,
            rounding=args.rounding,
            prune=args.prune,
            lowrank=args.lowrank,
            budgets=_parse_budgets(args.budget),
            max_drop=args.max_drop,
            sensitivity=args.sensitivity,
            tune=args.tune,
            tuning_records=args.tuning_records,
            seed=args.seed,
            progress=False if args.quiet else None,
            rpc_tracker=args.rpc_tracker,
            rpc_key=args.rpc_key,
            rpc_timeout=args.rpc_timeout,
            profile_layers=args.profile_layers,
            per_image=args.per_image,
        )
    except EdgekilnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; no output written", file=sys.stderr)
        return 130
    if not args.quiet:
        print(_summary_line(result))
    return 0


def _parse_budgets(items: list[str]) -> dict[str, str]:
    from compiler.errors import OptionError

    budgets = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not value:
            raise OptionError(f"--budget {item}: expected KIND=VALUE, e.g. size=2MB or latency=0.7x")
        budgets[key.strip()] = value.strip()
    return budgets


def _estimate_table(rows: list[dict]) -> str:
    """Per-layer estimate as text: the slowest layers first, and the total (all estimates)."""
    if not rows:
        return "no nodes"
    total = sum(r.get("est_us") or 0.0 for r in rows)
    source = rows[0].get("source", "roofline")
    lines = [f"{'node':<40} {'op':<18} {'prec':<5} {'MACs':>12} {'bytes':>12} {'est. us':>10} bound",
             "-" * 110]
    for r in sorted(rows, key=lambda r: -(r.get("est_us") or 0.0)):
        lines.append(f"{str(r['node'])[:40]:<40} {r['op']:<18} {r.get('precision', ''):<5} {r.get('macs', 0):>12,} "
                     f"{r.get('bytes', 0):>12,} {r.get('est_us') or 0.0:>10.2f} {r.get('bound', '')}")
    lines.append(f"total ({source}): {total / 1000:.3f} ms over {len(rows)} nodes")
    return "\n".join(lines)


def _import_plugin(module: str) -> None:
    import importlib

    from compiler.errors import OptionError

    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise OptionError(f"--plugin {module}: cannot import ({exc})") from None


def _read_spec_file(path: str) -> str:
    from compiler.errors import OptionError

    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise OptionError(f"--passes @{path}: cannot read ({exc.strerror})") from None


if __name__ == "__main__":
    sys.exit(main())
