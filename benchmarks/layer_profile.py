"""``python -m benchmarks.layer_profile``: per-layer times of edgekiln's artifact next to ONNX
Runtime's, in one run, one thread -- "what limits it, per op" for the latency goals.

    python -m benchmarks.layer_profile mobilenetv2                     # fp32: ours vs ORT fp32
    python -m benchmarks.layer_profile mobilenetv2 --quantize int8-w7  # ours vs ORT int8 (QDQ)
    python -m benchmarks.layer_profile resnet18 --quantize int8 --runs 30 --batch 1

Ours: the model after the compile passes (``--quantize`` as ``compile`` does it, with the latency
suite's calibration inputs), lowered for the ``cpu`` target and every kernel call timed in a Relax
VM with an instrument hook (targets/calibrate_cost.measure_layers: medians over ``--runs`` runs; the
whole-model median from an uninstrumented VM). ONNX Runtime: the same model (``--quantize``:
``quantize_static`` QDQ on the same calibration inputs, what the latency suite's
``onnxruntime_int8`` runs), all graph optimizations, its built-in per-node profiler, medians over
the same number of runs. Both use one thread (``TVM_NUM_THREADS=1``, one intra-op thread). The
runs of the two alternate in ``ROUNDS`` rounds (ours, then ORT, each its whole-model and its
profiled runs), so a slow phase of a shared machine lands on both sides' medians alike; before
2026-12-08 all of ORT's runs came first, and on a VM whose speed moves by 2x within minutes the
same code read 0.94x and 1.68x of ORT in two runs.

Layers are paired by position in the model's graph order: the model's Conv / Gemm / MatMul nodes,
our conv and matmul kernels (one per such node after fusion, run in graph order) and ORT's conv /
gemm / matmul nodes, matched to the model's by name (ORT may run independent layers in another
order).
When the three counts differ (ORT fused differently, e.g. attention), the two lists are reported
unpaired. The instrument hook adds a few microseconds per kernel, so very small kernels read
slightly slow; the whole-model medians are not affected.

The table is printed; JSON goes to ``benchmarks/results/layers-<model>-<precision>-<UTC time>.json``
with the machine description.
"""

from __future__ import annotations

import os

os.environ.setdefault("TVM_NUM_THREADS", "1")  # before the TVM runtime starts its thread pool

import argparse  # noqa: E402
import collections  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks import latency, machine  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

#: rounds the runs are split into, ours and ORT alternating (at most one run per round)
ROUNDS = 10

#: ONNX op types of the layers that are paired (the model's compute layers)
LAYER_OPS = ("Conv", "ConvInteger", "Gemm", "MatMul", "MatMulInteger")
#: ORT's kernels for them, fp32 and QDQ int8 (after its own fusions)
ORT_LAYER_OPS = ("Conv", "FusedConv", "NhwcFusedConv", "QLinearConv", "Gemm", "FusedGemm", "QGemm", "MatMul",
                 "FusedMatMul", "QLinearMatMul", "MatMulInteger", "DynamicQuantizeMatMul")


