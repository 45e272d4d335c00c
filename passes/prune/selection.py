"""How many units each group keeps (uniform, global threshold, latency budget) and which ones.

Kept counts are always *rounded*: to a multiple of the target's channel multiple (in units: a
grouped-Conv unit of width ``w`` channels counts ``w``), never below one multiple, never below
``min_channels``, never above the group size. Within a group the units with the highest importance
are kept (ties: the lower index is kept, so the choice is deterministic).

Modes (``ratio`` = r):

- ``uniform``: every eligible group keeps ``round(K * (1 - r))`` units.
- ``global``: one threshold ``t`` over the (mean-1 normalized) scores of all eligible units, chosen
  so that the channels scoring below ``t`` are the fraction r of all eligible channels; each group
  keeps its units scoring ``>= t`` (then rounded). Layers with many weak channels lose more.
- ``latency``: greedy on the cost model's per-group time tables (``latency.py``): repeatedly take
  the one-multiple step, over all groups, with the largest estimated time saved per unit of
  importance removed, ``(t_g(k) - t_g(k')) / sum(scores of the k - k' weakest kept units)``, until
  the estimated time saved reaches r of the model's estimated time or no step saves time. No
  group loses more than :data:`LATENCY_MAX_CUT` of its channels: when the target is out of reach
  (the time is per-kernel overhead or sits in unprunable layers) the greedy would otherwise strip
  layers to one channel for ever smaller gains; the pass notes the shortfall instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from passes.prune.dependency import ChannelGroup

__all__ = ["MODES", "candidate_counts", "round_kept", "keep_best", "uniform_counts", "global_counts", "latency_counts"]

MODES = ("uniform", "global", "latency")

#: Largest fraction of a group's channels the latency greedy may remove.
LATENCY_MAX_CUT = 0.75


def _step_and_floor(group: ChannelGroup, multiple: int, min_channels: int) -> tuple[int, int]:
    """Units per channel multiple, and the smallest allowed kept count (a multiple of that step)."""
    width = group.unit_width
    step = max(1, multiple // width)
    floor = max(step, math.ceil(min_channels / width))
    floor = math.ceil(floor / step) * step
    return step, floor


def round_kept(group: ChannelGroup, units: float, multiple: int, min_channels: int) -> int:
    """``units`` rounded to the nearest multiple step, clamped to ``[floor, K]``."""
    step, floor = _step_and_floor(group, multiple, min_channels)
    k = int(math.floor(units / step + 0.5)) * step
    return min(max(k, floor), group.size)


def candidate_counts(group: ChannelGroup, multiple: int, min_channels: int, max_cut: float = 1.0) -> list[int]:
    """Every kept count the rounding allows, descending (starts with K, the unpruned group);
    ``max_cut`` < 1 also drops counts below ``round_kept(K * (1 - max_cut))``."""
    step, floor = _step_and_floor(group, multiple, min_channels)
    if max_cut < 1.0:
        floor = max(floor, round_kept(group, group.size * (1.0 - max_cut), multiple, min_channels))
    counts = {group.size} | {k for k in range(floor, group.size, step)}
    return sorted(counts, reverse=True)


def keep_best(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, sorted (stable: equal scores keep the lower index)."""
    order = np.argsort(-scores, kind="stable")
    return np.sort(order[:k])


def uniform_counts(groups: Sequence[ChannelGroup], ratio: float, multiple: int, min_channels: int) -> list[int]:
    return [round_kept(g, g.size * (1.0 - ratio), multiple, min_channels) for g in groups]


def global_counts(
    groups: Sequence[ChannelGroup], scores: Sequence[np.ndarray], ratio: float, multiple: int, min_channels: int
) -> list[int]:
    if not groups:
        return []
    pooled = np.concatenate(scores)
    widths = np.concatenate([np.full(g.size, g.unit_width, dtype=np.float64) for g in groups])
    order = np.argsort(pooled, kind="stable")
    cumulative = np.cumsum(widths[order]) / widths.sum()
    # The threshold: the score of the first unit whose removal would exceed the ratio of channels.
    cut = int(np.searchsorted(cumulative, ratio, side="right"))
    threshold = pooled[order[cut]] if cut < len(order) else np.inf
    return [round_kept(g, float(np.count_nonzero(s >= threshold)), multiple, min_channels) for g, s in zip(groups, scores)]


def latency_counts(
    groups: Sequence[ChannelGroup],
    scores: Sequence[np.ndarray],
    tables: Sequence[dict[int, float]],
    target_seconds: float,
) -> list[int]:
    """Greedy: the step with most estimated seconds saved per unit of importance, until the target.

    ``tables[i]`` maps every allowed kept count of group i (see :func:`candidate_counts`) to its
    estimated seconds; ``target_seconds`` is the time to save.
    """
    kept = [g.size for g in groups]
    # Removing the weakest units first: cost of keeping k units = sum of the K - k smallest scores.
    removed_cost = [np.concatenate([[0.0], np.cumsum(np.sort(s))]) for s in scores]
    counts = [sorted(t, reverse=True) for t in tables]
    saved = 0.0
    while saved < target_seconds:
        best: tuple[float, int, int, float] | None = None
        for i, group in enumerate(groups):
            lower = [k for k in counts[i] if k < kept[i]]
            if not lower:
                continue
            nxt = lower[0]
            gain = tables[i][kept[i]] - tables[i][nxt]
            if gain <= 0:
                continue
            lost = removed_cost[i][group.size - nxt] - removed_cost[i][group.size - kept[i]]
            efficiency = gain / max(lost, np.finfo(np.float64).tiny)
            if best is None or efficiency > best[0]:
                best = (efficiency, i, nxt, gain)
        if best is None:
            break
        _, i, nxt, gain = best
        kept[i] = nxt
        saved += gain
    return kept
