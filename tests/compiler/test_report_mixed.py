"""report.html's mixed-precision section (compiler/report_mixed.py) from real pass stats."""

from __future__ import annotations

import json
import re

import numpy as np

from compiler.context import CompileContext
from compiler.pipeline import Pipeline
from compiler.report import render_html
from compiler.report_mixed import mixed_precision_html, pareto_svg
from targets.cost_model import RooflineCostModel
from targets.registry import get_target
from tests.helpers import OPSET, model_from_text


def _stats(options: str) -> dict:
    model = model_from_text(
        OPSET + "g (float[32,16] x) => (float[32,10] y) { h = Gemm <transB=1> (x, w1, b1)\n r = Relu (h)\n"
        " y = Gemm <transB=1> (r, w2, b2) }", w1=(24, 16), b1=(24,), w2=(10, 24), b2=(10,))
    for index, node in enumerate(n for n in model.graph if n.op_type == "Gemm"):
        node.name = f"fc<{index}>"  # needs escaping in HTML
    rng = np.random.default_rng(3)
    target = get_target("cpu")
    ctx = CompileContext(target=target, cost_model=RooflineCostModel(target),
                         calibration=[{"x": rng.normal(size=(32, 16)).astype(np.float32)} for _ in range(4)])
    _, records = Pipeline.parse(f"canonicalize,mixed-precision{{{options}}}").run(model, ctx)
    return json.loads(json.dumps(records[-1].stats))  # what report.json holds


def _report(stats: dict) -> dict:
    return {"passes": [{"name": "canonicalize", "stats": {}}, {"name": "mixed-precision", "stats": stats}]}


def test_section_has_verdict_front_markers_and_why_per_layer() -> None:
    stats = _stats("size=0.75x,sweep=5")
    page = mixed_precision_html(_report(stats))
    assert "<h2>Mixed precision</h2>" in page and "<b class=\"down\">met</b>" in page
    svg = re.search(r"<svg[^>]*pareto.*?</svg>", page, re.S).group(0)
    assert svg.count("<circle") == len(stats["pareto"])  # one dot per front point
    assert ">int8</text>" in svg and ">int4</text>" in svg and ">chosen</text>" in svg and "budget" in svg
    assert "total sensitivity (ILP objective" in svg
    for name, text in stats["why"].items():
        assert _esc(name) in page and _esc(text) in page
    assert "fc<0>" not in page and "fc&lt;0&gt;" in page  # escaped
    # wired into the full page
    assert "<h2>Mixed precision</h2>" in render_html(_report(stats))


def test_measured_front_plots_top1_agreement() -> None:
    stats = _stats("size=0.75x,sweep=3,measure_front=true")
    assert all("top1_agreement" in p["accuracy"] and "sqnr_db" in p["accuracy"] for p in stats["pareto"])
    assert "accuracy" in stats["chosen"] and all("accuracy" in p for p in stats["uniform"].values())
    svg = pareto_svg(stats)
    assert "top-1 agreement with fp32 (measured)" in svg
    assert stats["uniform"]["int8"]["accuracy"]["sqnr_db"] > stats["uniform"]["int4"]["accuracy"]["sqnr_db"]


def test_no_section_without_the_pass_and_no_plot_without_a_sweep() -> None:
    assert mixed_precision_html({"passes": [{"name": "quantize", "stats": {}}]}) == ""
    stats = _stats("size=0.75x,sweep=0")
    assert pareto_svg(stats) == "" and "No Pareto sweep" in mixed_precision_html(_report(stats))


def _esc(text: str) -> str:
    import html

    return html.escape(text, quote=True)
