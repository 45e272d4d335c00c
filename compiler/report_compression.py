"""report.html section for structured compression: one table row per layer a pass looked at.

``compression_html(report)`` renders the :class:`compiler.layer_decisions.LayerDecision` rows that
``prune-channels``, ``factorize-conv`` and ``factorize-gemm`` store under ``stats["layers"]``:
kept channels or ranks, the estimated time of the layer before and after (the target's cost
model), the measured time when ``compile --profile-layers`` ran (TVM per-kernel medians, see
:mod:`compiler.layer_profile`), the error the pass states, and the reason for every layer left
alone. Changed layers come first, largest estimated saving first; layers left alone follow in graph
order. Empty string when no compression pass ran. Only this module and the passes know the row
layout; compiler/report.py calls it with one line.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from compiler.layer_decisions import CHANGED
from compiler.layer_profile import compression_rows

__all__ = ["compression_html"]


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def _pair(before: float | None, after: float | None) -> str:
    """``0.21 → 0.12 (−43%)`` in ms; ``–`` when a side is missing."""
    if before is None and after is None:
        return "–"
    text = f"{_ms(before)} → {_ms(after)}"
    if before and after is not None:
        change = (after / before - 1) * 100
        cls = "down" if change < 0 else "up" if change > 0 else "muted"
        text += f' <span class="{cls}">({change:+.0f}%)</span>'
    return text


def _saving(row: Mapping[str, Any]) -> float:
    before, after = row.get("estimated_ms_before"), row.get("estimated_ms_after")
    return (before - after) if before is not None and after is not None else 0.0


def _row_html(pass_name: str, row: Mapping[str, Any]) -> str:
    changed = row.get("status") in CHANGED
    error = row.get("error")
    error_html = f'<span title="{_e(row.get("error_kind"))}">{error:.2%}</span>' if error is not None else "–"
    shape = row.get("before") or ""
    after = row.get("after") if changed else ""
    status_cls = "down" if changed else "muted"
    return (
        f'<tr><td class="mono">{_e(row.get("layer"))}</td><td>{_e(pass_name)}</td><td>{_e(row.get("op"))}</td>'
        f'<td class="{status_cls}">{_e(row.get("status"))}</td>'
        f"<td>{_e(shape)}{' → ' + _e(after) if after else ''}</td>"
        f'<td class="num">{_pair(row.get("estimated_ms_before"), row.get("estimated_ms_after") if changed else None)}</td>'
        f'<td class="num">{_pair(row.get("measured_ms_before"), row.get("measured_ms_after") if changed else None)}</td>'
        f'<td class="num">{error_html}</td><td>{_e(row.get("reason") or "")}</td></tr>'
    )


def compression_html(report: Mapping[str, Any]) -> str:
    """The "Compression per layer" section (module docstring); '' when no compression pass ran."""
    rows = compression_rows(report.get("passes") or [])
    if not rows:
        return ""
    changed = sorted((r for r in rows if r[1].get("status") in CHANGED), key=lambda r: -_saving(r[1]))
    alone = [r for r in rows if r[1].get("status") not in CHANGED]
    profile = (report.get("summary") or {}).get("compression_profile")
    if profile and profile.get("before"):
        before, after = profile["before"]["model_ms"], profile["after"]["model_ms"]
        measured = (
            f"Measured: {_e(profile.get('source'))}; whole model {before:.3g} → {after:.3g} ms "
            f"({(after / before - 1) * 100:+.1f}%). A kernel fused across two rows counts in both."
        )
    elif profile and profile.get("skipped"):
        measured = f"Not measured: {_e(profile['skipped'])}."
    else:
        measured = "Not measured (compile with <code>--profile-layers</code> to time every layer before and after)."
    head = (
        "<tr><th>layer</th><th>pass</th><th>op</th><th>status</th><th>before → after</th>"
        '<th class="num">est. ms</th><th class="num">measured ms</th><th class="num">error</th><th>why left alone</th></tr>'
    )
    body = "".join(_row_html(name, row) for name, row in changed + alone)
    return (
        "<h2>Compression per layer</h2>"
        f'<p class="muted">{len(changed)} of {len(rows)} layers changed. Estimated ms: the target cost model '
        f"(roofline) for the nodes the layer touches. {measured}</p>"
        f'<table class="layers"><thead>{head}</thead><tbody>{body}</tbody></table>'
    )
