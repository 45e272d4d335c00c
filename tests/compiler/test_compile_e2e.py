"""End to end: ``compile`` on the bundled example and on the in-repo models; load the artifact back
and compare it with ONNX Runtime on the original model."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from compiler import compile_model, load_artifact
from compiler.cli import main
from compiler.errors import OptionError
from compiler.verify import compare, run_onnxruntime
from tests.tolerances import TVM_BACKEND

pytestmark = pytest.mark.tvm

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "digits_cnn.onnx"


@pytest.fixture(scope="module")
def example_out(tmp_path_factory) -> Path:
    """The README's second command, run once for this module."""
    out = tmp_path_factory.mktemp("e2e") / "digits_cnn-cpu"
    assert main([str(EXAMPLE), "--target", "cpu", "-o", str(out), "--quiet"]) == 0
    return out


def test_output_directory_contents(example_out):
    names = {p.name for p in example_out.iterdir()}
    assert {"model.so", "model.opt.onnx", "pipeline.txt", "report.json", "report.html", "manifest.json"} <= names
    onnx.checker.check_model(onnx.load(str(example_out / "model.opt.onnx")))
    assert not [n for n in names if n.startswith(".")]


def test_artifact_equals_onnxruntime_on_held_out_digits(example_out):
    data = np.load(REPO / "examples" / "digits_cnn.eval.npz")
    artifact = load_artifact(example_out)
    assert artifact.input_names == ["x"]
    for i in range(5):
        feeds = {"x": data["x"][i : i + 1]}
        got = artifact.run(feeds)
        want = run_onnxruntime(onnx.load(str(EXAMPLE)), feeds)
        assert isinstance(got, list) and len(got) == len(want)
        assert compare(got, want, TVM_BACKEND)["passed"]


def test_report_has_checks_accuracy_and_canonicalize_effects(example_out):
    report = json.loads((example_out / "report.json").read_text())
    assert report["schema_version"] >= 1
    assert report["status"] == "ok"
    names = [p["name"] for p in report["passes"]]
    assert "fold-batchnorm" in names and "eliminate-identity" in names
    bn = next(p for p in report["passes"] if p["name"] == "fold-batchnorm")
    assert bn["modified"] and bn["check"]["passed"] and bn["delta"]["nodes"] < 0
    accuracy = report["summary"]["accuracy"]
    assert accuracy["original_onnxruntime"]["samples"] > 100
    # The canonicalized and compiled models classify the held-out digits like the original.
    assert accuracy["artifact_tvm"]["top1"] == pytest.approx(accuracy["original_onnxruntime"]["top1"], abs=1e-9)
    check = report["summary"]["verification"]["artifact_vs_onnxruntime"]
    assert check["passed"] and check["max_abs"] < 1e-3
    html = (example_out / "report.html").read_text()
    assert "fold-batchnorm" in html and "<svg" in html


def test_pipeline_txt_replays_and_report_is_deterministic(example_out, tmp_path):
    replay = tmp_path / "replay"
    spec = "@" + str(example_out / "pipeline.txt")
    assert main([str(EXAMPLE), "-o", str(replay), "--passes", spec, "--quiet"]) == 0
    first = json.loads((example_out / "report.json").read_text())
    second = json.loads((replay / "report.json").read_text())
    first.pop("run")
    second.pop("run")
    assert first == second
    assert (replay / "model.opt.onnx").read_bytes() == (example_out / "model.opt.onnx").read_bytes()


def test_force_replaces_existing_output(example_out, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(example_out, out)
    (out / "stale.txt").write_text("old")
    with pytest.raises(OptionError, match="already exists"):
        compile_model(EXAMPLE, output=out, lower=False)
    compile_model(EXAMPLE, output=out, lower=False, force=True)
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "report.json").read_text())["status"] == "lowering-skipped"


def test_artifact_rejects_wrong_feeds(example_out):
    artifact = load_artifact(example_out)
    with pytest.raises(OptionError, match="shape"):
        artifact.run({"x": np.zeros((2, 1, 8, 8), np.float32)})
    with pytest.raises(OptionError, match="missing"):
        artifact.run({"y": np.zeros((1, 1, 8, 8), np.float32)})


def test_dynamic_batch_model_with_input_shape(tmp_path):
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,6] x) => (float[N,3] y) <float[6,3] w = {0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0,1.1,1.2,1.3,1.4,1.5,1.6,1.7,1.8}> {
       t = MatMul (x, w)
       y = Relu (t)
    }
    """
    path = tmp_path / "dyn.onnx"
    path.write_bytes(onnx.parser.parse_model(text).SerializeToString())
    result = compile_model(path, output=tmp_path / "out", input_shapes={"x": (4, 6)}, measure=False)
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    got = result.load().run({"x": x})
    want = run_onnxruntime(onnx.load(str(path)), {"x": x})
    assert compare(got, want, TVM_BACKEND)["passed"]
    assert load_artifact(tmp_path / "out").inputs == [{"name": "x", "shape": [4, 6], "dtype": "float32"}]


@pytest.mark.parametrize("name", ["transformer", pytest.param("resnet18", marks=pytest.mark.slow), pytest.param("mobilenetv2", marks=pytest.mark.slow)])
def test_in_repo_models_end_to_end(name, tmp_path):
    sys.path.insert(0, str(REPO))
    from tests.data.make_models import model_path

    path = model_path(name)
    result = compile_model(path, output=tmp_path / name, measure=False)
    check = result.report["summary"]["verification"]["artifact_vs_onnxruntime"]
    assert check["passed"], check
