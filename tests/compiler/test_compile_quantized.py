"""``compile --quantize``: integer-only artifacts are bit-exact (reference == ORT == TVM) and keep
accuracy; ``--format qdq``; quantization without calibration data is a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from compiler import compile_model
from compiler.cli import main
from compiler.reference import run_reference
from compiler.verify import run_onnxruntime
from tests.tolerances import QUANT_TOP1_DROP_POINTS

pytestmark = pytest.mark.tvm

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "digits_cnn.onnx"


def test_digits_int8_is_integer_only_bit_exact_and_accurate(tmp_path):
    out = tmp_path / "q"
    assert main([str(EXAMPLE), "--quantize", "int8", "-o", str(out), "--quiet", "--no-measure"]) == 0
    report = json.loads((out / "report.json").read_text())
    exact = report["summary"]["verification"]["integer_bit_exact"]
    assert exact["passed"] is True and exact["feeds"] >= 1
    accuracy = report["summary"]["accuracy"]
    fp32 = accuracy["original_onnxruntime"]["top1"]
    assert accuracy["artifact_tvm"]["top1"] == accuracy["optimized_onnxruntime"]["top1"]
    assert (fp32 - accuracy["artifact_tvm"]["top1"]) * 100 <= QUANT_TOP1_DROP_POINTS
    quantization = report["summary"]["quantization"]
    assert quantization["output_agreement"]["top1_agreement"] == 1.0
    assert len(quantization["layers"]) >= 3 and all(r["sqnr_db"] is None or r["sqnr_db"] > 20 for r in quantization["layers"])
    assert "Quantization error per layer" in (out / "report.html").read_text()
    if _host_avx2_without_vnni():  # the report points to the faster exact 7-bit mode
        assert any("--quantize int8-w7" in note for note in report["lowering"]["notes"])
    model = onnx.load(str(out / "model.opt.onnx"))
    ops = {node.op_type for node in model.graph.node}
    assert {"ConvInteger", "MatMulInteger", "BitShift"} <= ops
    assert not ops & {"Conv", "Gemm", "MatMul", "Relu", "BatchNormalization"}
    # Independently of the compile-time check: the artifact, ORT and the reference agree on new data.
    from compiler import load_artifact

    x = np.load(REPO / "examples" / "digits_cnn.eval.npz")["x"][7:8]
    got = load_artifact(out).run({"x": x})
    assert np.array_equal(got[0], run_onnxruntime(model, {"x": x})[0])
    assert np.array_equal(got[0], run_reference(model, {"x": x})[0])


@pytest.mark.parametrize("name,quantize", [("resnet18", "int8"), ("mobilenetv2", "int8"),
                                           ("resnet18", "int8-w7"), ("mobilenetv2", "int8-w7")])
def test_zoo_cnn_int8_bit_exact_reference_ort_tvm(name, quantize, tmp_path):
    """Reference == ORT == TVM on the zoo CNNs; with 7-bit weights (int8-w7) on an AVX2 host
    without VNNI most convs run on the vpmaddubsw rule, still bit-exact."""
    from tests.data.make_models import model_path

    path = model_path(name)
    rng = np.random.default_rng(0)
    calibration = [{"x": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)} for _ in range(4)]
    result = compile_model(path, output=tmp_path / name, quantize=quantize, calibration=calibration,
                           measure=False, verify=False)
    exact = result.report["summary"]["verification"]["integer_bit_exact"]
    assert exact["passed"] is True, exact
    stats = next(p["stats"] for p in result.report["passes"] if p["name"] == "quantize")
    assert stats["islands"] == 0 and stats["integer_layers"] > 10
    rules = list(result.report["lowering"]["scheduled"].values())
    if _host_avx2_without_vnni():
        # the channel- and pixel-vectorized vpmaddubsw conv rules
        maddubs = rules.count("conv2d-int8-avx2-maddubs") + rules.count("conv1x1-int8-avx2-maddubs")
        assert (maddubs >= 15) if quantize == "int8-w7" else (maddubs == 0), rules


def _host_avx2_without_vnni() -> bool:
    from tests.targets.test_schedules_int8 import HOST_VNNI, _host_has_avx2

    return _host_has_avx2() and not HOST_VNNI


def test_qdq_format_compiles_and_runs(tmp_path):
    result = compile_model(EXAMPLE, output=tmp_path / "qdq", quantize="int8", output_format="qdq", measure=False)
    model = onnx.load(str(tmp_path / "qdq" / "model.opt.onnx"))
    ops = [node.op_type for node in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops and "Conv" in ops
    accuracy = result.report["summary"]["accuracy"]
    assert (accuracy["original_onnxruntime"]["top1"] - accuracy["artifact_tvm"]["top1"]) * 100 <= QUANT_TOP1_DROP_POINTS
    assert "integer_bit_exact" in result.report["summary"]["verification"]


def test_quantize_without_calibration_is_one_line_error(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    model.write_bytes(onnx.load(str(EXAMPLE)).SerializeToString())  # no sidecar calib beside it
    code = main([str(model), "--quantize", "int8", "-o", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "quantization needs calibration data" in err[0] and "--calib" in err[0]
    assert not (tmp_path / "o").exists()


def test_quantize_appends_to_explicit_passes(tmp_path):
    result = compile_model(EXAMPLE, output=tmp_path / "p", passes="canonicalize", quantize="int8", observer="percentile", lower=False)
    assert result.report["pipeline"]["spec"].endswith(",quantize{observer=percentile}")


def test_mixed_precision_budget_from_the_cli(tmp_path):
    out = tmp_path / "mp"
    assert main([str(EXAMPLE), "--quantize", "int8", "--budget", "size=0.75x", "--max-drop", "0.5",
                 "-o", str(out), "--quiet", "--no-measure"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert "mixed-precision{size=0.75x,max_drop=0.5},quantize" in report["pipeline"]["spec"]
    notes = next(p["notes"] for p in report["passes"] if p["name"] == "mixed-precision")
    assert any("4 bits" in n for n in notes) and any("top-1 agreement" in n for n in notes)
    assert report["summary"]["verification"]["integer_bit_exact"]["passed"] is True


def test_budget_without_quantize_is_an_error(tmp_path, capsys):
    assert main([str(EXAMPLE), "--budget", "size=2MB", "-o", str(tmp_path / "o"), "--quiet"]) == 2
    assert "add --quantize int8" in capsys.readouterr().err


def test_int4_with_gptq_rounding_from_the_cli(tmp_path):
    """--quantize int4 --weight-rounding gptq: 4-bit codes chosen on the calibration data, still
    integer-only and bit-exact across reference, ORT and TVM; held-out top-1 within budget."""
    out = tmp_path / "q4"
    assert main([str(EXAMPLE), "--quantize", "int4", "--weight-rounding", "gptq", "-o", str(out), "--quiet",
                 "--no-measure"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert "quantize{bits=4,rounding=gptq}" in report["pipeline"]["spec"]
    assert report["summary"]["verification"]["integer_bit_exact"]["passed"] is True
    notes = next(p["notes"] for p in report["passes"] if p["name"] == "quantize")
    assert sum("GPTQ rounding" in n for n in notes) == 3
    accuracy = report["summary"]["accuracy"]
    assert (accuracy["original_onnxruntime"]["top1"] - accuracy["artifact_tvm"]["top1"]) * 100 <= 2 * QUANT_TOP1_DROP_POINTS


@pytest.mark.parametrize("flag", [["--weight-rounding", "gptq"], ["--observer", "mse"]])
def test_quantization_options_without_quantize_are_an_error(tmp_path, capsys, flag):
    assert main([str(EXAMPLE), *flag, "-o", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a quantization option: add --quantize" in err
    assert not (tmp_path / "o").exists()
