"""Measured per-layer time of a compression: the model before and after, timed kernel by kernel.

``compile --profile-layers`` lowers the model as it was before the first compression pass and as
it is after the last one (both fp32, with the same default schedules), times every TVM kernel with
the Relax VM instrument (:func:`targets.calibrate_cost.collect_samples`: per-kernel medians,
kernels paired with the ONNX nodes they run), and fills the ``measured_ms_before`` /
``measured_ms_after`` columns of the passes' :class:`compiler.layer_decisions.LayerDecision` rows.

Matching: a row's measured time is the sum, over the distinct kernels whose node group contains
one of the row's node labels, of that kernel's median. A kernel fused across two rows (a conv
writing one channel group and read by another) counts in both, so the rows are per-layer views and
do not add up to the model; the model totals are reported next to them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from typing import Any

from compiler.ir import Model

__all__ = ["COMPRESSION_PASSES", "LayerProfile", "attach_measured", "compression_rows", "profile_models", "profile_summary"]

#: Passes whose ``stats["layers"]`` rows get measured columns.
COMPRESSION_PASSES = ("prune-channels", "factorize-conv", "factorize-gemm")


@dataclasses.dataclass
class LayerProfile:
    """Per-kernel medians of one model: ``kernels[i] = (node labels, seconds)`` in execution order."""

    kernels: list[tuple[list[str], float]]
    model_ms: float
    kernel_count: int
    unpaired_kernels: int

    def measured_ms(self, labels: Iterable[str]) -> float | None:
        """Summed median ms of the kernels running any of ``labels`` (None: no kernel runs them)."""
        wanted = set(labels)
        hits = [seconds for nodes, seconds in self.kernels if wanted.intersection(nodes)]
        return sum(hits) * 1e3 if hits else None

    def to_json(self) -> dict[str, Any]:
        return {"model_ms": self.model_ms, "kernels": self.kernel_count, "unpaired_kernels": self.unpaired_kernels}


def profile_models(before: Model, after: Model, target, repeats: int = 10, rpc=None) -> tuple[LayerProfile, LayerProfile]:
    """Lower both models for ``target`` and time each kernel: here interleaved round by round (so
    load bursts hit both alike), or one after the other on the board behind ``rpc``."""
    from targets.calibrate_cost import collect_samples, collect_samples_interleaved

    if rpc is None:
        pairs = collect_samples_interleaved([before, after], target, repeats)
    else:
        pairs = [collect_samples(m, target, repeats, rpc=rpc) for m in (before, after)]
    profiles = [
        LayerProfile([(list(s.nodes), s.measured_s) for s in samples], float(info["measured_model_ms"]),
                     int(info["kernels"]), int(info["unpaired_kernels"]))
        for samples, info in pairs
    ]
    return profiles[0], profiles[1]


def attach_measured(
    pass_stats: Sequence[tuple[str, MutableMapping[str, Any]]], before: LayerProfile, after: LayerProfile
) -> int:
    """Fill the measured columns of every compression row in ``pass_stats`` (``(pass name, stats)``
    pairs, changed in place). Returns the number of rows that got both numbers."""
    filled = 0
    for _, row in _rows(pass_stats):
        row["measured_ms_before"] = before.measured_ms(row.get("nodes") or [])
        row["measured_ms_after"] = after.measured_ms(row.get("nodes_after") or [])
        filled += row["measured_ms_before"] is not None and row["measured_ms_after"] is not None
    return filled


def profile_summary(before: LayerProfile, after: LayerProfile, repeats: int, where: str, rows: int) -> dict[str, Any]:
    """The ``summary.compression_profile`` block of report.json."""
    return {
        "source": f"TVM Relax VM per-kernel instrument, median of {repeats} runs ({where}; both models "
        "interleaved when timed here), fp32 models before the first and after the last compression pass",
        "before": before.to_json(),
        "after": after.to_json(),
        "ratio": after.model_ms / before.model_ms if before.model_ms else None,
        "rows_measured": rows,
    }


def compression_rows(passes: Iterable[Mapping[str, Any]]) -> list[tuple[str, Mapping[str, Any]]]:
    """``(pass name, row)`` for every compression row of report.json's ``passes`` list."""
    return _rows((p.get("name", "?"), p.get("stats") or {}) for p in passes)


def _rows(pass_stats: Iterable[tuple[str, Mapping[str, Any]]]) -> list[tuple[str, Any]]:
    """``(pass name, row)`` for the ``stats["layers"]`` rows of the compression passes among
    ``(pass name, stats)`` pairs."""
    return [(name, row) for name, stats in pass_stats if name in COMPRESSION_PASSES for row in stats.get("layers") or []]