def describe_layers(path: Path) -> list[tuple[str, str]]:
    """(node name, description) per Conv / Gemm / MatMul node of the model at ``path``, in graph
    order (description: "Conv 96x16x1x1 s1 g1 on 16x112x112")."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = shape_inference.infer_shapes(onnx.load(str(path)))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.value_info, *model.graph.input]}
    weights = {t.name: list(numpy_helper.to_array(t).shape) for t in model.graph.initializer}
    lines = []
    for node in model.graph.node:
        if node.op_type not in LAYER_OPS:
            continue
        attrs = {a.name: a for a in node.attribute}
        weight = "x".join(str(d) for d in weights.get(node.input[1], [])) or "activation"
        data = "x".join(str(d) for d in shapes.get(node.input[0], [])[1:])
        if node.op_type.startswith("Conv"):
            stride = attrs["strides"].ints[0] if "strides" in attrs else 1
            group = attrs["group"].i if "group" in attrs else 1
            lines.append((node.name, f"{node.op_type} {weight} s{stride} g{group} on {data}"))
        else:
            lines.append((node.name, f"{node.op_type} {weight} on {data}"))
    return lines


class OrtNodeProfiler:
    """ONNX Runtime on one thread, run in rounds between ours (``round``): a session with its
    per-node profiler (per-node medians) and a plain one (the whole-model median, timed without
    the profiler, whose per-node events add to its run time)."""

    warmup = 3

    def __init__(self, path: Path, feeds: dict[str, np.ndarray], profile_dir: Path):
        self.feeds = feeds
        self.profiled = latency._ort_session(path, threads=1, profile_prefix=profile_dir / "ort")
        self.plain = latency._ort_session(path, threads=1)
        for _ in range(self.warmup):
            self.profiled.run(None, feeds)
            self.plain.run(None, feeds)
        self.totals: list[float] = []

    def round(self, count: int) -> None:
        """``count`` whole-model runs, then ``count`` profiled ones (as our timer's rounds)."""
        self.plain.run(None, self.feeds)  # untimed: our VM's worker threads go idle first
        for _ in range(count):
            start = time.perf_counter()
            self.plain.run(None, self.feeds)
            self.totals.append((time.perf_counter() - start) * 1e3)
        for _ in range(count):
            self.profiled.run(None, self.feeds)

    def result(self) -> tuple[list[tuple[str, str, float]], float]:
        """([(node name, op type, median ms)] in execution order, whole-model median ms)."""
        events = json.loads(Path(self.profiled.end_profiling()).read_text())
        durations: dict[str, list[float]] = collections.defaultdict(list)
        op_types: dict[str, str] = {}
        for event in events:
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                name = event["name"][: -len("_kernel_time")]
                durations[name].append(event["dur"] / 1e3)
                op_types[name] = event.get("args", {}).get("op_name", "?")
        # the warm-up runs dropped
        durations = {name: times[self.warmup:] or times for name, times in durations.items()}
        nodes = [(name, op_types[name], statistics.median(times)) for name, times in durations.items()]
        return nodes, statistics.median(self.totals)


def ort_in_model_order(layers: list[tuple[str, str]], ort_layers: list[tuple[str, str, float]]) -> list:
    """ORT's layer nodes reordered into the model's graph order. ORT names its nodes after the
    model's (``<name>`` or ``<name>_<suffix>``, e.g. ``/layer2/layer2.0/conv1/Conv_token_22``)
    but may execute independent layers in another order (a ResNet downsample after the block's
    convs). Our kernels run in graph order (the importer walks the graph), so this is the order
    both are paired in. When some name does not match exactly one layer, ORT's execution order is
    kept."""
    by_layer: dict[str, tuple[str, str, float]] = {}
    for entry in ort_layers:
        matches = [name for name, _ in layers if entry[0] == name or entry[0].startswith(name + "_")]
        if len(matches) != 1 or matches[0] in by_layer:
            return ort_layers
        by_layer[matches[0]] = entry
    return [by_layer[name] for name, _ in layers]


def our_kernel_profile(model_path: Path, runs: int, between_rounds=None):
    """targets.calibrate_cost.Measurement of the model at ``model_path`` lowered for ``cpu``, in
    ROUNDS rounds with ``between_rounds(count)`` after each."""
    import onnx

    from compiler.ir import from_proto
    from targets.calibrate_cost import measure_layers

    return measure_layers(from_proto(onnx.load(str(model_path))), "cpu", repeats=runs, rounds=ROUNDS,
                          between_rounds=between_rounds)


def _is_layer_kernel(name: str) -> bool:
    lowered = name.lower()
    return "conv" in lowered or "matmul" in lowered or "dense" in lowered


def profile(name: str, quantize: str | None, batch: int = 1, runs: int = 20) -> dict:
    """Per-layer times of ours and ORT for one model (module docstring); a JSON-able dict."""
    from compiler import compile_model

    path = Path(name) if name.endswith(".onnx") else latency.model_for(name, batch)
    feeds = latency._input_feeds(path)
    # the latency suite's calibration inputs, for --quantize (ours and ORT's quantize_static)
    calibration = [latency._input_feeds(path, seed=s) for s in range(8)] if quantize else None
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        # the model compile lowers: after its passes (BatchNorm folding..., the quantizer)
        compile_model(path, output=tmp_path / "ours", quantize=quantize, calibration=calibration,
                      lower=False, verify=False, measure=False, progress=False)
        ours_model = tmp_path / "ours" / "model.opt.onnx"
        ort_model = path
        if quantize:
            from benchmarks.ort_quant import quantize_static_qdq

            ort_model = quantize_static_qdq(path, tmp_path / "ort_int8.onnx", calibration)
        ort = OrtNodeProfiler(ort_model, feeds, tmp_path)
        ours = our_kernel_profile(ours_model, runs, between_rounds=ort.round)
        ort_nodes, ort_total = ort.result()

    layers = describe_layers(path)
    our_layers = [(k, t * 1e3) for k, t in ours.kernels if _is_layer_kernel(k)]
    ort_layers = [(n, op, t) for n, op, t in ort_nodes if op in ORT_LAYER_OPS]
    paired = len(layers) == len(our_layers) == len(ort_layers)
    rows = []
    if paired:
        ort_layers = ort_in_model_order(layers, ort_layers)
        for (_, layer), (kernel, ms), (node, op, ort_ms) in zip(layers, our_layers, ort_layers):
            rows.append({"layer": layer, "ours_ms": ms, "ort_ms": ort_ms, "ratio": ms / ort_ms if ort_ms else None,
                         "rule": ours.rules.get(kernel, "?"), "kernel": kernel, "ort_node": node, "ort_op": op})
    by_rule: dict[str, float] = collections.defaultdict(float)
    for kernel, seconds in ours.kernels:
        by_rule[ours.rules.get(kernel, "?")] += seconds * 1e3
    by_op: dict[str, float] = collections.defaultdict(float)
    for _, op, ms in ort_nodes:
        by_op[op] += ms
    return {
        "model": name,
        "batch": batch,
        "precision": quantize or "fp32",
        "runs": runs,
        "ours_total_ms": ours.total_s * 1e3,
        "ort_total_ms": ort_total,
        "ours_kernel_sum_ms": sum(t for _, t in ours.kernels) * 1e3,
        "ort_node_sum_ms": sum(t for _, _, t in ort_nodes),
        "paired": paired,
        "layers": rows,
        "ours_by_rule_ms": dict(sorted(by_rule.items(), key=lambda kv: -kv[1])),
        "ort_by_op_ms": dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
        **({} if paired else {"unpaired": {"model_layers": [d for _, d in layers], "ours": our_layers,
                                           "ort": [(n, op, t) for n, op, t in ort_layers]},
                              "note": f"{len(layers)} model layers, {len(our_layers)} of our layer kernels, "
                                      f"{len(ort_layers)} ORT layer nodes: not paired"}),
    }


def table(result: dict) -> str:
    """The printed report of :func:`profile`."""
    reference = "ORT int8 (QDQ)" if result["precision"] != "fp32" else "ORT fp32"
    lines = [f"{result['model']} {result['precision']} batch {result['batch']}, 1 thread, medians of "
             f"{result['runs']} runs; ours vs {reference}",
             f"whole model: ours {result['ours_total_ms']:.3f} ms, {reference} {result['ort_total_ms']:.3f} ms "
             f"(ratio {result['ours_total_ms'] / result['ort_total_ms']:.2f}); kernel sums "
             f"{result['ours_kernel_sum_ms']:.3f} / {result['ort_node_sum_ms']:.3f} ms", ""]
    if result["paired"]:
        lines.append(f"{'ORT ms':>8} {'ours ms':>8} {'ratio':>6}  {'our rule':<28} layer")
        for row in result["layers"]:
            lines.append(f"{row['ort_ms']:8.3f} {row['ours_ms']:8.3f} {row['ratio']:6.2f}  {row['rule']:<28} {row['layer']}")
    else:
        lines.append(result["note"])
    lines += ["", "ours by rule (ms): " + ", ".join(f"{k} {v:.3f}" for k, v in result["ours_by_rule_ms"].items()),
              f"{reference} by op (ms): " + ", ".join(f"{k} {v:.3f}" for k, v in result["ort_by_op_ms"].items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.layer_profile", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="zoo model (resnet18, mobilenetv2, transformer, digits) or an .onnx path")
    parser.add_argument("--quantize", choices=["int8", "int8-w7"], default=None,
                        help="compare the integer-only artifact with ORT's quantize_static int8 (default: fp32)")
    parser.add_argument("--batch", type=int, default=1, help="batch size of the zoo model (default 1)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per side (default 20)")
    parser.add_argument("--no-save", action="store_true", help="do not write the JSON result")
    args = parser.parse_args(argv)
    if args.runs < 3:
        parser.error("--runs must be at least 3")
    if args.model.endswith(".onnx") and not Path(args.model).is_file():
        print(f"error: {args.model}: no such file", file=sys.stderr)
        return 2
    if not args.model.endswith(".onnx") and args.model not in ("resnet18", "mobilenetv2", "transformer", "digits"):
        print(f"error: unknown model '{args.model}' (known: resnet18, mobilenetv2, transformer, digits, or an .onnx path)",
              file=sys.stderr)
        return 2
    result = profile(args.model, args.quantize, args.batch, args.runs)
    result["machine"] = machine.describe()
    print(table(result))
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
        out = RESULTS / f"layers-{Path(args.model).stem}-{result['precision']}-{stamp}.json"
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
