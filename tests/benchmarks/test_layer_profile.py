"""Smoke test of ``python -m benchmarks.layer_profile`` on the digits example: ours and ONNX
Runtime timed per layer, paired by position with the model's Conv / Gemm nodes."""

from __future__ import annotations

import pytest

pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm


@pytest.mark.parametrize("quantize", [None, "int8"], ids=["fp32", "int8"])
def test_digits_layers_are_paired_and_timed(quantize):
    from benchmarks import layer_profile

    result = layer_profile.profile("digits", quantize, runs=3)
    assert result["paired"], result.get("note")
    layers = [row["layer"].split()[0] for row in result["layers"]]
    assert layers == ["Conv", "Conv", "Gemm"]
    for row in result["layers"]:
        assert row["ours_ms"] > 0 and row["ort_ms"] > 0
        assert row["rule"] != "?"  # each paired kernel names the rule that scheduled it
    if quantize:
        assert {row["ort_op"] for row in result["layers"]} <= {"QLinearConv", "QGemm"}
        assert all("int8" in row["rule"] or row["rule"].startswith("conv2d") for row in result["layers"])
    assert result["ours_total_ms"] > 0 and result["ort_total_ms"] > 0
    assert "ratio" in layer_profile.table(result)


def test_unknown_model_is_a_one_line_error(capsys):
    from benchmarks import layer_profile

    assert layer_profile.main(["nosuchmodel"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'nosuchmodel'" in err and err.count("\n") == 1
