"""``report.json`` and ``report.html``: what a compilation did, in numbers and in words.

Determinism rule: every section of the report except ``run`` is a function of the inputs and options
only, so two compilations of the same model with the same options write the same ``report.json``
except its ``run`` block. Every wall-clock number (pass times, stage times, measured latency) lives in
``run``; :func:`build_report` moves a pass record's ``seconds`` there. Estimates are labelled
``"roofline"``, measurements ``"measured"``. Keys are sorted when written (:func:`write_json`).

Schema (``schema_version`` 1), field by field
--------------------------------------------
``schema_version``: int, 1.

``status``: str. ``"ok"`` when every stage ran and every check passed; otherwise a kebab-case word
naming the stage, ``"<stage>-failed"`` (e.g. ``"verify-failed"``) or ``"<stage>-skipped"`` (e.g.
``"lowering-skipped"``). HTML colours: ``ok`` green, containing ``fail``/``error`` red, else amber.

``inputs``: ``{"model_path": str (as the user gave it), "model_name": str (its file name),
"model_sha256": str (hex digest of the input file)}``.

``environment``: ``{str: str}``: python, platform and package versions (:func:`environment_info`).
No times, no host names.

``target``: ``Target.to_json()`` (name, description, tvm_target, export_format, runs_locally,
precisions, channel_multiple); the caller may add ``"cost_model": RooflineCostModel.to_json()``.

``pipeline``: ``{"spec": str (expanded replayable spec, as in pipeline.txt), "passes": [str]}``.

``passes``: list, one per pass in run order (:func:`pass_entry` builds the input records)::

    {"index": int, "name": str, "spec": str, "modified": bool,
     "stats": {str: JSON value}, "notes": [str],
     "check": null | verify.compare() dict {"policy", "passed", "max_abs", "max_rel", "cosine"}
                     (or {"policy", "passed": false, "reason"}; or {"policy", "skipped": str}
                     when the check was not run, e.g. "model not modified"),
     "delta": {"nodes": int, "params": int, "macs": int}}      # after minus before

``summary`` (:func:`build_summary` builds it)::

    {"before": counts, "after": counts,        # counts = model_summary() without "layers"
     "file_bytes": {"before": int|null, "after": int|null},   # input file, model.opt.onnx
     "estimated_latency_ms": null | {"before": float, "after": float, "source": "roofline"},
     "accuracy": null | {"metric": str (e.g. "top1"), "data": str (eval file),
                         <run>: {<metric>: float, "samples": int}, ...},
                 # runs in order, e.g. "original_onnxruntime", "optimized_onnxruntime",
                 # "artifact_tvm" (or "artifact_tvm_rpc": run on a board); the first is "before",
                 # the last is "after" in the HTML card
     "verification": null | {"feeds": str, "num_feeds": int, "per_pass": bool,
                             "artifact_vs_onnxruntime": null | compare() dict,
                             "artifact_on_device_vs_onnxruntime"?: compare() dict + "where"}}
                 # the device check is present with --rpc-tracker; artifact_vs_onnxruntime is the
                 # local check, or the device check for targets that do not run here

  Other keys the caller adds are kept and shown nowhere special. ``counts`` (:func:`model_summary`)::

    {"nodes": int, "params": int (scalars in initializers), "macs": int,
     "weight_bytes": int (initializers at their dtype size), "op_counts": {op_type: int},
     "unknown_cost_nodes": [node label], "estimated_ms": float|null,
     "estimate_source": "roofline"|null}

``layers``: ``{"before": [layer]|null, "after": [layer]|null}``, one layer per top-level node::

    {"name": str, "op_type": str, "output_shapes": [[int|str]|null], "macs": int, "ops": int,
     "params": int, "bytes": int, "precision": str, "known": bool, "reason": str,
     "estimated_ms": float|null, "bound": "compute"|"memory"|"none"|null}

``lowering``: null when not lowered, else a deterministic dict from ``targets.lowering`` (e.g.
``{"library": "model.so", "tvm_target": dict, "scheduled": [...], "unscheduled": [...],
"notes": [...], "per_image_batch": N|null}``; ``per_image_batch`` is N when the artifact runs the
batch-1 network on each of N images, see targets/lowering/batch_split.py); no times.

``run``: the only non-deterministic block: the ``timing`` argument, plus ``"passes"`` when the pass
records carry ``seconds``. Recognised entries (all optional)::

    "<stage>_s": float                 # wall seconds of a stage, e.g. "total_s", "lowering_s"
    "passes": [{"index": int, "name": str, "seconds": float}]
    "passes_s": {"<index:02d>-<name>": float}           # alternative form of the same
    "<measurement>": {"median_ms": float, "min_ms": float, "runs": int, "where"?: str}
                     # measured latency, e.g. "artifact" (the compiled library, this machine),
                     # "onnxruntime_fp32" (the reference) and "artifact_rpc" (the library on a
                     # board via TVM RPC; also "runner", "tracker", "key", "device"); shown
                     # labelled "measured" (plus "where"); the card prefers "artifact_rpc"

Every value is plain JSON: numpy scalars/arrays, tuples, paths and enums are converted by
:func:`build_report`; NaN and infinities become null.
"""

