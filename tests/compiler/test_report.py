"""report.json is deterministic outside its ``run`` block; report.html is self-contained and escaped."""

from __future__ import annotations

import json
import re
import types
from html.parser import HTMLParser

import numpy as np
import onnx
import pytest

from compiler.ir import Model, copy_model, from_proto
from compiler.pipeline import PassRecord
from compiler.report import (
    SCHEMA_VERSION,
    build_report,
    build_summary,
    model_summary,
    pass_entry,
    render_html,
    write_json,
)
from targets.cost_model import RooflineCostModel

EVIL = "<script>alert('x')</script>"


def small_model() -> Model:
    proto = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[1,3,8,8] x) => (float[1,4] y) {
            c = Conv<pads=[1,1,1,1]>(x, w)
            r = Relu(c)
            p = GlobalAveragePool(r)
            f = Flatten(p)
            y = Gemm<transB=1>(f, fw)
        }"""
    )
    rng = np.random.default_rng(0)
    proto.graph.initializer.extend([
        onnx.numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
        onnx.numpy_helper.from_array(rng.integers(-5, 5, (4, 8)).astype(np.int8), "fw"),
    ])
    proto.graph.node[0].name = EVIL
    proto.graph.node[4].name = "/head/fc"
    return from_proto(onnx.shape_inference.infer_shapes(proto))


def cost_model() -> RooflineCostModel:
    target = types.SimpleNamespace(
        name="fake", roofline={"peak_gops": {"fp32": 10.0}, "memory_bandwidth_gbps": 5.0, "kernel_overhead_us": 1.0}
    )
    return RooflineCostModel(target)


def make_report(pass_seconds: tuple[float, float], timing: dict) -> dict:
    model = small_model()
    before = model_summary(model, cost_model())
    after = model_summary(copy_model(model), cost_model())
    shrunk = {**after, "nodes": after["nodes"] - 1, "params": after["params"] - 32, "macs": after["macs"] - 100}
    records = [
        pass_entry(PassRecord("fold-constants", "fold-constants", False, pass_seconds[0], {}, [],
                              {"policy": "exact", "skipped": "model not modified"}), before, after),
        pass_entry(
            PassRecord(
                "prune-channels", "prune-channels{ratio=0.3}", True, pass_seconds[1],
                {"pruned": np.int64(3), "ratio": np.float32(0.25), "bad": float("nan")},
                ["group /layer3 not pruned: <Reshape> with unknown mapping"],
                {"policy": "fp32-rewrite", "passed": False, "max_abs": 0.5, "max_rel": 0.1, "cosine": 0.9},
            ),
            after,
            shrunk,
        ),
    ]
    summary = build_summary(
        before, after, file_bytes_before=1000, file_bytes_after=800,
        accuracy={"metric": "top1", "data": "eval.npz",
                  "original_onnxruntime": {"top1": 0.97, "samples": 360},
                  "artifact_tvm": {"top1": 0.96, "samples": 360}},
        verification={"feeds": "calibration", "num_feeds": 4, "per_pass": True, "artifact_vs_onnxruntime": {
            "policy": "tvm-backend", "passed": True, "max_abs": 1e-6, "max_rel": 1e-6, "cosine": 1.0}},
    )
    return build_report(
        model_path="models/small.onnx", model_sha256="0" * 64,
        target_json={"name": "fake", "description": "test target"},
        pipeline_spec="fold-constants,prune-channels{ratio=0.3}", pass_records=records, summary=summary,
        environment={"python": "3.11", "onnx": "1.23"}, status="verify-failed", lowering=None, timing=timing,
        layers_before=before, layers_after=after,
    )


def keys_outside_run(report: dict) -> set[str]:
    found: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                found.add(key)
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk({k: v for k, v in report.items() if k != "run"})
    return found


def test_report_json_differs_only_in_run_block(tmp_path):
    first = make_report((0.01, 0.2), {"total_s": 1.5, "stages": {"passes": 0.21}})
    second = make_report((0.03, 0.9), {"total_s": 7.0, "stages": {"passes": 0.93},
                                       "artifact": {"median_ms": 0.4, "min_ms": 0.3, "runs": 20}})
    write_json(first, tmp_path / "a.json")
    write_json(second, tmp_path / "b.json")
    a = json.loads((tmp_path / "a.json").read_text())
    b = json.loads((tmp_path / "b.json").read_text())
    assert a["run"] != b["run"]
    assert a["run"]["passes"] == [
        {"index": 0, "name": "fold-constants", "seconds": 0.01},
        {"index": 1, "name": "prune-channels", "seconds": 0.2},
    ]
    del a["run"], b["run"]
    assert a == b
    assert "seconds" not in keys_outside_run(first)


def test_report_json_is_sorted_plain_json_with_schema_version(tmp_path):
    report = make_report((0.01, 0.2), {"total_s": 1.0})
    write_json(report, tmp_path / "report.json")
    text = (tmp_path / "report.json").read_text()
    data = json.loads(text)
    assert data["schema_version"] == SCHEMA_VERSION == 1
    assert text == json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert set(data) == {"schema_version", "status", "inputs", "environment", "target", "pipeline", "passes",
                         "summary", "layers", "lowering", "run"}
    assert "layers" not in data["summary"]["before"] and "layers" not in data["summary"]["after"]
    assert data["layers"]["after"][0]["name"] == EVIL
    assert data["summary"]["estimated_latency_ms"]["source"] == "roofline"
    stats = data["passes"][1]["stats"]
    assert stats == {"pruned": 3, "ratio": 0.25, "bad": None}
    assert data["passes"][1]["delta"] == {"nodes": -1, "params": -32, "macs": -100}
    assert data["pipeline"]["passes"] == ["fold-constants", "prune-channels"]


def test_model_summary_counts():
    summary = model_summary(small_model(), cost_model())
    assert summary["nodes"] == 5
    assert summary["params"] == 8 * 3 * 3 * 3 + 4 * 8
    assert summary["weight_bytes"] == 4 * 8 * 3 * 3 * 3 + 1 * 4 * 8  # fp32 conv weight, int8 fc weight
    assert summary["macs"] == 8 * 8 * 8 * 3 * 3 * 3 + 4 * 8
    assert summary["op_counts"] == {"Conv": 1, "Flatten": 1, "Gemm": 1, "GlobalAveragePool": 1, "Relu": 1}
    assert summary["estimate_source"] == "roofline"
    assert summary["estimated_ms"] == pytest.approx(sum(layer["estimated_ms"] for layer in summary["layers"]))
    conv = summary["layers"][0]
    assert (conv["name"], conv["output_shapes"], conv["params"]) == (EVIL, [[1, 8, 8, 8]], 216)
    plain = model_summary(small_model())
    assert plain["estimated_ms"] is None and plain["layers"][0]["estimated_ms"] is None


def test_pass_times_may_come_from_timing_instead_of_the_records():
    report = make_report((0.01, 0.2), {"total_s": 1.0})
    records = [{k: v for k, v in p.items() if k != "index"} for p in report["passes"]]  # no "seconds"
    timing = {"passes_s": {"00-fold-constants": 0.25, "01-prune-channels": 2.5}}
    rebuilt = build_report(
        model_path="m.onnx", model_sha256="", target_json={}, pipeline_spec="", pass_records=records,
        summary=report["summary"], environment={}, status="ok", lowering=None, timing=timing,
    )
    assert "passes" not in rebuilt["run"] and rebuilt["passes"] == report["passes"]
    rows = re.findall(r'<tr class="pass-row">.*?</tr>', render_html(rebuilt))
    assert "250 ms" in rows[0] and "2.5 s" in rows[1]
    with pytest.raises(ValueError, match="given twice"):
        build_report(
            model_path="m.onnx", model_sha256="", target_json={}, pipeline_spec="", summary={}, environment={},
            status="ok", lowering=None, timing={"passes": []},
            pass_records=[{**records[0], "seconds": 1.0}],
        )


def test_build_report_rejects_incomplete_pass_records():
    with pytest.raises(ValueError, match="lacks delta"):
        build_report(
            model_path="m.onnx", model_sha256="", target_json={}, pipeline_spec="", summary={}, environment={},
            status="ok", lowering=None, timing={},
            pass_records=[{"name": "x", "spec": "x", "modified": False, "seconds": 0.0, "stats": {}, "notes": [],
                           "check": None}],  # no "delta"
        )


class _TagCounter(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)


def test_render_html_tables_plots_and_labels():
    timing = {
        "total_s": 1.0,
        "artifact": {"median_ms": 0.42, "min_ms": 0.4, "runs": 17},
        "onnxruntime_fp32": {"median_ms": 0.3, "min_ms": 0.2, "runs": 20},
    }
    page = render_html(make_report((0.01, 0.2), timing))
    rows = re.findall(r'<tr class="pass-row">.*?</tr>', page)
    assert len(rows) == 2
    assert "skipped · model not modified" in rows[0] and 'class="fail"' not in rows[0]
    assert "prune-channels{ratio=0.3}" in rows[1] and 'class="fail"' in rows[1]
    assert "&lt;Reshape&gt;" in rows[1]
    assert "estimate (roofline)" in page and "source: measured (artifact, median of 17 runs)" in page
    assert "420 µs" in page and "onnxruntime_fp32: 300 µs" in page
    assert "0.97 → 0.96" in page and "1e-06" in page
    assert page.count("<svg") >= 2
    parser = _TagCounter()
    parser.feed(page)
    assert "rect" in parser.tags and "table" in parser.tags


def test_render_html_escapes_and_is_self_contained():
    page = render_html(make_report((0.01, 0.2), {"total_s": 1.0}))
    assert "<script" not in page.lower()  # the node name is escaped and the page has no JS
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert not re.search(r"(src|href)\s*=|@import|url\(", page)
