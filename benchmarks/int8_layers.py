"""``python -m benchmarks.int8_layers``: single conv / dense layers, int8 rules vs fp32, 1 thread.

    python -m benchmarks.int8_layers                  # ResNet-18 stem + 3x3 64->64 @56, a dense
    python -m benchmarks.int8_layers --runs 30 --layers stem

For each layer, in one run and interleaved (benchmarks.timing.measure_interleaved), single-threaded
(``TVM_NUM_THREADS=1``, an ONNX Runtime session with one intra-op thread):

* ``ort_fp32``      ONNX Runtime, the fp32 Conv / MatMul + bias;
* ``tvm_fp32``      our default rules on the fp32 layer (Conv2dDirect / Matmul);
* ``tvm_int8_generic`` the uint8 x int8 -> int32 layer (+ int32 bias) with the default rules
  minus the AVX2 int8 rules, i.e. what this host ran before them (Conv2dDirect / Matmul);
* ``tvm_int8``      the same int8 layer with the default rules (Conv2dInt8AVX2 / MatmulInt8AVX2
  on an AVX2 host without VNNI, the VNNI rules on a VNNI host);
* ``tvm_int8_w7``   the int8 layer with 7-bit weight codes ([-63, 63], ``--quantize int8-w7``): the
  vpmaddubsw rules on an AVX2 host without VNNI.

Medians in ms and the ratio to ``ort_fp32`` are printed; JSON goes to
``benchmarks/results/int8-layers-<UTC time>.json`` with the machine description.
"""

from __future__ import annotations

import os

os.environ.setdefault("TVM_NUM_THREADS", "1")  # before the TVM runtime starts its thread pool

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks import machine  # noqa: E402
from benchmarks.timing import measure_interleaved  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

#: name -> (kind, shape parameters). conv: (C, H, F, K, stride, pad); dense: (M, K, N).
#: The stem has C = 4: the ConvInteger converter pads the RGB input to 4 channels (int8 only; the
#: fp32 layers keep C = 3).
LAYERS = {
    "stem": ("conv", (3, 224, 64, 7, 2, 3)),
    "3x3": ("conv", (64, 56, 64, 3, 1, 1)),
    "dense": ("dense", (16, 64, 256)),
}


def _target():
    import tvm
    from tvm.target import codegen

    return tvm.target.Target({"kind": "llvm", "mcpu": str(codegen.llvm_get_system_cpu()), "num-cores": 1})


def _relax_layer(kind: str, params: tuple, int8: bool, rng, weight_bound: int = 127):
    """(Relax module, input, ONNX fp32 model or None) for one layer; int8 weights are drawn from
    [-weight_bound, weight_bound]."""
    from tvm import relax

    if kind == "conv":
        c, h, f, k, stride, pad = params
        if int8:
            c += -c % 4  # what integer_ops.channel_pad does for ConvInteger
        xshape, wshape, bshape = (1, c, h, h), (f, c, k, k), (1, f, 1, 1)
    else:
        m, k_, n = params
        xshape, wshape, bshape = (m, k_), (k_, n), (n,)
    if int8:
        x = rng.integers(0, 256, size=xshape).astype(np.uint8)
        w = rng.integers(-weight_bound, weight_bound + 1, size=wshape).astype(np.int8)
        b = rng.integers(-20000, 20000, size=bshape).astype(np.int32)
        xdt, wdt, out = "uint8", "int8", "int32"
    else:
        x = rng.standard_normal(xshape).astype(np.float32)
        w = rng.standard_normal(wshape).astype(np.float32)
        b = rng.standard_normal(bshape).astype(np.float32)
        xdt = wdt = out = "float32"
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(xshape, xdt))
    with bb.function("main", [xv]):
        with bb.dataflow():
            if kind == "conv":
                y = relax.op.nn.conv2d(xv, relax.const(w, wdt), strides=stride, padding=pad, out_dtype=out)
            else:
                y = relax.op.matmul(xv, relax.const(w, wdt), out_dtype=out)
            gv = bb.emit_output(bb.emit(relax.op.add(y, relax.const(b, out))))
        bb.emit_func_output(gv)
    return bb.get(), x, (None if int8 else _onnx_model(kind, params, w, b))


