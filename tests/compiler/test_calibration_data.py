"""Calibration sources (.npz, .npy directory, mapping, iterable) cut into compiled-shape batches."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from compiler.calibration_data import calibration_batches
from compiler.errors import OptionError

ROOT = Path(__file__).resolve().parents[2]
SHAPES = {"x": (4, 1, 8, 8)}
DTYPES = {"x": np.dtype(np.float32)}


def _samples(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 8, 8)).astype(np.float64)


def _stacked(batches) -> np.ndarray:
    return np.concatenate([b["x"] for b in batches])


def test_npz_mapping_and_npy_directory_give_the_same_batches(tmp_path):
    data = _samples(8)
    np.savez(tmp_path / "c.npz", x=data)
    stacked_dir = tmp_path / "stacked"
    stacked_dir.mkdir()
    np.save(stacked_dir / "x.npy", data)
    per_sample = tmp_path / "samples"
    per_sample.mkdir()
    for i, sample in enumerate(data):
        np.save(per_sample / f"{i:03d}.npy", sample)  # one sample each, no batch dim
    results = [calibration_batches(src, SHAPES, DTYPES) for src in (tmp_path / "c.npz", {"x": data}, stacked_dir, per_sample)]
    for result in results:
        assert [b["x"].shape for b in result.batches] == [(4, 1, 8, 8)] * 2
        assert all(b["x"].dtype == np.float32 for b in result.batches)
        assert np.array_equal(_stacked(result.batches), data.astype(np.float32))
        assert result.samples == 8 and result.note is None


def test_iterable_of_single_samples_or_batches_is_restacked_to_the_compiled_batch():
    data = _samples(8)
    singles = calibration_batches(({"x": s} for s in data), SHAPES, DTYPES)
    pairs = calibration_batches([{"x": data[i:i + 2]} for i in range(0, 8, 2)], SHAPES, DTYPES)
    for result in (singles, pairs):
        assert [b["x"].shape for b in result.batches] == [(4, 1, 8, 8)] * 2
        assert np.array_equal(_stacked(result.batches), data.astype(np.float32))


def test_short_last_batch_is_completed_from_the_start_of_the_set():
    data = _samples(7)
    result = calibration_batches({"x": data}, {"x": (3, 1, 8, 8)}, DTYPES)
    got = _stacked(result.batches)
    assert got.shape == (9, 1, 8, 8)
    assert np.array_equal(got[:7], data.astype(np.float32)) and np.array_equal(got[7:], data[:2].astype(np.float32))
    assert result.samples == 7 and "completed with 2 sample(s)" in result.note


def test_fewer_samples_than_one_batch_wrap_around():
    result = calibration_batches({"x": _samples(2)}, {"x": (5, 1, 8, 8)}, DTYPES)
    assert len(result.batches) == 1 and result.batches[0]["x"].shape == (5, 1, 8, 8)


@pytest.mark.parametrize(
    "source, message",
    [
        ({"y": np.zeros((2, 1, 8, 8))}, "no array for input 'x'"),
        ({"x": np.zeros((2, 1, 8, 9))}, "samples of shape [1, 8, 9]; the model is compiled for [4, 1, 8, 8]"),
        ([{"x": np.zeros((1, 8, 8))}, {"x": np.zeros((1, 8, 9))}], "samples of shape [8, 9]"),
        ([np.zeros((1, 8, 8))], "not a dict of input name -> array"),
        ([{"z": np.zeros((1, 8, 8))}], "calibration item 0 has no array for input 'x'"),
    ],
)
def test_bad_sources_are_one_line_errors(source, message):
    with pytest.raises(OptionError, match=None) as info:
        calibration_batches(source, SHAPES, DTYPES)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_npy_directory_errors(tmp_path):
    with pytest.raises(OptionError, match="no .npy files"):
        calibration_batches(tmp_path, SHAPES, DTYPES)
    (tmp_path / "x.npy").write_bytes(b"not numpy")
    with pytest.raises(OptionError, match=r"x\.npy: not a readable \.npy array"):
        calibration_batches(tmp_path, SHAPES, DTYPES)
    np.save(tmp_path / "a.npy", np.zeros((2, 3), np.float32))
    with pytest.raises(OptionError, match="no b.npy"):
        calibration_batches(tmp_path, {"a": (1, 3), "b": (1, 3)}, {"a": DTYPES["x"], "b": DTYPES["x"]})


def test_empty_iterable_is_no_calibration():
    assert calibration_batches(iter(()), SHAPES, DTYPES).batches == []


def test_cli_quantizes_a_dynamic_batch_model_from_an_npy_directory(tmp_path):
    """The user complaint 'dynamic shapes break calibration': a model exported with a symbolic
    batch, compiled at batch 8, calibrated from a directory of per-sample .npy files whose count
    (179) is no multiple of 8. The report says how the last batch was completed."""
    torch = pytest.importorskip("torch")
    import json

    from compiler.export import export_torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 10))
    model = tmp_path / "dyn.onnx"
    export_torch(net.eval(), (torch.zeros(2, 1, 8, 8),), model, input_names=["x"], dynamic_batch=True)
    samples = tmp_path / "calib"
    samples.mkdir()
    for i, sample in enumerate(np.load(ROOT / "examples" / "digits_cnn.calib.npz")["x"]):
        np.save(samples / f"{i:04d}.npy", sample)
    proc = subprocess.run(
        [sys.executable, "-m", "compiler.cli", str(model), "--input-shape", "x=8,1,8,8", "--quantize", "int8",
         "--calib", str(samples), "--no-lower", "-o", str(tmp_path / "out"), "-q"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    calibration = report["summary"]["calibration"]
    assert calibration["samples"] == 179 and calibration["batches"] == 23
    assert "completed with 5 sample(s)" in calibration["note"]
