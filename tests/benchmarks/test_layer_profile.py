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


def test_ort_layers_are_put_in_graph_order_by_name():
    from benchmarks.layer_profile import ort_in_model_order

    layers = [("/l2/downsample/Conv", "Conv a"), ("/l2/conv1/Conv", "Conv b"), ("/l2/conv2/Conv", "Conv c")]
    executed = [("/l2/conv1/Conv_token_22", "QLinearConv", 1.2), ("/l2/conv2/Conv_token_25", "QLinearConv", 1.1),
                ("/l2/downsample/Conv_token_19", "QLinearConv", 0.1)]
    assert [t for _, _, t in ort_in_model_order(layers, executed)] == [0.1, 1.2, 1.1]
    # a name that matches no layer (or two): ORT's execution order is kept
    renamed = [("fused_0", "FusedConv", 1.0), *executed[1:]]
    assert ort_in_model_order(layers, renamed) == renamed


def test_ort_runs_alternate_with_ours(tmp_path):
    """measure_layers calls ``between_rounds`` after each of its rounds with that round's run count
    (ORT's runs go there), and the ORT profiler keeps one whole-model time per run."""
    import onnx

    from benchmarks import latency
    from benchmarks.layer_profile import OrtNodeProfiler
    from compiler import compile_model
    from compiler.ir import from_proto
    from targets.calibrate_cost import measure_layers

    path = latency.model_for("digits", 1)
    compile_model(path, output=tmp_path / "ours", lower=False, verify=False, measure=False, progress=False)
    ort = OrtNodeProfiler(path, latency._input_feeds(path), tmp_path)
    counts: list[int] = []

    def between(count):
        counts.append(count)
        ort.round(count)

    ours = measure_layers(from_proto(onnx.load(str(tmp_path / "ours" / "model.opt.onnx"))), "cpu", repeats=7, rounds=3,
                          between_rounds=between)
    nodes, total = ort.result()
    assert counts == [3, 2, 2]
    assert len(ort.totals) == 7 and total > 0 and ours.total_s > 0
    assert [op for _, op, _ in nodes if "Conv" in op or "Gemm" in op]  # per-node times of the layers
