"""Rank selection for the low-rank passes: fixed, by energy, or ``auto`` by the target's cost model.

Modes (from the pass options; the first that applies wins):

- ``rank > 0`` (fixed): that rank (capped at full rank) for every layer, applied unconditionally:
  the user asked for it. The note still gives the estimate and the error.
- ``energy > 0``: the smallest ``r`` whose singular values keep ``energy`` of ``sum s_i^2`` (per
  channel mode for Tucker-2). Applied only where the factors hold fewer parameters than the dense
  weight: above the break-even ``r >= mn / (m + n)`` a factorization only adds work.
- ``auto`` (``rank == 0`` and ``energy == 0``): the smallest rank whose relative output error on the
  calibration data is within ``max_error``; applied only where ``ctx.cost_model`` estimates the
  factorized layer faster than the dense one on this target. The parameter break-even is necessary
  but not sufficient: each extra node pays a kernel launch and re-reads an activation, so a rank
  just below break-even is usually slower. Without a cost model ``auto`` leaves layers dense.

Ranks from ``energy`` and ``auto`` are rounded to the target's ``channel_multiple`` (SIMD width):
to the nearest multiple when that keeps the error within ``max_error``, else up to the next one;
where rounding up would reach full rank the exact rank is kept (a full-rank factorization is only
extra work). A fixed rank is used as given.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterable

import numpy as np

from compiler.errors import OptionError
from passes.lowrank.decompose import MatrixSpectrum, Tucker2, energy_rank

__all__ = ["Candidate", "Decision", "Mode", "RankOptions", "choose", "round_rank", "svd_rank", "tucker_ranks"]


class Mode(enum.Enum):
    FIXED = "fixed"
    ENERGY = "energy"
    AUTO = "auto"


@dataclasses.dataclass(frozen=True)
class RankOptions:
    """The rank-related options shared by both passes (see the module docstring)."""

    rank: int = 0
    energy: float = 0.0
    max_error: float = 0.05
    multiple: int = 1

    def __post_init__(self) -> None:
        if self.rank < 0:
            raise OptionError(f"rank must be >= 0 (0 = choose automatically), got {self.rank}")
        if not 0.0 <= self.energy <= 1.0:
            raise OptionError(f"energy must be a fraction in [0, 1] (0 = not used), got {self.energy}")
        if not self.max_error > 0.0:
            raise OptionError(f"max_error must be > 0, got {self.max_error}")

    @property
    def mode(self) -> Mode:
        if self.rank > 0:
            return Mode.FIXED
        return Mode.ENERGY if self.energy > 0 else Mode.AUTO


def round_rank(rank: int, multiple: int, full: int, feasible: Callable[[int], bool]) -> int:
    """``rank`` rounded to a multiple of ``multiple``: the nearest one if ``feasible``, else the next up.

    The result is in ``[1, full]``; ``full`` itself is allowed even when it is not a multiple.
    """
    if multiple <= 1 or rank >= full:
        return min(max(rank, 1), full)
    down = (rank // multiple) * multiple
    up = min(down + multiple, full) if down != rank else rank
    nearest = down if down >= 1 and rank - down <= up - rank else up
    if nearest < rank and not feasible(nearest):
        nearest = up
    # Rounding up to full rank would make the factorization pointless: keep the exact rank then.
    return rank if nearest >= full else nearest


def svd_rank(spectrum: MatrixSpectrum, options: RankOptions) -> int | None:
    """The rank the options ask for on one matrix, or None when no rank below full meets the budget."""
    full = spectrum.full_rank
    mode = options.mode
    if mode is Mode.FIXED:
        return min(options.rank, full)
    feasible = lambda r: bool(spectrum.errors[r] <= options.max_error)  # noqa: E731
    if mode is Mode.ENERGY:
        wanted = spectrum.energy_rank(options.energy)
    else:
        ok = np.nonzero(spectrum.errors[1:] <= options.max_error)[0]
        if ok.size == 0 or ok[0] + 1 >= full:
            return None
        wanted = int(ok[0]) + 1
    return round_rank(wanted, options.multiple, full, feasible)


def _grid(full: int, multiple: int) -> list[int]:
    step = max(multiple, 1)
    return sorted({*range(step, full, step), full})


def tucker_ranks(
    tucker: Tucker2, options: RankOptions, seconds: Callable[[int, int], float]
) -> tuple[int, int] | None:
    """``(r1, r2)`` for a Tucker-2 factorization, or None when no pair below full meets the budget.

    ``auto`` takes, among the pairs on the channel-multiple grid whose output error is within
    ``max_error``, the one with the lowest estimated cost ``seconds(r1, r2)``.
    """
    m, c = tucker.u_out.shape[0], tucker.u_in.shape[0]
    errors = tucker.errors
    mode = options.mode
    if mode is Mode.FIXED:
        return min(options.rank, c), min(options.rank, m)
    if mode is Mode.ENERGY:
        e1 = energy_rank(tucker.sigma_in, options.energy)
        e2 = energy_rank(tucker.sigma_out, options.energy)
        r1 = round_rank(e1, options.multiple, c, lambda r: bool(errors[e2, r] <= options.max_error))
        r2 = round_rank(e2, options.multiple, m, lambda r: bool(errors[r, r1] <= options.max_error))
        return r1, r2
    pairs = [
        (r1, r2)
        for r1 in _grid(c, options.multiple)
        for r2 in _grid(m, options.multiple)
        if (r1, r2) != (c, m) and errors[r2, r1] <= options.max_error
    ]
    if not pairs:
        return None
    return min(pairs, key=lambda p: (seconds(*p), p[0] * p[1]))


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One way to factorize a layer: its form, ranks, estimated cost, output error and parameters."""

    form: str  # "svd" (Gemm/MatMul), "channel-svd" or "tucker2" (Conv)
    ranks: tuple[int, ...]
    cost: float
    error: float
    params: int

    @property
    def label(self) -> str:
        if self.form == "tucker2":
            return f"Tucker-2 ranks ({self.ranks[0]}, {self.ranks[1]})"
        return f"{'channel-SVD ' if self.form == 'channel-svd' else ''}rank {self.ranks[0]}"


@dataclasses.dataclass(frozen=True)
class Decision:
    """The chosen candidate (None: the layer stays dense) and why."""

    chosen: Candidate | None
    reason: str


def choose(
    options: RankOptions,
    candidates: Iterable[Candidate],
    dense_cost: float,
    dense_params: int,
    estimates_time: bool,
    describe: Callable[[float], str],
) -> Decision:
    """Pick the cheapest candidate and decide whether it replaces the dense layer (see module doc)."""
    pool = sorted(candidates, key=lambda c: (c.cost, c.params))
    if not pool:
        return Decision(None, f"no rank below full keeps the relative output error within {options.max_error:.3g}")
    best = pool[0]
    mode = options.mode
    if mode is Mode.FIXED:
        return Decision(best, "")
    if mode is Mode.ENERGY:
        if best.params >= dense_params:
            return Decision(
                None,
                f"{best.label} keeps {options.energy:.3g} of the energy but needs {best.params} parameters "
                f">= dense {dense_params} (break-even)",
            )
        return Decision(best, "")
    if not estimates_time:
        return Decision(None, "auto rank needs a cost model (ctx.cost_model is None)")
    if not best.cost < dense_cost:
        return Decision(
            None,
            f"factorized estimate {describe(best.cost)} ({best.label}) >= dense {describe(dense_cost)}",
        )
    return Decision(best, "")
