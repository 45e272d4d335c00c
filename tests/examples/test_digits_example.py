"""The committed digits example: files present and small, accuracy as documented, split reproducible."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import onnx
import pytest

from compiler.accuracy import evaluate_classification, load_npz_feeds
from compiler.verify import ort_session

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MODEL = EXAMPLES / "digits_cnn.onnx"
CALIB = EXAMPLES / "digits_cnn.calib.npz"
EVAL = EXAMPLES / "digits_cnn.eval.npz"
README = EXAMPLES / "README.md"

#: Floor for the held-out top-1; the exact figure lives in examples/README.md only.
MIN_TOP1 = 0.9


def _training_script():
    """examples/train_digits.py as a module (examples/ is not a package). Importing it needs only
    numpy; torch and scikit-learn are imported inside its functions."""
    spec = importlib.util.spec_from_file_location("train_digits", EXAMPLES / "train_digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_files_exist_and_are_small():
    files = [MODEL, CALIB, EVAL, README, EXAMPLES / "train_digits.py"]
    assert all(path.is_file() for path in files), [p.name for p in files if not p.is_file()]
    assert sum(path.stat().st_size for path in files) < 1_000_000
    assert not list(EXAMPLES.glob("*.data")), "the model must be one file with weights inline"


def test_model_signature_is_static_batch_1():
    proto = onnx.load(str(MODEL))
    onnx.checker.check_model(proto, full_check=True)
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert (inp.name, out.name) == ("x", "logits")
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 1, 8, 8]
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == [1, 10]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    # The example is meant to give the canonicalize passes work: BatchNorm must still be there.
    assert [n.op_type for n in proto.graph.node].count("BatchNormalization") == 2


def test_sidecar_data_shapes_and_types():
    calib, calib_labels = load_npz_feeds(CALIB, ["x"])
    assert calib_labels is None
    feeds, labels = load_npz_feeds(EVAL, ["x"])
    for x in (calib["x"], feeds["x"]):
        assert x.dtype == np.float32 and x.shape[1:] == (1, 8, 8)
        assert 0.0 <= x.min() and x.max() <= 1.0
    assert labels.dtype == np.int64 and labels.shape == (feeds["x"].shape[0],)
    assert set(labels.tolist()) == set(range(10))


def test_onnxruntime_accuracy_matches_readme():
    feeds, labels = load_npz_feeds(EVAL, ["x"])
    session = ort_session(onnx.load(str(MODEL)))
    result = evaluate_classification(lambda f: session.run(None, f), feeds, labels, 1, ["x"])
    assert result["samples"] == len(labels)
    assert result["top1"] >= MIN_TOP1
    # README.md records "**0.xxxx (correct/total)**" from the training script's ORT line; the
    # committed model must still produce exactly that.
    match = re.search(r"\*\*(\d\.\d{4}) \((\d+)/(\d+)\)\*\*", README.read_text())
    assert match, "examples/README.md lost its '**top1 (correct/total)**' accuracy figure"
    correct, total = int(match.group(2)), int(match.group(3))
    assert (round(result["top1"] * result["samples"]), result["samples"]) == (correct, total)


def test_split_is_deterministic_and_matches_committed_data():
    pytest.importorskip("sklearn")
    script = _training_script()
    first, second = script.split_digits(), script.split_digits()
    eval_x, eval_labels = load_npz_feeds(EVAL, ["x"])
    calib_x, _ = load_npz_feeds(CALIB, ["x"])
    for split in ("train", "calib", "test"):
        np.testing.assert_array_equal(first[split][0], second[split][0])
        np.testing.assert_array_equal(first[split][1], second[split][1])
    np.testing.assert_array_equal(first["test"][1], eval_labels)
    np.testing.assert_array_equal(first["test"][0], eval_x["x"])
    np.testing.assert_array_equal(first["calib"][0], calib_x["x"])
    # The documented sizes, covering all 1,797 images.
    sizes = [len(first[s][1]) for s in ("train", "calib", "test")]
    assert sum(sizes) == 1797 and sizes == [1078, 179, 540]
