"""``compile --tune N --tuning-records DIR`` tunes once; a later compile reuses the records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from compiler import load_artifact
from compiler.cli import main
from compiler.verify import compare, run_onnxruntime
from tests.tolerances import TVM_BACKEND

pytestmark = pytest.mark.tvm


def test_tune_then_reuse_records(tmp_path: Path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    model = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[64,64] x) => (float[64,64] y) { t = MatMul (x, w)  y = Relu (t) }"""
    )
    model.graph.initializer.append(onnx.numpy_helper.from_array(w, "w"))
    path = tmp_path / "mm.onnx"
    path.write_bytes(model.SerializeToString())
    records = tmp_path / "records"

    assert main([str(path), "--tune", "2", "--tuning-records", str(records), "-o", str(tmp_path / "a"), "--quiet", "--no-measure"]) == 0
    assert any(records.glob("*/database_tuning_record.json"))
    first = json.loads((tmp_path / "a" / "report.json").read_text())
    assert "tuning_s" in first["run"]

    assert main([str(path), "--tuning-records", str(records), "-o", str(tmp_path / "b"), "--quiet", "--no-measure"]) == 0
    second = json.loads((tmp_path / "b" / "report.json").read_text())
    assert "tuned" in second["lowering"]["scheduled"].values()
    assert "tuning_s" not in second["run"]
    x = rng.standard_normal((64, 64)).astype(np.float32)
    got = load_artifact(tmp_path / "b").run({"x": x})
    assert compare(got, run_onnxruntime(model, {"x": x}), TVM_BACKEND)["passed"]


def test_missing_records_dir_is_an_error(tmp_path, capsys):
    example = Path(__file__).resolve().parents[2] / "examples" / "digits_cnn.onnx"
    code = main([str(example), "--tuning-records", str(tmp_path / "none"), "-o", str(tmp_path / "o"), "--quiet"])
    assert code == 2 and "no such directory" in capsys.readouterr().err
