"""report.html sections for mixed precision (the ``mixed-precision`` pass's stats in report.json).

``mixed_precision_html(report)`` returns the HTML of:

* the chosen bits per layer with the sensitivity of each choice (8 / 4 bits; float is 0), the
  layer's estimated size and latency at the chosen width, and why it got that width (the ILP's
  trade-off or the accuracy fallback that raised it), plus Tr(H)/n when the Hessian estimator ran;
* the Pareto front as an inline SVG scatter plot: x = the swept resource (size, estimated latency
  or bit operations), y = the accuracy proxy -- measured top-1 agreement with fp32 when the pass
  measured the front (``measure_front``), else the ILP objective (total sensitivity, lower is
  better, drawn with the best at the top) -- with the uniform int8 / int4 points and the chosen
  point marked, and the budget as a vertical line.

Empty string when the report has no mixed-precision pass. Only this module knows the pass's stats
layout; compiler/report.py calls it with two lines.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["mixed_precision_html", "pareto_svg"]


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(resource: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if resource == "size":
        return f"{value / 1e6:.3g} MB" if value >= 1e6 else f"{value / 1e3:.3g} KB" if value >= 1e3 else f"{value:.0f} B"
    if resource == "latency":
        return f"{value * 1e3:.3g} ms"
    return f"{value:.3g}"


_RESOURCE_TITLE = {"size": "layer weights size", "latency": "estimated layer latency", "bops": "bit operations"}


def _proxy(point: Mapping[str, Any], measured: bool) -> float | None:
    if measured:
        acc = point.get("accuracy") or {}
        return acc.get("top1_agreement")
    return point.get("sensitivity")


def pareto_svg(stats: Mapping[str, Any]) -> str:
    """The front of one pass's stats as inline SVG (module docstring); '' when there is no front."""
    front = stats.get("pareto") or []
    resource = stats.get("pareto_resource") or "size"
    if not front:
        return ""
    uniform = stats.get("uniform") or {}
    chosen = stats.get("chosen") or {}
    measured = all(p.get("accuracy") for p in front)
    marks = [("front", p) for p in front] + [(name, p) for name, p in uniform.items()] + [("chosen", chosen)]
    pts = [(kind, p.get(resource), _proxy(p, measured)) for kind, p in marks]
    pts = [(k, x, y) for k, x, y in pts if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    if not pts:
        return ""
    width, height, left, right, top, bottom = 540, 300, 84, 24, 30, 50
    xs, ys = [x for _, x, _ in pts], [y for _, _, y in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    budget = (stats.get("budgets") or {}).get(resource)
    if budget is not None and math.isfinite(budget):
        x0, x1 = min(x0, budget), max(x1, budget)
    pad_x = (x1 - x0) * 0.06 or abs(x0) * 0.1 or 1.0
    pad_y = (y1 - y0) * 0.08 or abs(y0) * 0.1 or 1.0
    x0, x1, y0, y1 = x0 - pad_x, x1 + pad_x, y0 - pad_y, y1 + pad_y
    plot_w, plot_h = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        # higher agreement up; for sensitivity (lower is better) the best (lowest) is up too
        frac = (y - y0) / (y1 - y0)
        return top + (1 - frac) * plot_h if measured else top + frac * plot_h

    y_title = "top-1 agreement with fp32 (measured)" if measured else "total sensitivity (ILP objective, lower is better)"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart pareto" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="Pareto front">',
        f'<text x="{left}" y="18" class="chart-title">Pareto front: {_e(_RESOURCE_TITLE.get(resource, resource))} vs accuracy proxy</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#9ca3af"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#9ca3af"/>',
    ]
    for frac in (0.0, 0.5, 1.0):
        xv, yv = x0 + pad_x + frac * (x1 - x0 - 2 * pad_x), y0 + pad_y + frac * (y1 - y0 - 2 * pad_y)
        parts.append(f'<text x="{sx(xv):.1f}" y="{top + plot_h + 16}" text-anchor="middle" class="chart-value">{_e(_fmt(resource, xv))}</text>')
        label = f"{yv:.4f}" if measured else f"{yv:.3g}"
        parts.append(f'<text x="{left - 6}" y="{sy(yv) + 4:.1f}" text-anchor="end" class="chart-value">{_e(label)}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle" class="chart-label">'
                 f'{_e(_RESOURCE_TITLE.get(resource, resource))}{" (estimate)" if resource == "latency" else ""}</text>')
    parts.append(f'<text x="14" y="{top + plot_h / 2}" transform="rotate(-90 14 {top + plot_h / 2})" text-anchor="middle" '
                 f'class="chart-label">{_e(y_title)}</text>')
    if budget is not None and math.isfinite(budget):
        bx = sx(budget)
        parts.append(f'<line x1="{bx:.1f}" y1="{top}" x2="{bx:.1f}" y2="{top + plot_h}" stroke="#f59e0b" stroke-dasharray="4 3"/>'
                     f'<text x="{bx + 4:.1f}" y="{top + 10}" class="chart-value">budget</text>')
    line = [(sx(x), sy(y)) for k, x, y in pts if k == "front"]
    if len(line) > 1:
        parts.append('<polyline fill="none" stroke="#6366f1" stroke-width="1.5" points="'
                     + " ".join(f"{a:.1f},{b:.1f}" for a, b in line) + '"/>')
    style = {"front": ("circle", "#6366f1", 4), "int8": ("square", "#15803d", 6), "int4": ("square", "#b91c1c", 6),
             "chosen": ("diamond", "#f59e0b", 8)}
    for kind, x, y in pts:
        shape, color, r = style.get(kind, ("circle", "#6b7280", 4))
        cx, cy = sx(x), sy(y)
        tip = f"{kind}: {_fmt(resource, x)}, {y:.4g}"
        if shape == "circle":
            mark = f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{r}" fill="{color}"/>'
        elif shape == "square":
            mark = f'<rect x="{cx - r / 2:.1f}" y="{cy - r / 2:.1f}" width="{r}" height="{r}" fill="none" stroke="{color}" stroke-width="2"/>'
        else:
            mark = (f'<polygon points="{cx:.1f},{cy - r:.1f} {cx + r:.1f},{cy:.1f} {cx:.1f},{cy + r:.1f} {cx - r:.1f},{cy:.1f}" '
                    f'fill="{color}" fill-opacity="0.85"/>')
        # uniform labels above-right, the chosen one below-right (they often share a point)
        dy = r + 10 if kind == "chosen" else -r
        label = "" if kind == "front" else f'<text x="{cx + r + 3:.1f}" y="{cy + dy:.1f}" class="chart-value">{_e(kind)}</text>'
        parts.append(f"<g><title>{_e(tip)}</title>{mark}{label}</g>")
    parts.append("</svg>")
    legend = ('<p class="muted">● ILP front points (budget swept), □ uniform int8 (green) / int4 (red), ◆ chosen map, '
              "dashed: the budget.</p>")
    return "".join(parts) + legend


def _bits_table(stats: Mapping[str, Any]) -> str:
    bits = stats.get("bits") or {}
    sens = stats.get("sensitivity") or {}
    costs = stats.get("costs") or {}
    why = stats.get("why") or {}
    hessian = stats.get("hessian") or {}
    layers = stats.get("layers") or [{"name": n, "label": n} for n in bits]
    rows = []
    for layer in layers:
        name = layer["name"]
        choice = str(bits.get(name, "?"))
        row_sens = sens.get(name) or {}
        cost = (costs.get(name) or {}).get(choice, {})
        trace = hessian.get(name, {}).get("per_weight")
        rows.append(
            f"<tr><td>{_e(layer.get('label', name))}</td><td><b>{_e(choice if choice == 'float' else choice + ' bits')}</b></td>"
            f'<td class="num">{_e(_num(row_sens.get("8")))}</td><td class="num">{_e(_num(row_sens.get("4")))}</td>'
            + (f'<td class="num">{_e(_num(trace))}</td>' if hessian else "")
            + f'<td class="num">{_e(_fmt("size", cost.get("size")))}</td><td class="num">{_e(_fmt("latency", cost.get("latency")))}</td>'
            f"<td>{_e(why.get(name, ''))}</td></tr>"
        )
    head = ("<tr><th>layer</th><th>bits</th><th>sensitivity @8</th><th>sensitivity @4</th>"
            + ("<th>Tr(H)/n</th>" if hessian else "") + "<th>size</th><th>latency (est.)</th><th>why</th></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _num(value: Any) -> str:
    return "–" if value is None else f"{float(value):.3g}"


def _totals_table(stats: Mapping[str, Any]) -> str:
    rows = []
    entries = [("chosen", stats.get("chosen") or {})] + list((stats.get("uniform") or {}).items())
    budgets = stats.get("budgets") or {}
    for name, point in entries:
        acc = point.get("accuracy") or {}
        agreement = acc.get("top1_agreement", stats.get("top1_agreement") if name == "chosen" else None)
        rows.append(
            f"<tr><td>{_e(name)}</td><td class=\"num\">{_e(_fmt('size', point.get('size')))}</td>"
            f"<td class=\"num\">{_e(_fmt('latency', point.get('latency')))}</td><td class=\"num\">{_e(_fmt('bops', point.get('bops')))}</td>"
            f"<td class=\"num\">{_e(_num(point.get('sensitivity')))}</td>"
            f"<td class=\"num\">{_e('–' if agreement is None else f'{agreement:.4f}')}</td>"
            f"<td class=\"num\">{_e(_num(acc.get('sqnr_db')))}</td></tr>"
        )
    limits = ", ".join(f"{k} <= {_fmt(k, v)}" for k, v in budgets.items()) or "none (least total sensitivity)"
    met = all((stats.get("chosen") or {}).get(k, math.inf) <= v * (1 + 1e-9) for k, v in budgets.items())
    verdict = (f'<p>Budget: {_e(limits)} — <b class="{"down" if met else "up"}">{"met" if met else "not met"}</b> by the chosen map '
               f"({_e(stats.get('latency_source', ''))} latency; sizes are the quantizable layers' weights + int32 bias, int4 packed two per byte).</p>")
    head = ("<tr><th>map</th><th>size</th><th>latency (est.)</th><th>bit ops</th><th>total sensitivity</th>"
            "<th>top-1 agreement</th><th>output SQNR dB</th></tr>")
    return verdict + f"<table>{head}{''.join(rows)}</table>"


def mixed_precision_html(report: Mapping[str, Any]) -> str:
    """The mixed-precision sections of report.html (module docstring), or ''."""
    records: Sequence[Mapping[str, Any]] = [p for p in report.get("passes") or [] if p.get("name") == "mixed-precision"]
    if not records or not (records[-1].get("stats") or {}).get("bits"):
        return ""
    stats = records[-1]["stats"]
    method = stats.get("sensitivity_method", "perturbation")
    what = ("Hessian trace (Hutchinson) x squared quantization error, in KL units" if method == "hessian"
            else f"output perturbation with one layer quantized ({stats.get('sensitivity_metric', 'mse')} of the outputs)")
    fallbacks = stats.get("fallbacks") or []
    parts = [
        "<h2>Mixed precision</h2>",
        f'<p class="muted">Per-layer weight widths chosen by an integer linear program (HiGHS) minimising the total '
        f"sensitivity ({_e(what)}) within the budgets; costs from the target's cost model.</p>",
        _totals_table(stats),
        '<div class="charts"><div class="chart-box">' + (pareto_svg(stats) or '<p class="muted">No Pareto sweep (sweep=0).</p>') + "</div></div>",
        "<h3>Bits per layer and why</h3>",
        _bits_table(stats),
    ]
    if fallbacks:
        parts.append("<h3>Accuracy fallbacks</h3><ul class=\"notes\">" + "".join(f"<li>{_e(f)}</li>" for f in fallbacks) + "</ul>")
    return "".join(parts)
