"""Least-squares reconstruction on the bundled digits example (real data, real trained model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compiler.accuracy import load_npz_feeds, split_batches
from compiler.context import CompileContext
from compiler.ir import copy_model, load_model
from compiler.verify import run_onnxruntime
from passes.prune.channels import PruneChannelsPass
from tests.passes.prune._models import prepared

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
RATIO = 0.3


def _calibration():
    data, _ = load_npz_feeds(EXAMPLES / "digits_cnn.calib.npz", ["x"])
    return split_batches(data, 1)


def _output_error(model, reference, feeds) -> float:
    """Relative Frobenius error of the logits over all calibration samples."""
    got = np.concatenate([run_onnxruntime(model, f)[0] for f in feeds])
    want = np.concatenate([run_onnxruntime(reference, f)[0] for f in feeds])
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def test_reconstruction_lowers_the_output_error_on_calibration_data():
    original = prepared(load_model(EXAMPLES / "digits_cnn.onnx"))
    calibration = _calibration()
    ctx = CompileContext(calibration=calibration)
    plain, repaired = copy_model(original), copy_model(original)
    PruneChannelsPass(ratio=RATIO, reconstruct=False)(plain, ctx)
    result = PruneChannelsPass(ratio=RATIO, reconstruct=True)(repaired, ctx)
    assert result.stats["reconstructed"] > 0
    assert any(n.startswith("reconstructed") for n in result.notes)
    # Same channels removed: reconstruction changes only the consumers' weights.
    assert [tuple(v.shape) for n in plain.graph for v in n.outputs] == [tuple(v.shape) for n in repaired.graph for v in n.outputs]
    assert _output_error(repaired, original, calibration) < _output_error(plain, original, calibration)


def test_reconstruction_without_calibration_is_skipped_with_a_note():
    model = prepared(load_model(EXAMPLES / "digits_cnn.onnx"))
    result = PruneChannelsPass(ratio=RATIO)(model, CompileContext())
    assert result.modified
    assert "reconstruction skipped: no calibration data" in result.notes
