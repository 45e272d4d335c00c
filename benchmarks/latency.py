"""The latency suite: ONNX Runtime (fp32 and int8) against edgekiln's artifacts, in one run.

For each model and batch size it measures, in this order and in the same process:

    onnxruntime_fp32   ORT, all graph optimizations, on the original model (the reference)
    onnxruntime_int8   ORT on quantize_static(QDQ, per-channel int8 weights, uint8 activations)
    ours_fp32          edgekiln's artifact with the default schedules (no tuning)
    ours_fp32_records  the same with shipped tuning records (when present for the target)
    ours_int8          edgekiln's integer-only artifact (--quantize int8, same calibration inputs)

Each latency is the median of ``runs`` runs after warm-up; ratios are against onnxruntime_fp32.
Variants that cannot run yet are recorded with ``"status": "unavailable"`` and the reason, never
silently dropped.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.timing import measure

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("onnxruntime_fp32", "onnxruntime_int8", "ours_fp32", "ours_fp32_records", "ours_int8")


def model_for(name: str, batch: int) -> Path:
    """ONNX file of a benchmark model at a batch size (exported from the in-repo torch definitions).

    ``digits`` is the bundled example; its ONNX file has a static batch of 1, so other batch sizes
    are re-trained (deterministic, ~6 s) and exported at that batch into the model cache.
    """
    sys.path.insert(0, str(REPO))
    if name == "digits":
        if batch == 1:
            return REPO / "examples" / "digits_cnn.onnx"
        return _digits_at_batch(batch)
    from tests.data.make_models import model_path

    return model_path(name, batch=batch)


def _digits_at_batch(batch: int) -> Path:
    import torch

    from compiler.export import export_torch

    sys.path.insert(0, str(REPO / "examples"))
    import train_digits

    out = REPO / "tests" / "data" / ".cache" / f"digits_cnn-b{batch}.onnx"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    split = train_digits.split_digits()
    model = train_digits.build_model()
    train_digits.train(model, *split["train"])
    export_torch(model, (torch.zeros(batch, 1, 8, 8),), out, input_names=["x"], output_names=["logits"])
    return out


def _input_feeds(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    import onnx

    from compiler.ir import from_proto
    from compiler.verify import random_feeds

    return random_feeds(from_proto(onnx.load(str(path), load_external_data=False)), seed=seed)


def _ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _quantize_static(path: Path, out: Path, calibration: list[dict[str, np.ndarray]]) -> Path:
    import logging

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    # quantize_static logs a warning per bias tensor ("Axis 1 is out-of-range ... rank 1"); noise here.
    logging.getLogger().setLevel(logging.ERROR)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(calibration)

        def get_next(self):
            return next(self._it, None)

    quantize_static(
        str(path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
    )
    return out


def _compile_ours(path: Path, out: Path, passes: str | None = None, calib: Path | None = None) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.compile_child", str(path), str(out)]
    if passes:
        cmd += ["--passes", passes]
    if calib is not None:
        cmd += ["--quantize", "int8", "--calib", str(calib)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_model(name: str, batch: int, runs: int, threads: int, variants: tuple[str, ...]) -> dict:
    """Measure every requested variant of one model at one batch size."""
    from compiler.verify import compare

    path = model_for(name, batch)
    feeds = _input_feeds(path)
    calibration = [_input_feeds(path, seed=s) for s in range(8)]
    result: dict = {"model": name, "batch": batch, "variants": {}}
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        tmp_path = Path(tmp)
        ref = _ort_session(path, threads)
        reference_out = ref.run(None, feeds)
        for variant in variants:
            entry: dict
            try:
                if variant == "onnxruntime_fp32":
                    entry = measure(lambda: ref.run(None, feeds), runs=runs)
                elif variant == "onnxruntime_int8":
                    qpath = _quantize_static(path, tmp_path / "int8.onnx", calibration)
                    session = _ort_session(qpath, threads)
                    entry = measure(lambda: session.run(None, feeds), runs=runs)
                    entry["cosine_vs_fp32"] = compare(session.run(None, feeds), reference_out, "lossy")["cosine"]
                elif variant == "ours_fp32":
                    from compiler.artifact import load_artifact

                    info = _compile_ours(path, tmp_path / "ours_fp32")
                    artifact = load_artifact(tmp_path / "ours_fp32")
                    entry = measure(lambda: artifact.run(feeds), runs=runs)
                    entry.update(info)
                    entry["max_abs_vs_ort"] = compare(artifact.run(feeds), reference_out, "lossy")["max_abs"]
                elif variant == "ours_fp32_records":
                    entry = {"status": "unavailable", "reason": "no tuning records are shipped yet (issue 3, --tune)"}
                elif variant == "ours_int8":
                    from compiler.artifact import load_artifact

                    calib = tmp_path / "calib.npz"
                    np.savez(calib, **{k: np.concatenate([c[k] for c in calibration]) for k in calibration[0]})
                    info = _compile_ours(path, tmp_path / "ours_int8", calib=calib)
                    artifact = load_artifact(tmp_path / "ours_int8")
                    entry = measure(lambda: artifact.run(feeds), runs=runs)
                    entry.update(info)
                    entry["cosine_vs_fp32"] = compare(artifact.run(feeds), reference_out, "lossy")["cosine"]
                else:
                    raise ValueError(f"unknown variant {variant}")
            except Exception as exc:  # a broken variant is a result, not a crash of the suite
                entry = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
            entry.setdefault("status", "ok")
            result["variants"][variant] = entry
    base = result["variants"].get("onnxruntime_fp32", {}).get("median_ms")
    for entry in result["variants"].values():
        if base and "median_ms" in entry:
            entry["ratio_to_onnxruntime_fp32"] = entry["median_ms"] / base
    return result
