"""Activation observers: turn the values a tensor took on calibration data into a clip range [lo, hi].

Three observers, all per tensor:

``minmax``      lo = min x, hi = max x. Exact and cheap; one outlier stretches the scale.
``percentile``  lo / hi = the (100 - p)-th / p-th percentile of the observed values (p = 99.99 by
                default), read from a 2048-bin histogram with linear interpolation inside a bin
                (error at most one bin width, (max - min) / 2048).
``mse``         the clip range minimising the expected squared quantization error of the observed
                histogram for a uint8 grid:
                    E(lo, hi) = sum_i n_i * err_i,   s = (hi - lo) / 255
                    err_i = s^2 / 12               if lo <= c_i <= hi   (uniform rounding noise)
                            (c_i - clip(c_i))^2     otherwise            (clipping error)
                where c_i, n_i are the bin centres and counts. lo and hi shrink independently over a
                grid of fractions of the observed min/max; the grid includes 1, so the result never
                has a larger error than min-max under this model. Heavy tails shrink the range.

Histogram observers need the data's extent before binning, so calibration runs in two sweeps
(``needs_extent``): a min-max sweep, then a histogram sweep over [min, max].
"""

from __future__ import annotations

import numpy as np

__all__ = ["HistogramObserver", "MinMaxObserver", "MseObserver", "Observer", "PercentileObserver", "make_observer", "OBSERVERS"]

HISTOGRAM_BINS = 2048
# Fractions of the observed extent tried by the MSE search (per side); 1.0 keeps the min-max end.
_MSE_FRACTIONS = np.concatenate([np.linspace(0.02, 1.0, 50)])


class Observer:
    """Base class: ``update`` with each batch of a tensor's values, then read ``range()``."""

    needs_extent = False

    def update(self, values: np.ndarray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def range(self) -> tuple[float, float]:  # pragma: no cover - abstract
        raise NotImplementedError


class MinMaxObserver(Observer):
    """Running minimum and maximum (NaNs ignored)."""

    def __init__(self) -> None:
        self.lo = np.inf
        self.hi = -np.inf

    def update(self, values: np.ndarray) -> None:
        values = np.asarray(values)
        if values.size == 0:
            return
        self.lo = min(self.lo, float(np.nanmin(values)))
        self.hi = max(self.hi, float(np.nanmax(values)))

    def range(self) -> tuple[float, float]:
        if self.lo > self.hi:
            raise ValueError("observer saw no values")
        return self.lo, self.hi


class HistogramObserver(Observer):
    """A fixed-extent histogram of the observed values; subclasses read a range from it."""

    needs_extent = True

    def __init__(self, lo: float, hi: float, bins: int = HISTOGRAM_BINS) -> None:
        if not lo <= hi:
            raise ValueError(f"histogram extent [{lo}, {hi}] is empty")
        if hi == lo:  # a constant tensor: any non-empty extent holds it
            hi = lo + 1.0
        self.edges = np.linspace(lo, hi, bins + 1)
        self.counts = np.zeros(bins, dtype=np.float64)

    def update(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        values = values[np.isfinite(values)]
        # Values outside the extent (cannot happen with a min-max first sweep on the same data)
        # are clamped into the end bins rather than silently dropped.
        values = np.clip(values, self.edges[0], self.edges[-1])
        counts, _ = np.histogram(values, bins=self.edges)
        self.counts += counts

    @property
    def centers(self) -> np.ndarray:
        return 0.5 * (self.edges[1:] + self.edges[:-1])

    def _quantile(self, fraction: float) -> float:
        """The value below which ``fraction`` of the mass lies (linear inside a bin)."""
        total = self.counts.sum()
        if total == 0:
            raise ValueError("observer saw no values")
        cumulative = np.concatenate([[0.0], np.cumsum(self.counts)]) / total
        return float(np.interp(fraction, cumulative, self.edges))


class PercentileObserver(HistogramObserver):
    """Clip at the (100 - p)-th and p-th percentiles."""

    def __init__(self, lo: float, hi: float, percentile: float = 99.99, bins: int = HISTOGRAM_BINS) -> None:
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        super().__init__(lo, hi, bins)
        self.percentile = percentile
        self._extent = (lo, hi)

    def range(self) -> tuple[float, float]:
        p = self.percentile / 100.0
        lo, hi = self._quantile(1.0 - p), self._quantile(p)
        # Never wider than what was seen (interpolation at the ends returns the extent itself).
        return max(lo, self._extent[0]), min(hi, self._extent[1])


class MseObserver(HistogramObserver):
    """The clip range with the least expected uint8 quantization MSE over the histogram."""

    def __init__(self, lo: float, hi: float, bins: int = HISTOGRAM_BINS, levels: int = 255) -> None:
        super().__init__(lo, hi, bins)
        self.levels = levels
        self._extent = (lo, hi)

    def expected_mse(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """E(lo, hi) for broadcastable arrays of candidate ends (the model in the module docstring)."""
        lo = np.minimum(np.asarray(lo, dtype=np.float64), 0.0)[..., None]
        hi = np.maximum(np.asarray(hi, dtype=np.float64), 0.0)[..., None]
        c, n = self.centers, self.counts
        step = (hi - lo) / self.levels
        clipped = np.clip(c, lo, hi)
        inside = (c >= lo) & (c <= hi)
        err = np.where(inside, step * step / 12.0, (c - clipped) ** 2)
        return (err * n).sum(axis=-1) / max(n.sum(), 1.0)

    def range(self) -> tuple[float, float]:
        if self.counts.sum() == 0:
            raise ValueError("observer saw no values")
        lo0, hi0 = self._extent
        lo_candidates = lo0 * _MSE_FRACTIONS if lo0 < 0 else np.array([lo0])
        hi_candidates = hi0 * _MSE_FRACTIONS if hi0 > 0 else np.array([hi0])
        errors = self.expected_mse(lo_candidates[:, None], hi_candidates[None, :])
        i, j = np.unravel_index(int(np.argmin(errors)), errors.shape)
        return float(lo_candidates[i]), float(hi_candidates[j])


OBSERVERS = ("minmax", "percentile", "mse")


def make_observer(kind: str, extent: tuple[float, float] | None = None, percentile: float = 99.99) -> Observer:
    """An observer by name. Histogram kinds need ``extent`` (the min-max of a first sweep)."""
    if kind == "minmax":
        return MinMaxObserver()
    if kind not in OBSERVERS:
        raise ValueError(f"unknown observer '{kind}' (known: {', '.join(OBSERVERS)})")
    if extent is None:
        raise ValueError(f"observer '{kind}' needs the data's extent (run a min-max sweep first)")
    if kind == "percentile":
        return PercentileObserver(*extent, percentile=percentile)
    return MseObserver(*extent)