from __future__ import annotations

import dataclasses
import enum
import html
import importlib.metadata
import json
import math
import os
import platform
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from compiler.ir import Model, count_parameters
from compiler.pipeline import PassRecord
from compiler.report_compression import compression_html
from compiler.report_mixed import mixed_precision_html
from targets.cost_model import SOURCE_ESTIMATE, SOURCE_MEASURED, model_work

__all__ = [
    "SCHEMA_VERSION",
    "model_summary",
    "pass_entry",
    "build_summary",
    "build_report",
    "environment_info",
    "write_json",
    "render_html",
    "write_html",
]

SCHEMA_VERSION = 1
_PASS_KEYS = ("name", "spec", "modified", "stats", "notes", "check", "delta")
_DELTA_KEYS = ("nodes", "params", "macs")


# ------------------------------------------------------------------------------------------------
# Building the report
# ------------------------------------------------------------------------------------------------
def _weight_bytes(model: Model) -> int:
    total = 0
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is not None:
            total += int(tensor.nbytes)
    return total


def model_summary(model: Model, cost_model: Any = None) -> dict[str, Any]:
    """Counts and per-layer work of ``model`` (``counts`` plus ``"layers"`` in the schema above).

    Work per node comes from :func:`targets.cost_model.model_work`; with ``cost_model`` (a
    ``RooflineCostModel``) each layer also gets ``estimated_ms`` and ``bound``.
    """
    works = model_work(model)
    costs = cost_model.estimate_nodes(model) if cost_model is not None else None
    op_counts: dict[str, int] = {}
    layers = []
    for i, work in enumerate(works):
        op_counts[work.op_type] = op_counts.get(work.op_type, 0) + 1
        layer = work.to_json()
        del layer["launches_kernel"]
        layer["estimated_ms"] = costs[i].seconds * 1e3 if costs is not None else None
        layer["bound"] = costs[i].bound if costs is not None else None
        layers.append(layer)
    return {
        "nodes": len(works),
        "params": count_parameters(model),
        "macs": sum(w.macs for w in works),
        "weight_bytes": _weight_bytes(model),
        "op_counts": dict(sorted(op_counts.items())),
        "unknown_cost_nodes": [w.name for w in works if not w.known],
        "estimated_ms": sum(c.seconds for c in costs) * 1e3 if costs is not None else None,
        "estimate_source": SOURCE_ESTIMATE if costs is not None else None,
        "layers": layers,
    }


def pass_entry(
    record: PassRecord | Mapping[str, Any], before: Mapping[str, Any], after: Mapping[str, Any]
) -> dict[str, Any]:
    """A pass-record dict for :func:`build_report` from a ``PassRecord`` and the model summaries
    (:func:`model_summary`) before and after the pass; ``delta`` = after - before."""
    data = dataclasses.asdict(record) if isinstance(record, PassRecord) else dict(record)
    data["delta"] = {key: int(after[key]) - int(before[key]) for key in _DELTA_KEYS}
    return data


def _counts(summary: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k != "layers"}


