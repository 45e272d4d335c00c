"""``python -m benchmarks.quant_accuracy``: int8/int4 accuracy of edgekiln's integer-only
quantization against ONNX Runtime's ``quantize_static``, same calibration data, one run.

    python -m benchmarks.quant_accuracy                       # digits, resnet18, mobilenetv2, transformer
    python -m benchmarks.quant_accuracy --models digits --eval 540

Variants (every one calibrated on the same feeds):

    ort_int8            quant_pre_process + quantize_static, QDQ, per-channel int8 weights, uint8
                        activations, MinMax;
                        run by ONNX Runtime with its default optimizations (what its users run)
    ours_int8           edgekiln integer-only int8 (min-max observer, nearest rounding)
    ours_int8_gptq      the same with GPTQ weight rounding
    ours_int8_w7        7-bit weight codes ([-63, 63], --quantize int8-w7: the fast exact
                        vpmaddubsw convs on x86 without VNNI), nearest rounding
    ours_int4           4-bit weights, nearest rounding
    ours_int4_gptq      4-bit weights, GPTQ rounding

Our integer-only graphs are run in ONNX Runtime: they are bit-exact with the TVM artifact (the
compile checks it, and tests/compiler/test_compile_quantized.py), so this is the artifact's accuracy.

Metrics against the fp32 model on held-out inputs: top-1 agreement (argmax over the last axis at
every position), output SQNR in dB (10 log10 ||f||^2 / ||q - f||^2 over all outputs), mean cosine;
for digits also top-1 against the labels of the held-out split. Data: digits uses its bundled
calib/eval splits. The zoo models (tests/data/models.py) have untrained, seeded weights, so there are
no labels: their inputs are structured images made from the bundled digits (each 8x8 digit upsampled
to 224x224, three channels with per-channel gain/offset), calibration and evaluation from disjoint
digits; the transformer gets seeded random tokens. That makes agreement with fp32 the only honest
accuracy measure for them.

Results: ``benchmarks/results/quant-accuracy-<UTC time>.json`` and a table on stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import machine
from benchmarks.ort_quant import quantize_static_qdq

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
MODELS = ("digits", "resnet18", "mobilenetv2", "transformer")
VARIANTS = {
    "ort_int8": None,
    "ours_int8": "quantize",
    "ours_int8_gptq": "quantize{rounding=gptq}",
    "ours_int8_w7": "quantize{bits=7}",
    "ours_int4": "quantize{bits=4}",
    "ours_int4_gptq": "quantize{bits=4,rounding=gptq}",
}


def _digit_images(indices: np.ndarray, seed: int) -> np.ndarray:
    """Structured 1x3x224x224 inputs from the bundled digits (see the module docstring)."""
    data = np.load(REPO / "examples" / "digits_cnn.eval.npz")["x"]  # [540, 1, 8, 8], standardized
    rng = np.random.default_rng(seed)
    images = []
    for index in indices:
        digit = data[index % len(data), 0]
        big = np.kron(digit, np.ones((28, 28)))  # 8x8 -> 224x224, nearest
        gain = rng.uniform(0.6, 1.4, (3, 1, 1))
        offset = rng.uniform(-0.3, 0.3, (3, 1, 1))
        images.append((big[None] * gain + offset).astype(np.float32))
    return np.stack(images)


def datasets(name: str, calib: int, evaluate: int) -> dict:
    """Model path, calibration feeds, held-out feeds and (digits) labels."""
    sys.path.insert(0, str(REPO))
    if name == "digits":
        c = np.load(REPO / "examples" / "digits_cnn.calib.npz")["x"][:calib]
        e = np.load(REPO / "examples" / "digits_cnn.eval.npz")
        return {"path": REPO / "examples" / "digits_cnn.onnx", "calib": [{"x": c[i:i + 1]} for i in range(len(c))],
                "eval": [{"x": e["x"][i:i + 1]} for i in range(min(evaluate, len(e["x"])))],
                "labels": e["labels"][:evaluate]}
    from tests.data.make_models import model_path

    path = model_path(name, batch=1)
    if name == "transformer":
        rng = np.random.default_rng(7)
        tokens = lambda n: [{"tokens": rng.integers(0, 256, (1, 32), dtype=np.int64)} for _ in range(n)]  # noqa: E731
        return {"path": path, "calib": tokens(calib), "eval": tokens(evaluate), "labels": None}
    images = _digit_images(np.arange(calib + evaluate), seed=11)
    return {"path": path, "calib": [{"x": images[i:i + 1]} for i in range(calib)],
            "eval": [{"x": images[i:i + 1]} for i in range(calib, calib + evaluate)], "labels": None}


def _metrics(reference: list[np.ndarray], candidate: list[np.ndarray], labels: np.ndarray | None) -> dict:
    f = np.concatenate([r.reshape(-1, r.shape[-1]) for r in reference]).astype(np.float64)
    q = np.concatenate([c.reshape(-1, c.shape[-1]) for c in candidate]).astype(np.float64)
    noise = float(np.sum((q - f) ** 2))
    norms = np.linalg.norm(f, axis=1) * np.linalg.norm(q, axis=1)
    result = {
        "top1_agreement": float(np.mean(f.argmax(1) == q.argmax(1))),
        "sqnr_db": float(10 * np.log10(np.sum(f ** 2) / noise)) if noise > 0 else float("inf"),
        "cosine_mean": float(np.mean(np.sum(f * q, axis=1) / np.where(norms > 0, norms, 1.0))),
    }
    if labels is not None:
        result["top1"] = float(np.mean(q.argmax(1) == labels))
    return result


def _ours(path: Path, spec: str, calibration: list[dict]):
    from compiler.context import CompileContext
    from compiler.frontend import FRONTEND_FACTS, load_and_prepare
    from compiler.pipeline import Pipeline
    from compiler.verify import ort_session
    from targets.registry import get_target

    model, _ = load_and_prepare(path)
    ctx = CompileContext(target=get_target("cpu"), calibration=calibration)
    model, _ = Pipeline.parse(f"canonicalize,{spec}").run(model, ctx, initial_facts=FRONTEND_FACTS)
    return ort_session(model)


def bench_model(name: str, calib: int, evaluate: int, variants: list[str]) -> dict:
    from compiler.verify import ort_session

    data = datasets(name, calib, evaluate)
    fp32 = ort_session(__import__("onnx").load(str(data["path"])), optimize=True)
    reference = [fp32.run(None, feeds)[0] for feeds in data["eval"]]
    result = {"model": name, "calibration_samples": len(data["calib"]), "eval_samples": len(data["eval"]), "variants": {}}
    if data["labels"] is not None:
        result["fp32_top1"] = float(np.mean(np.concatenate([r.argmax(-1) for r in reference]) == data["labels"]))
    for variant in variants:
        start = time.perf_counter()
        try:
            if VARIANTS[variant] is None:
                with tempfile.TemporaryDirectory() as tmp:
                    qdq = quantize_static_qdq(Path(data["path"]), Path(tmp) / "qdq.onnx", data["calib"])
                    session = ort_session(__import__("onnx").load(str(qdq)), optimize=True)
            else:
                session = _ours(Path(data["path"]), VARIANTS[variant], data["calib"])
            seconds = time.perf_counter() - start
            outputs = [session.run(None, feeds)[0] for feeds in data["eval"]]
            entry = {"status": "ok", "quantize_s": seconds, **_metrics(reference, outputs, data["labels"])}
        except Exception as exc:  # a variant that fails is recorded, never dropped
            entry = {"status": "failed", "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
        result["variants"][variant] = entry
        print(f"  {name:<12} {variant:<16} {entry}", file=sys.stderr)
    return result


def _table(results: list[dict]) -> str:
    lines = [f"{'model':<12} {'variant':<16} {'top1':>7} {'agree':>7} {'SQNR dB':>8} {'cosine':>8}"]
    for result in results:
        for variant, entry in result["variants"].items():
            if entry.get("status") != "ok":
                lines.append(f"{result['model']:<12} {variant:<16} {entry.get('error', '')}")
                continue
            top1 = f"{entry['top1'] * 100:.2f}" if "top1" in entry else "-"
            lines.append(f"{result['model']:<12} {variant:<16} {top1:>7} {entry['top1_agreement'] * 100:>6.2f}% "
                         f"{entry['sqnr_db']:>8.2f} {entry['cosine_mean']:>8.5f}")
        if "fp32_top1" in result:
            lines.append(f"{result['model']:<12} {'(fp32)':<16} {result['fp32_top1'] * 100:>7.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quant_accuracy", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--calib", type=int, default=32, help="calibration samples per model (default 32)")
    parser.add_argument("--eval", type=int, default=128, help="held-out samples per model (default 128)")
    parser.add_argument("--no-save", action="store_true", help="print only; write no results file")
    args = parser.parse_args(argv)
    results = [bench_model(name, args.calib, args.eval, args.variants) for name in args.models]
    print(_table(results))
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
        path = RESULTS / f"quant-accuracy-{stamp}.json"
        path.write_text(json.dumps({"machine": machine.describe(), "calib": args.calib, "eval": args.eval,
                                    "results": results}, indent=1))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