def _onnx_model(kind, params, w, b):
    from onnx import TensorProto, helper, numpy_helper

    if kind == "conv":
        c, h, f, k, stride, pad = params
        out_h = (h + 2 * pad - k) // stride + 1
        xshape, yshape = [1, c, h, h], [1, f, out_h, out_h]
        node = helper.make_node("Conv", ["x", "w", "b"], ["y"], strides=[stride] * 2, pads=[pad] * 4)
        inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b.reshape(-1), "b")]
        nodes = [node]
    else:
        m, k_, n = params
        xshape, yshape = [m, k_], [m, n]
        nodes = [helper.make_node("MatMul", ["x", "w"], ["t"]), helper.make_node("Add", ["t", "b"], ["y"])]
        inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    graph = helper.make_graph(
        nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, xshape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, yshape)], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _tvm_runner(mod, x, target, rules=None):
    import tvm
    from tvm import relax

    from targets.lowering.schedules import apply_default_schedules

    with target:
        mod = relax.get_pipeline("zero")(mod)
        mod, report = apply_default_schedules(mod, target, rules)
        ex = tvm.compile(mod, target=target)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    xt = tvm.runtime.tensor(x)
    fn = vm["main"]
    anchors = sorted({rule for name, rule in report.scheduled.items() if "conv2d" in name or "matmul" in name})
    return (lambda: fn(xt)), anchors


def _ort_runner(model, x):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, {"x": x})


def run_layer(name: str, runs: int) -> dict:
    from targets.lowering.schedules import common, default_rules

    kind, params = LAYERS[name]
    target = _target()
    rng = np.random.default_rng(0)
    fmod, fx, onnx_model = _relax_layer(kind, params, False, rng)
    imod, ix, _ = _relax_layer(kind, params, True, rng)
    w7mod, w7x, _ = _relax_layer(kind, params, True, rng, weight_bound=63)
    generic = [r for r in default_rules() if not isinstance(r, common.AVX2Dot)]
    fns, rules = {"ort_fp32": _ort_runner(onnx_model, fx)}, {"ort_fp32": ["onnxruntime"]}
    fns["tvm_fp32"], rules["tvm_fp32"] = _tvm_runner(fmod, fx, target)
    fns["tvm_int8_generic"], rules["tvm_int8_generic"] = _tvm_runner(imod, ix, target, generic)
    fns["tvm_int8"], rules["tvm_int8"] = _tvm_runner(imod, ix, target)
    fns["tvm_int8_w7"], rules["tvm_int8_w7"] = _tvm_runner(w7mod, w7x, target)
    stats = measure_interleaved(fns, runs=runs, warmup=3)
    ref = stats["ort_fp32"]["median_ms"]
    return {
        "layer": name, "kind": kind, "params": list(params),
        "variants": {
            k: {**v, "rules": rules[k], "ratio_to_ort_fp32": v["median_ms"] / ref} for k, v in stats.items()
        },
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", nargs="+", default=list(LAYERS), choices=list(LAYERS))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    results = []
    for name in args.layers:
        res = run_layer(name, args.runs)
        results.append(res)
        print(f"{name} {res['params']}")
        for variant, v in res["variants"].items():
            print(f"  {variant:18s} {v['median_ms']:8.3f} ms  {v['ratio_to_ort_fp32']:5.2f}x ort_fp32  "
                  f"{','.join(v['rules'])}")
    if not args.no_save:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"int8-layers-{stamp}.json"
        out.write_text(json.dumps({"machine": machine.describe(), "threads": os.environ["TVM_NUM_THREADS"],
                                   "results": results}, indent=1))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