def build_summary(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    *,
    file_bytes_before: int | None = None,
    file_bytes_after: int | None = None,
    accuracy: Mapping[str, Any] | None = None,
    verification: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``summary`` section from the model summaries of the input and the optimized model."""
    estimated = None
    if before.get("estimated_ms") is not None and after.get("estimated_ms") is not None:
        estimated = {"before": before["estimated_ms"], "after": after["estimated_ms"], "source": SOURCE_ESTIMATE}
    return {
        "before": _counts(before),
        "after": _counts(after),
        "file_bytes": {"before": file_bytes_before, "after": file_bytes_after},
        "estimated_latency_ms": estimated,
        "accuracy": dict(accuracy) if accuracy is not None else None,
        "verification": dict(verification) if verification is not None else None,
    }


def environment_info() -> dict[str, str]:
    """Versions of Python, the platform and the packages edgekiln uses (no imports of them)."""
    info = {"python": platform.python_version(), "platform": f"{sys.platform}-{platform.machine()}"}
    for dist in ("edgekiln", "numpy", "onnx", "onnx-ir", "onnxscript", "onnxruntime", "apache-tvm",
                 "apache-tvm-ffi"):
        try:
            info[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            info[dist] = "not installed"
    return info


def _plain(obj: Any) -> Any:
    """Plain JSON values: numpy -> python, tuples -> lists, paths/enums -> str, NaN/inf -> None."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        return [_plain(v) for v in items]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, enum.Enum):
        return _plain(obj.value)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _plain(dataclasses.asdict(obj))
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def _layer_list(layers: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> list[Any] | None:
    if layers is None:
        return None
    if isinstance(layers, Mapping):
        return list(layers.get("layers") or [])
    return list(layers)


def build_report(
    *,
    model_path: str | os.PathLike,
    model_sha256: str,
    target_json: Mapping[str, Any],
    pipeline_spec: str,
    pass_records: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    environment: Mapping[str, Any],
    status: str,
    lowering: Mapping[str, Any] | None,
    timing: Mapping[str, Any],
    layers_before: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    layers_after: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The report dict (schema in the module docstring), with plain JSON values only.

    Args:
        pass_records: dicts with ``name, spec, modified, stats, notes, check, delta`` and optionally
            ``seconds`` (:func:`pass_entry` makes them); ``seconds`` is moved to ``run.passes``.
        summary: the ``summary`` section (:func:`build_summary`); a ``"layers"`` list inside its
            ``before``/``after`` is dropped (layers go to the ``layers`` section).
        timing: the wall-clock numbers; becomes the ``run`` block.
        layers_before, layers_after: a :func:`model_summary` dict (its ``"layers"`` is used) or a
            list of layer dicts, for the ``layers`` section.

    Raises:
        ValueError: a pass record lacks a key, or both the records and ``timing`` give pass times.
    """
    passes, pass_times = [], []
    for index, record in enumerate(pass_records):
        missing = [k for k in _PASS_KEYS if k not in record]
        missing += [f"delta.{k}" for k in _DELTA_KEYS if "delta" in record and k not in record["delta"]]
        if missing:
            raise ValueError(f"pass record {index} ({record.get('name', '?')}) lacks {', '.join(missing)}")
        entry = {k: record[k] for k in _PASS_KEYS}
        entry["delta"] = {k: record["delta"][k] for k in _DELTA_KEYS}
        entry["index"] = index
        passes.append(entry)
        if "seconds" in record:
            pass_times.append({"index": index, "name": record["name"], "seconds": record["seconds"]})
    run = dict(timing)
    if pass_times:
        if "passes" in run:
            raise ValueError("pass times given twice: in the pass records and in timing['passes']")
        run["passes"] = pass_times
    summary = dict(summary)
    for side in ("before", "after"):
        if isinstance(summary.get(side), Mapping):
            summary[side] = _counts(summary[side])
    report = {
        "schema_version": SCHEMA_VERSION,
        "status": status,
        "inputs": {
            "model_path": os.fspath(model_path),
            "model_name": Path(model_path).name,
            "model_sha256": model_sha256,
        },
        "environment": dict(environment),
        "target": dict(target_json),
        "pipeline": {"spec": pipeline_spec, "passes": [p["name"] for p in passes]},
        "passes": passes,
        "summary": summary,
        "layers": {"before": _layer_list(layers_before), "after": _layer_list(layers_after)},
        "lowering": dict(lowering) if lowering is not None else None,
        "run": run,
    }
    return _plain(report)


def write_json(report: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write ``report`` with sorted keys, 2-space indent and a final newline (strict JSON)."""
    text = json.dumps(_plain(report), indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False)
    Path(path).write_text(text + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------------
# Formatting helpers
# ------------------------------------------------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _si(value: float | None, unit: str = "") -> str:
    """1234567 -> '1.23 M' (decimal prefixes)."""
    if value is None:
        return "—"
    value = float(value)
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}".rstrip()
    return f"{value:.4g} {unit}".rstrip()


def _bytes(value: float | None) -> str:
    if value is None:
        return "—"
    value = float(value)
    for scale, unit in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f} B"


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    value = float(value)
    if value < 1:
        return f"{value * 1e3:.3g} µs"
    if value >= 1e3:
        return f"{value / 1e3:.4g} s"
    return f"{value:.4g} ms"


def _signed(value: int | float | None, fmt: Callable[[float], str] = _si) -> str:
    if value is None:
        return '<span class="muted">—</span>'
    if value == 0:
        return '<span class="muted">0</span>'
    css = "down" if value < 0 else "up"
    sign = "−" if value < 0 else "+"
    return f'<span class="{css}">{sign}{_e(fmt(abs(value)))}</span>'


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def _status_class(status: str) -> str:
    if status == "ok":
        return "ok"
    return "fail" if "fail" in status or "error" in status else "warn"


# ------------------------------------------------------------------------------------------------
# SVG plots (hand drawn: no plotting library, nothing downloaded)
# ------------------------------------------------------------------------------------------------
def _svg_hbar(title: str, rows: Sequence[tuple[str, float]], fmt: Callable[[float], str], color: str) -> str:
    """A horizontal bar chart as inline SVG: one row per (label, value), bars scaled to the max."""
    if not rows:
        return f'<p class="muted">{_e(title)}: nothing to plot.</p>'
    label_w, bar_w, value_w, row_h, top = 170, 270, 70, 22, 30
    width = label_w + bar_w + value_w
    height = top + row_h * len(rows) + 8
    peak = max(v for _, v in rows) or 1.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{_e(title)}">',
        f'<text x="0" y="18" class="chart-title">{_e(title)}</text>',
    ]
    for i, (label, value) in enumerate(rows):
        y = top + i * row_h
        length = max(1.0, bar_w * (value / peak)) if value > 0 else 0.0
        short = label if len(label) <= 28 else label[:13] + "…" + label[-13:]
        parts.append(
            f'<g><title>{_e(label)}: {_e(fmt(value))}</title>'
            f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end" class="chart-label">{_e(short)}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{length:.1f}" height="{row_h - 6}" rx="2" fill="{color}"/>'
            f'<text x="{label_w + length + 6:.1f}" y="{y + 15}" class="chart-value">{_e(fmt(value))}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


# ------------------------------------------------------------------------------------------------
# HTML sections
# ------------------------------------------------------------------------------------------------
_CSS = """
:root { --fg:#1f2430; --muted:#6b7280; --line:#e5e7eb; --bg:#f7f8fa; --card:#fff;
        --ok:#15803d; --okbg:#dcfce7; --fail:#b91c1c; --failbg:#fee2e2; --warn:#a16207; --warnbg:#fef3c7; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
       font:14px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width:1180px; margin:0 auto; padding:24px; }
header { display:flex; flex-wrap:wrap; align-items:baseline; gap:12px 24px; margin-bottom:18px; }
h1 { font-size:22px; margin:0; } h2 { font-size:17px; margin:28px 0 10px; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size:12.5px; }
.muted { color:var(--muted); }
.badge { display:inline-block; padding:2px 10px; border-radius:999px; font-weight:600; font-size:13px; }
.badge.ok { background:var(--okbg); color:var(--ok); } .badge.fail { background:var(--failbg); color:var(--fail); }
.badge.warn { background:var(--warnbg); color:var(--warn); }
.cards { display:grid; grid-template-columns:repeat(auto-fill, minmax(210px, 1fr)); gap:12px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:12px 14px; }
.card .k { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.card .v { font-size:19px; font-weight:600; margin:4px 0 2px; }
.card .s { color:var(--muted); font-size:12px; }
.tag { display:inline-block; font-size:11px; padding:0 6px; border-radius:4px; background:#eef2ff; color:#3730a3; }
.tag.measured { background:#ecfeff; color:#0e7490; }
table { width:100%; border-collapse:collapse; background:var(--card); border:1px solid var(--line); border-radius:8px; }
th, td { text-align:left; padding:6px 10px; border-bottom:1px solid var(--line); vertical-align:top; }
th { background:#f3f4f6; font-weight:600; font-size:12.5px; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
tr:last-child td { border-bottom:none; }
td.pass { color:var(--ok); background:var(--okbg); font-weight:600; }
td.fail { color:var(--fail); background:var(--failbg); font-weight:600; }
td.lossy { color:var(--warn); background:var(--warnbg); }
.down { color:var(--ok); } .up { color:var(--warn); }
table.passes td:nth-child(2) code { white-space:nowrap; }
ul.notes { margin:0; padding-left:16px; } ul.notes li { margin:0; }
.charts { display:flex; flex-wrap:wrap; gap:16px; }
.chart-box { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:12px; overflow-x:auto; }
svg.chart .chart-title { font-weight:600; font-size:13px; fill:var(--fg); }
svg.chart .chart-label { font-size:11.5px; fill:var(--fg); }
svg.chart .chart-value { font-size:11px; fill:var(--muted); }
footer { margin-top:28px; color:var(--muted); font-size:12px; }
"""


def _card(key: str, value: str, sub: str = "", tag: str = "") -> str:
    return (
        f'<div class="card"><div class="k">{_e(key)} {tag}</div>'
        f'<div class="v">{value}</div><div class="s">{sub}</div></div>'
    )


def _before_after(before: Any, after: Any, fmt: Callable[[Any], str]) -> str:
    if before is None and after is None:
        return "—"
    if before is None or after is None:
        return _e(fmt(after if after is not None else before))
    return f"{_e(fmt(before))} → {_e(fmt(after))}"


def _measurements(run: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The ``run`` entries that are latency measurements (dicts with ``median_ms``)."""
    return {k: v for k, v in sorted(run.items()) if isinstance(v, Mapping) and "median_ms" in v}


def _measured_card(report: Mapping[str, Any]) -> str:
    tag = '<span class="tag measured">measured</span>'
    found = _measurements(report.get("run") or {})
    if not found:
        return _card("Latency", "—", "not measured", tag)
    name = next((n for n in ("artifact_rpc", "artifact") if n in found), next(iter(found)))
    main_run = found[name]
    runs = f", median of {_e(main_run['runs'])} runs" if main_run.get("runs") is not None else ""
    where = f" {_e(main_run['where'])}" if main_run.get("where") else ""
    sub = f"source: {SOURCE_MEASURED}{where} ({_e(name)}{runs})"
    others = [f"{_e(k)}: {_e(_ms(v.get('median_ms')))}" for k, v in found.items() if k != name]
    if others:
        sub += " · " + " · ".join(others)
    return _card("Latency", _e(_ms(main_run.get("median_ms"))), sub, tag)


def _accuracy_card(accuracy: Mapping[str, Any]) -> str:
    metric = str(accuracy.get("metric", "top1"))
    runs = {k: v for k, v in sorted(accuracy.items()) if isinstance(v, Mapping)}

    def pick(*prefixes: str) -> Any:
        for prefix in prefixes:
            for name, values in runs.items():
                if name.startswith(prefix) and values.get(metric) is not None:
                    return values[metric]
        return None

    value = _before_after(pick("original"), pick("artifact", "optimized"), lambda v: f"{float(v):.4g}")
    parts = [
        f"{_e(name)} {_e(f'{float(v[metric]):.4g}' if v.get(metric) is not None else '—')}"
        for name, v in runs.items()
    ]
    samples = next((v.get("samples") for v in runs.values() if v.get("samples") is not None), None)
    sub = f"{_e(metric)}" + (f" on {_e(samples)} samples" if samples is not None else "")
    if parts:
        sub += "<br>" + " · ".join(parts)
    return _card("Accuracy", value, sub)


def _verification_card(verification: Mapping[str, Any]) -> str:
    check = verification.get("artifact_vs_onnxruntime") if "artifact_vs_onnxruntime" in verification else verification
    if not check:
        return _card("Max abs error", "—", "artifact not checked against ONNX Runtime")
    value = _e(f"{check['max_abs']:.3g}") if check.get("max_abs") is not None else "—"
    state = '<span class="down">passed</span>' if check.get("passed") else '<span class="badge fail">failed</span>'
    sub = f"artifact vs ONNX Runtime · policy {_e(check.get('policy', '?'))} · {state}"
    if check.get("where"):
        sub += f" · on {_e(check['where'])}"
    if check.get("reason"):
        sub += f" · {_e(check['reason'])}"
    if verification.get("feeds") is not None:
        sub += f"<br>feeds: {_e(verification['feeds'])}"
        if verification.get("num_feeds") is not None:
            sub += f" × {_e(verification['num_feeds'])}"
    return _card("Max abs error", value, sub)


def _summary_cards(report: Mapping[str, Any]) -> str:
    summary = report.get("summary") or {}
    before, after = summary.get("before") or {}, summary.get("after") or {}
    cards = []
    files = summary.get("file_bytes") or {}
    file_sub = (
        f"file {_before_after(files.get('before'), files.get('after'), _bytes)}"
        if files.get("before") is not None or files.get("after") is not None else ""
    )
    weights = _before_after(before.get("weight_bytes"), after.get("weight_bytes"), _bytes)
    cards.append(_card("Weights size", weights, file_sub))
    cards.append(_card("Parameters", _before_after(before.get("params"), after.get("params"), _si)))
    cards.append(_card("MACs", _before_after(before.get("macs"), after.get("macs"), _si),
                       f"{_e(after.get('nodes', '—'))} nodes after"))
    est = summary.get("estimated_latency_ms")
    est_tag = '<span class="tag">estimate (roofline)</span>'
    if est:
        cards.append(_card("Latency", _before_after(est.get("before"), est.get("after"), _ms),
                           f"source: {_e(est.get('source', SOURCE_ESTIMATE))}", est_tag))
    else:
        cards.append(_card("Latency", "—", "no cost model", est_tag))
    cards.append(_measured_card(report))
    if summary.get("accuracy"):
        cards.append(_accuracy_card(summary["accuracy"]))
    if summary.get("verification"):
        cards.append(_verification_card(summary["verification"]))
    return f'<div class="cards">{"".join(cards)}</div>'


def _check_cell(check: Mapping[str, Any] | None) -> str:
    if not check:
        return '<td class="muted">not checked</td>'
    policy = check.get("policy", "?")
    if check.get("skipped"):
        return f'<td class="muted">skipped · {_e(check["skipped"])}</td>'
    if "passed" not in check:
        return f'<td class="muted">{_e(policy)} · no result</td>'
    detail = f"max|Δ| {check['max_abs']:.3g}" if check.get("max_abs") is not None else _e(check.get("reason", ""))
    if policy == "lossy":
        return f'<td class="lossy" title="lossy: reported, not an equivalence">{_e(policy)} · {detail}</td>'
    css, word = ("pass", "pass") if check.get("passed") else ("fail", "FAIL")
    return f'<td class="{css}">{word} · {_e(policy)} · {detail}</td>'


def _stat_text(value: Any) -> str:
    """A stat for the pass table: scalars as they are; a list of rows (the per-layer tables in their
    own sections) as its length."""
    if isinstance(value, list) and value and isinstance(value[0], Mapping):
        return f"[{len(value)} rows]"
    return str(value)


def _pass_table(report: Mapping[str, Any]) -> str:
    passes = report.get("passes") or []
    if not passes:
        return '<p class="muted">No passes ran.</p>'
    times = {t.get("index"): t.get("seconds") for t in _get(report, "run", "passes") or []}
    keyed = _get(report, "run", "passes_s") or {}
    rows = []
    for p in passes:
        seconds = times.get(p.get("index"), keyed.get(f"{p.get('index', 0):02d}-{p.get('name')}"))
        delta = p.get("delta") or {}
        notes = p.get("notes") or []
        notes_html = "<ul class='notes'>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>" if notes else ""
        stats = p.get("stats") or {}
        stats_html = (
            '<div class="muted mono">' + _e(", ".join(f"{k}={_stat_text(v)}" for k, v in sorted(stats.items()))) + "</div>"
            if stats else ""
        )
        rows.append(
            f'<tr class="pass-row"><td class="num">{_e(p.get("index"))}</td>'
            f'<td><code>{_e(p.get("spec") or p.get("name"))}</code></td>'
            f'<td class="num">{_e(_ms(seconds * 1e3)) if seconds is not None else "—"}</td>'
            f'<td>{"yes" if p.get("modified") else "<span class=muted>no</span>"}</td>'
            f'<td class="num">{_signed(delta.get("nodes"), lambda v: f"{v:.0f}")}</td>'
            f'<td class="num">{_signed(delta.get("params"))}</td>'
            f'<td class="num">{_signed(delta.get("macs"))}</td>'
            f"{_check_cell(p.get('check'))}"
            f"<td>{notes_html}{stats_html}</td></tr>"
        )
    head = (
        '<tr><th class="num">#</th><th>pass</th><th class="num">time</th><th>modified</th>'
        '<th class="num">Δ nodes</th><th class="num">Δ params</th><th class="num">Δ MACs</th>'
        "<th>numeric check</th><th>notes</th></tr>"
    )
    return f'<table class="passes"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _shape_text(shapes: Any) -> str:
    if not shapes:
        return "—"
    return ", ".join("?" if s is None else "×".join(str(d) for d in s) or "scalar" for s in shapes)


def _layer_table(layers: Sequence[Mapping[str, Any]], limit: int = 25) -> str:
    if not layers:
        return '<p class="muted">No layers.</p>'
    has_estimate = any(layer.get("estimated_ms") is not None for layer in layers)
    key = "estimated_ms" if has_estimate else "macs"
    top = sorted(layers, key=lambda layer: -(layer.get(key) or 0))[:limit]
    rows = []
    for layer in top:
        reason = layer.get("reason") or "not modelled"
        note = "" if layer.get("known", True) else f'<span class="up">{_e(reason)}</span>'
        rows.append(
            f'<tr><td class="mono">{_e(layer.get("name"))}</td><td>{_e(layer.get("op_type"))}</td>'
            f'<td class="mono">{_e(_shape_text(layer.get("output_shapes")))}</td>'
            f'<td class="num">{_e(_si(layer.get("macs")))}</td><td class="num">{_e(_si(layer.get("params")))}</td>'
            f'<td class="num">{_e(_bytes(layer.get("bytes")))}</td><td>{_e(layer.get("precision", ""))}</td>'
            f'<td class="num">{_e(_ms(layer.get("estimated_ms")))}</td><td>{_e(layer.get("bound") or "—")}</td>'
            f"<td>{note}</td></tr>"
        )
    caption = (
        f"Top {len(top)} of {len(layers)} layers by "
        + ("estimated time (roofline estimate)" if has_estimate else "MACs (no cost model given)")
    )
    head = (
        '<tr><th>layer</th><th>op</th><th>output shape</th><th class="num">MACs</th><th class="num">params</th>'
        '<th class="num">bytes</th><th>precision</th><th class="num">est. time</th><th>bound</th><th>note</th></tr>'
    )
    return (
        f'<p class="muted">{_e(caption)}</p>'
        f'<table class="layers"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'
    )


def _charts(layers: Sequence[Mapping[str, Any]]) -> str:
    charts = []
    per_op: dict[str, float] = {}
    for layer in layers:
        if layer.get("estimated_ms"):
            per_op[layer["op_type"]] = per_op.get(layer["op_type"], 0.0) + float(layer["estimated_ms"])
    if per_op:
        rows = sorted(per_op.items(), key=lambda kv: (-kv[1], kv[0]))[:15]
        charts.append(_svg_hbar("Estimated time per op type (roofline estimate)", rows, _ms, "#6366f1"))
    mac_rows = sorted(
        ((str(layer.get("name")), float(layer.get("macs") or 0)) for layer in layers if layer.get("macs")),
        key=lambda kv: -kv[1],
    )[:20]
    charts.append(_svg_hbar("MACs per layer (top 20)", mac_rows, _si, "#0ea5e9"))
    return '<div class="charts">' + "".join(f'<div class="chart-box">{c}</div>' for c in charts) + "</div>"


def _kv_table(data: Mapping[str, Any] | None, cls: str = "kv") -> str:
    if not data:
        return '<p class="muted">—</p>'
    rows = []
    for key in sorted(data):
        value = data[key]
        text = json.dumps(_plain(value), sort_keys=True) if isinstance(value, (Mapping, list, tuple)) else value
        if isinstance(value, float):
            text = f"{value:.4g}"
        rows.append(f'<tr><th>{_e(key)}</th><td class="mono">{_e(text)}</td></tr>')
    return f'<table class="{cls}"><tbody>{"".join(rows)}</tbody></table>'


def _run_rows(run: Mapping[str, Any]) -> dict[str, Any]:
    """``run`` entries for display: ``*_s``/``*seconds`` as durations, measurements as medians.

    Pass times are left out (the pass table shows them).
    """
    rows: dict[str, Any] = {}
    for key, value in run.items():
        if key in ("passes", "passes_s"):
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key.endswith(("_s", "seconds")):
            rows[key] = _ms(value * 1e3)
        elif isinstance(value, Mapping) and "median_ms" in value:
            runs = f", {value['runs']} runs" if value.get("runs") is not None else ""
            where = f" {value['where']}" if value.get("where") else ""
            rows[f"{key} ({SOURCE_MEASURED}{where})"] = (
                f"median {_ms(value['median_ms'])}, min {_ms(value.get('min_ms'))}{runs}"
            )
        elif key == "stages" and isinstance(value, Mapping):
            for stage, seconds in value.items():
                rows[f"stage: {stage}"] = _ms(seconds * 1e3) if isinstance(seconds, (int, float)) else seconds
        else:
            rows[key] = value
    return rows


def _sqnr_table(quantization: Mapping[str, Any]) -> str:
    """Per-layer SQNR of the quantized model (worst first) and how its outputs agree with fp32."""
    agreement = quantization.get("output_agreement") or {}
    head = (
        f'<p class="muted">Output vs fp32 on the verification inputs: top-1 agreement '
        f"{_e(agreement.get('top1_agreement'))}, cosine {_e(agreement.get('cosine'))}, max abs "
        f"{_e(agreement.get('max_abs'))}. SQNR = 10 log10(sum x^2 / sum (x - dequant(q))^2); "
        "the lowest rows are the layers that hurt most.</p>"
    )
    def sqnr(value: float | None) -> str:
        return "exact" if value is None else f"{value:.1f}"

    rows = "".join(
        f"<tr><td>{_e(r.get('node'))}</td><td>{_e(r.get('op_type'))}</td><td>{_e(', '.join(r.get('fused') or []))}</td>"
        f'<td class="num">{_e(sqnr(r.get("sqnr_db")))}</td></tr>'
        for r in quantization.get("layers") or []
    )
    return head + f"<table><tr><th>layer</th><th>op</th><th>fused</th><th>SQNR dB</th></tr>{rows}</table>"


def render_html(report: Mapping[str, Any]) -> str:
    """One self-contained HTML page for ``report`` (no external CSS, JS, fonts or images).

    All text from the report is escaped with ``html.escape``.
    """
    inputs = report.get("inputs") or {}
    target = report.get("target") or {}
    status = str(report.get("status", "unknown"))
    layers = _get(report, "layers", "after") or _get(report, "layers", "before") or []
    model_name = inputs.get("model_name") or inputs.get("model_path") or "model"
    sha = str(inputs.get("model_sha256", ""))
    body = [
        "<header>",
        f"<h1>{_e(model_name)} → {_e(target.get('name', '?'))}</h1>",
        f'<span class="badge {_status_class(status)}">{_e(status)}</span>',
        f'<span class="muted">{_e(target.get("description", ""))}</span>',
        "</header>",
        f'<p class="muted">input <code>{_e(inputs.get("model_path", ""))}</code> · sha256 '
        f'<code title="{_e(sha)}">{_e(sha[:16])}</code> · report schema {_e(report.get("schema_version"))}</p>',
        f'<p>pipeline <code>{_e(_get(report, "pipeline", "spec") or "(empty)")}</code></p>',
        "<h2>Summary</h2>",
        _summary_cards(report),
        "<h2>Passes</h2>",
        _pass_table(report),
        "<h2>Where the time goes</h2>",
        _charts(layers),
        "<h2>Layers</h2>",
        _layer_table(layers),
    ]
    quantization = _get(report, "summary", "quantization")
    if quantization:
        body += ["<h2>Quantization error per layer</h2>", _sqnr_table(quantization)]
    body.append(mixed_precision_html(report))  # compiler/report_mixed.py; '' without mixed precision
    body.append(compression_html(report))  # compiler/report_compression.py; '' without prune / low-rank
    if report.get("lowering") is not None:
        body += ["<h2>Lowering</h2>", _kv_table(report["lowering"])]
    body += [
        "<h2>Run timings</h2>",
        '<p class="muted">Wall-clock numbers of this run (the only part of the report that changes between '
        "identical runs).</p>",
        _kv_table(_run_rows(report.get("run") or {})),
        "<h2>Environment</h2>",
        _kv_table(report.get("environment")),
        "<footer>Latency marked <em>estimate (roofline)</em> is max(ops / peak, bytes / bandwidth) + kernel "
        "overhead per node from the target's spec; latency marked <em>measured</em> was timed by the named runner. "
        "Generated by edgekiln.</footer>",
    ]
    title = f"edgekiln report: {model_name} → {target.get('name', '?')}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )


def write_html(report: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write :func:`render_html` of ``report`` to ``path`` (UTF-8)."""
    Path(path).write_text(render_html(report), encoding="utf-8")
