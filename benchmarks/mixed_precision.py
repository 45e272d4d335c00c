"""``python -m benchmarks.mixed_precision``: the ILP's Pareto front against uniform int8 / int4, and
a budget run, measured in one run.

    python -m benchmarks.mixed_precision                         # resnet18 + transformer
    python -m benchmarks.mixed_precision --models digits --sweep 7 --no-compile

For each model (canonicalized; zoo models calibrated on 8 seeded random inputs, the digits CNN on
its bundled calibration set):

1. **Fronts.** The ``mixed-precision`` pass sweeps its ILP over a resource with uniform int8 as
   the top budget: the layers' weight *size* on the ``cpu`` target, and the *estimated latency*
   on the ``fpga`` target, the one target whose cost model has int4 compute (on the CPU, 4-bit
   weights are unpacked per inference and cost time, so uniform int8 is the CPU's latency
   optimum; the CPU's estimated latencies are recorded too). Every distinct map on a front, and
   uniform int8 / int4, is quantized (``quantize`` on the calibration data) and measured on 32
   held-out inputs (seeded draws of the zoo calibration distribution; the digits eval split): top-1 agreement with fp32 (argmax of
   the last axis, every position) and output SQNR (dB). A uniform point is *dominated* when a
   front point has at most its resource and at least its measured accuracy (both proxies).
2. **Budget run.** ``compile_model(--quantize int8 --budget size=0.6x)`` and the uniform int8
   compile, both built by TVM and timed in this run: the report's chosen size against the budget,
   the artifact sizes (int4 weights packed two per byte in the library) and the measured latency
   ratio (the unpack cost), plus the ``--max-drop`` fallbacks when ``--max-drop`` is given.

Results go to ``benchmarks/results/mixed-precision-<UTC time>.json`` and a table is printed.
Timings on a loaded machine are noisy; the JSON records the machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

from benchmarks import machine
from benchmarks.compression import RESULTS, ZOO_INPUTS, _random_input, model_setup
from benchmarks.timing import measure

MODELS = ("digits", "transformer", "resnet18", "mobilenetv2")
DEFAULT_MODELS = ("resnet18", "transformer")
HELD_OUT = 32
#: (front name, target, swept resource)
FRONTS = (("size@cpu", "cpu", "size"), ("latency@fpga", "fpga", "latency"))


def _feeds(setup: dict) -> list[dict]:
    from compiler.accuracy import load_npz_feeds, split_batches

    calibration = setup["calibration"]
    if isinstance(calibration, (str, Path)):
        arrays, _ = load_npz_feeds(Path(calibration), list(setup["proxy_feeds"][0]))
    else:
        arrays = calibration
    return split_batches(arrays, 1)


def _held_out(name: str, setup: dict) -> list[dict]:
    """Inputs the accuracy proxy is measured on: the digits eval split (the first HELD_OUT), or
    HELD_OUT seeded draws of the zoo calibration distribution with another seed."""
    from compiler.accuracy import load_npz_feeds, split_batches

    if setup["eval_data"] is not None:
        arrays, _ = load_npz_feeds(Path(setup["eval_data"]), list(setup["proxy_feeds"][0]))
        return split_batches(arrays, 1)[:HELD_OUT]
    input_name, shape, dtype = ZOO_INPUTS[name]
    rng = np.random.default_rng(98765)
    return [{input_name: _random_input(shape, dtype, rng)} for _ in range(HELD_OUT)]


def _canonical(path: Path):
    from compiler.context import CompileContext
    from compiler.ir import load_model
    from compiler.pipeline import Pipeline

    model = load_model(path)
    Pipeline.parse("canonicalize").run(model, CompileContext())
    return model


def _run_pass(model, calibration: list[dict], target_name: str, options: str):
    from compiler.context import CompileContext
    from compiler.ir import copy_model
    from compiler.pipeline import Pipeline
    from targets.cost_model import RooflineCostModel
    from targets.registry import get_target

    target = get_target(target_name)
    ctx = CompileContext(target=target, cost_model=RooflineCostModel(target), calibration=calibration)
    _, records = Pipeline.parse(f"canonicalize,mixed-precision{{{options}}}").run(copy_model(model), ctx)
    return records[-1]


def _measure_map(model, layer_names: list[str], bits: list[str], calibration: list[dict], held_out: list[dict]) -> dict:
    """Quantize a copy with the per-layer ``bits`` and compare it with fp32 on ``held_out``."""
    from compiler.context import CompileContext
    from compiler.ir import copy_model
    from passes.quantize.integer import QuantizeIntegerPass
    from passes.quantize.mixed import output_accuracy

    quantized = copy_model(model)
    entries = tuple(f"{n}@{b}" for n, b in zip(layer_names, bits))
    QuantizeIntegerPass(bits_map=entries)(quantized, CompileContext(calibration=calibration))
    return output_accuracy(model, quantized, held_out)


def _dominance(front: list[dict], uniform: dict, resource: str) -> dict:
    """For each uniform point: the front points with <= its resource and >= its measured top-1
    agreement and SQNR (a point on the front counts; ``dominated`` when there is one)."""
    out = {}
    for name, u in uniform.items():
        ua = u["measured"]
        better = [
            i for i, p in enumerate(front)
            if p[resource] <= u[resource] * (1 + 1e-9)
            and p["measured"]["top1_agreement"] >= ua["top1_agreement"]
            and p["measured"]["sqnr_db"] >= ua["sqnr_db"] - 1e-9
        ]
        strictly = [i for i in better if front[i]["bits"] != u["bits"]]
        out[name] = {"dominated": bool(better), "by_front_points": better, "by_other_maps": strictly}
    return out


def bench_fronts(name: str, setup: dict, sweep: int, sensitivity: str) -> dict:
    model = _canonical(setup["path"])
    calibration = _feeds(setup)
    held_out = _held_out(name, setup)
    measured: dict[tuple, dict] = {}
    result: dict = {"calibration_batches": len(calibration), "held_out_inputs": len(held_out), "fronts": {}}
    for front_name, target, resource in FRONTS:
        started = time.perf_counter()
        record = _run_pass(model, calibration, target, f"{resource}=1.0x,sweep={sweep},sensitivity={sensitivity}")
        stats = record.stats
        names = [l["name"] for l in stats["layers"]]
        uniform = {k: {**v, "bits": [k.removeprefix("int")] * len(names)} for k, v in stats["uniform"].items()}
        points = [dict(p) for p in stats["pareto"]]
        for point in [*points, *uniform.values()]:
            key = tuple(point["bits"])
            if key not in measured:
                measured[key] = _measure_map(model, names, list(key), calibration, held_out)
            point["measured"] = measured[key]
        result["fronts"][front_name] = {
            "target": target,
            "resource": resource,
            "sensitivity_method": stats["sensitivity_method"],
            "layers": len(names),
            "front": points,
            "uniform": uniform,
            "dominance": _dominance(points, uniform, resource),
            "seconds": time.perf_counter() - started,
        }
        if target == "cpu":
            result["cpu_latency_ms"] = {k: v["latency"] * 1e3 for k, v in uniform.items()}
    return result


def _library_size(out_dir: Path) -> int | None:
    files = list(out_dir.glob("model.so")) + list(out_dir.glob("model.tar"))
    return files[0].stat().st_size if files else None


def bench_budget(name: str, setup: dict, workdir: Path, budget: str, max_drop: float | None, runs: int) -> dict:
    from compiler.api import compile_model, load_artifact

    entry: dict = {"budget": {"size": budget}, "max_drop": max_drop}
    feeds0 = setup["proxy_feeds"][0]
    for variant, kwargs in (("uniform-int8", {}), ("mixed", {"budgets": {"size": budget}, "max_drop": max_drop})):
        out_dir = workdir / f"{name}-{variant}"
        started = time.perf_counter()
        try:
            result = compile_model(setup["path"], output=out_dir, quantize="int8", calibration=setup["calibration"],
                                   eval_data=setup["eval_data"], verify=False, measure=False, force=True, progress=False,
                                   **kwargs)
            artifact = load_artifact(result.output_dir)
            latency = measure(lambda: artifact.run(feeds0), runs=runs, warmup=3)
        except Exception as exc:  # noqa: BLE001 - a benchmark records failures, it does not stop
            entry[variant] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                              "traceback": traceback.format_exc(limit=4)}
            continue
        report = result.report
        v = {"status": "ok", "compile_s": time.perf_counter() - started, "library_bytes": _library_size(out_dir),
             "latency": latency, "report_status": report.get("status")}
        mixed = [p for p in report.get("passes", []) if p.get("name") == "mixed-precision"]
        if mixed:
            stats = mixed[-1]["stats"]
            v.update(bits=stats["bits"], chosen=stats["chosen"], budgets=stats["budgets"],
                     uniform=stats["uniform"], fallbacks=stats["fallbacks"], top1_agreement=stats.get("top1_agreement"))
            v["budget_met"] = all(stats["chosen"][k] <= b * (1 + 1e-9) for k, b in stats["budgets"].items())
            v["packed_int4_layers"] = sum(1 for b in stats["bits"].values() if b == 4)
        accuracy = (report.get("summary") or {}).get("accuracy")
        if accuracy:
            v["eval_top1"] = {k: (accuracy.get(k) or {}).get("top1") for k in ("original_onnxruntime", "artifact_tvm")}
        lowering_notes = (report.get("lowering") or {}).get("notes") or []
        v["int4_notes"] = [n for n in lowering_notes if "int4" in n]
        entry[variant] = v
    a, b = entry.get("uniform-int8", {}), entry.get("mixed", {})
    if a.get("status") == b.get("status") == "ok":
        entry["library_ratio"] = b["library_bytes"] / a["library_bytes"]
        entry["latency_ratio"] = b["latency"]["median_ms"] / a["latency"]["median_ms"]
    return entry


def _table(results: list[dict]) -> str:
    lines = []
    for r in results:
        for front_name, f in (r.get("fronts") or {}).get("fronts", {}).items():
            res = f["resource"]
            unit, scale = ("KB", 1e-3) if res == "size" else ("ms est.", 1e3)
            lines.append(f"{r['model']} — {front_name} ({f['layers']} layers, sensitivity {f['sensitivity_method']}; "
                         f"measured on held-out inputs)")
            lines.append(f"  {'map':<10} {res + ' ' + unit:>16} {'#4-bit':>6} {'top-1 agr':>9} {'SQNR dB':>8}")
            rows = [(f"front {i}", p) for i, p in enumerate(f["front"])] + list(f["uniform"].items())
            for label, p in rows:
                m = p["measured"]
                lines.append(f"  {label:<10} {p[res] * scale:>16.4g} {sum(b == '4' for b in p['bits']):>6} "
                             f"{m['top1_agreement']:>9.4f} {m['sqnr_db']:>8.2f}")
            for name, d in f["dominance"].items():
                lines.append(f"  uniform {name}: {'dominated/matched by front points ' + str(d['by_front_points']) if d['dominated'] else 'NOT dominated'}"
                             + (f" (by other maps {d['by_other_maps']})" if d["by_other_maps"] else ""))
        b = r.get("budget")
        if b:
            for variant in ("uniform-int8", "mixed"):
                v = b.get(variant, {})
                if v.get("status") != "ok":
                    lines.append(f"  budget run {variant}: {v.get('status')} {v.get('error', '')[:100]}")
                    continue
                extra = ""
                if "chosen" in v:
                    extra = (f", chosen size {v['chosen']['size'] / 1e3:.1f} KB <= budget {v['budgets']['size'] / 1e3:.1f} KB: "
                             f"{v['budget_met']}, {v['packed_int4_layers']} int4 layers, fallbacks {len(v['fallbacks'])}")
                lines.append(f"  budget run {variant}: library {v['library_bytes'] / 1e6:.2f} MB, measured "
                             f"{v['latency']['median_ms']:.2f} ms{extra}")
            if "library_ratio" in b:
                lines.append(f"  mixed / uniform int8: library {b['library_ratio']:.3f}x, measured latency {b['latency_ratio']:.2f}x")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mixed_precision", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=MODELS)
    parser.add_argument("--sweep", type=int, default=5, help="ILP points per front (default 5)")
    parser.add_argument("--sensitivity", choices=["perturbation", "hessian"], default="perturbation")
    parser.add_argument("--budget", default="0.6x", help="size budget of the budget run (default 0.6x of uniform int8)")
    parser.add_argument("--max-drop", type=float, default=None, help="accuracy budget of the budget run (points)")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per artifact (default 10)")
    parser.add_argument("--no-compile", action="store_true", help="fronts only: skip the TVM budget run")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--no-save", action="store_true", help="print only; write no result file")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="edgekiln-mixed-") as tmp:
        for name in args.models:
            print(f"benchmarking {name} ...", file=sys.stderr, flush=True)
            setup = model_setup(name)
            record: dict = {"model": name, "path": str(setup["path"])}
            t0 = time.perf_counter()
            try:
                record["fronts"] = bench_fronts(name, setup, args.sweep, args.sensitivity)
            except Exception as exc:  # noqa: BLE001
                record["fronts"] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=6)}
            if not args.no_compile:
                print(f"  {name} budget run ...", file=sys.stderr, flush=True)
                record["budget"] = bench_budget(name, setup, Path(tmp), args.budget, args.max_drop, args.runs)
            record["seconds"] = time.perf_counter() - t0
            results.append(record)
    out = {
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine.describe(),
        "sweep": args.sweep,
        "sensitivity": args.sensitivity,
        "results": results,
        "total_s": time.perf_counter() - started,
    }
    print(_table(results))
    print(f"machine: {out['machine']['cpu']}, {out['machine']['logical_cores']} cores; total {out['total_s']:.0f} s")
    if not args.no_save:
        args.results_dir.mkdir(parents=True, exist_ok=True)
        stamp = out["time"].replace(":", "").replace("+00:00", "Z")
        path = args.results_dir / f"mixed-precision-{stamp}.json"
        path.write_text(json.dumps(out, indent=2, sort_keys=True, default=_json_default) + "\n")
        print(f"wrote {path}")
    return 0


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
