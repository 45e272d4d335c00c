"""The per-layer compression table: rows from the passes, measured columns from a profile, HTML.

Rows (compiler/layer_decisions.py) are checked on the digits example for both pass families; the
measured columns are checked with a hand-built profile (the matching rule) and end to end with
``compile --profile-layers`` (TVM kernels timed before and after)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compiler import compile_model
from compiler.cli import main
from compiler.layer_decisions import CHANGED, LayerDecision
from compiler.layer_profile import LayerProfile, attach_measured
from compiler.report_compression import compression_html

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "digits_cnn.onnx"


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    """digits compiled with --prune 0.3 --lowrank auto and --profile-layers (three small builds)."""
    out = tmp_path_factory.mktemp("compress") / "c"
    return compile_model(EXAMPLE, output=out, prune=0.3, lowrank="auto", profile_layers=True, verify=False, progress=False)


def _rows(report, name):
    entry = next(p for p in report["passes"] if p["name"] == name)
    return entry["stats"]["layers"]


def test_every_layer_has_a_row_and_every_layer_left_alone_a_reason(compressed):
    report = compressed.report
    prune = _rows(report, "prune-channels")
    conv = _rows(report, "factorize-conv")
    gemm = _rows(report, "factorize-gemm")
    # digits: conv1 -> conv2 -> flatten -> fc; two prunable groups (conv outputs), two convs, one Gemm.
    assert len(prune) >= 2 and len(conv) == 2 and len(gemm) == 1
    for row in prune + conv + gemm:
        if row["status"] in CHANGED:
            assert row["estimated_ms_after"] < row["estimated_ms_before"], row
            assert row["reason"] is None, row
        else:
            assert row["reason"], row
    pruned = [r for r in prune if r["status"] == "pruned"]
    assert pruned, "a 30% latency cut prunes at least one group"
    for row in pruned:
        assert row["details"]["channels_after"] < row["details"]["channels_before"]
        assert row["error"] is not None and "held-out" in row["error_kind"]


def test_factorized_rows_name_the_nodes_that_now_compute_the_layer(compressed):
    graph_nodes = {n.name for n in __import__("onnx").load(compressed.output_dir / "model.opt.onnx").graph.node}
    for name in ("factorize-conv", "factorize-gemm"):
        for row in _rows(compressed.report, name):
            if row["status"] == "factorized":
                assert len(row["nodes_after"]) >= 2 and set(row["nodes_after"]) <= graph_nodes
                assert row["details"]["ranks"] and row["details"]["full_rank"] >= max(row["details"]["ranks"])


def test_profile_fills_measured_columns_and_report_sections(compressed):
    report = compressed.report
    profile = report["summary"]["compression_profile"]
    assert profile["before"]["model_ms"] > 0 and profile["after"]["model_ms"] > 0
    assert profile["rows_measured"] >= 1
    changed = [r for n in ("prune-channels", "factorize-conv", "factorize-gemm") for r in _rows(report, n) if r["status"] in CHANGED]
    assert all(r["measured_ms_before"] is not None and r["measured_ms_after"] is not None for r in changed)
    on_disk = json.loads((compressed.output_dir / "report.json").read_text())
    assert on_disk["summary"]["compression_profile"]["rows_measured"] == profile["rows_measured"]
    page = (compressed.output_dir / "report.html").read_text()
    assert "Compression per layer" in page and "whole model" in page
    for row in changed:
        assert row["layer"] in page


def test_measured_time_sums_the_distinct_kernels_running_a_rows_nodes():
    before = LayerProfile([(["a", "relu_a"], 0.002), (["b"], 0.003), (["c"], 0.004)], 9.0, 3, 0)
    after = LayerProfile([(["a_lowrank_0"], 0.001), (["a", "relu_a"], 0.0005), (["b"], 0.003)], 4.5, 3, 0)
    rows = [
        LayerDecision("a", "Conv", "factorized", "Conv 8x8x3x3", "rank 2", nodes=["a"], nodes_after=["a_lowrank_0", "a"]).to_json(),
        LayerDecision("g", "channel group", "pruned", "8 channels", "4 channels", nodes=["a", "b", "relu_a"], nodes_after=["a", "b", "relu_a"]).to_json(),
        LayerDecision("z", "Gemm", "dense", "Gemm 4x4", "Gemm 4x4", reason="not faster", nodes=["zz"], nodes_after=["zz"]).to_json(),
    ]
    filled = attach_measured([("factorize-conv", {"layers": rows[:1]}), ("prune-channels", {"layers": rows[1:]})], before, after)
    assert filled == 2
    assert rows[0]["measured_ms_before"] == pytest.approx(2.0) and rows[0]["measured_ms_after"] == pytest.approx(1.5)
    # the kernel fusing a and relu_a counts once, not once per matching node
    assert rows[1]["measured_ms_before"] == pytest.approx(5.0) and rows[1]["measured_ms_after"] == pytest.approx(3.5)
    assert rows[2]["measured_ms_before"] is None


def test_a_row_left_alone_without_a_reason_is_refused():
    with pytest.raises(ValueError, match="without a reason"):
        LayerDecision("x", "Conv", "dense", "", "")
    with pytest.raises(ValueError, match="not one of"):
        LayerDecision("x", "Conv", "shrunk", "", "")


def test_html_escapes_and_orders_changed_rows_by_estimated_saving():
    rows = [
        LayerDecision("<small>", "Conv", "factorized", "Conv", "rank 1", estimated_ms_before=1.0, estimated_ms_after=0.9).to_json(),
        LayerDecision("conv_big", "Conv", "factorized", "Conv", "rank 2", estimated_ms_before=2.0, estimated_ms_after=1.0).to_json(),
        LayerDecision("gemm_dense", "Gemm", "dense", "Gemm", "Gemm", reason="factorized estimate >= dense").to_json(),
    ]
    page = compression_html({"passes": [{"name": "factorize-conv", "stats": {"layers": rows}}], "summary": {}})
    assert "&lt;small&gt;" in page and "<small>" not in page
    assert page.index("conv_big") < page.index("&lt;small&gt;") < page.index("gemm_dense")
    assert "factorized estimate &gt;= dense" in page and "--profile-layers" in page
    assert compression_html({"passes": [{"name": "canonicalize", "stats": {}}]}) == ""


def test_profile_layers_without_compression_is_a_note_not_an_error(tmp_path):
    result = compile_model(EXAMPLE, output=tmp_path / "p", profile_layers=True, lower=False, progress=False)
    assert "no pruning or low-rank pass" in result.report["summary"]["compression_profile"]["skipped"]


def test_cli_help_teaches_profile_layers(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--profile-layers" in capsys.readouterr().out
