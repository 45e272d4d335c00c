"""Observers: known answers on synthetic data."""

from __future__ import annotations

import numpy as np
import pytest

from passes.quantize.observers import MinMaxObserver, MseObserver, PercentileObserver, make_observer


def test_minmax_is_exact_across_batches() -> None:
    obs = MinMaxObserver()
    obs.update(np.array([0.5, -2.0, 1.0]))
    obs.update(np.array([[3.25], [0.0]]))
    assert obs.range() == (-2.0, 3.25)


def test_percentile_matches_numpy_within_a_bin() -> None:
    data = np.random.default_rng(0).standard_normal(200_000)
    extent = (float(data.min()), float(data.max()))
    obs = PercentileObserver(*extent, percentile=99.0)
    for chunk in np.array_split(data, 4):
        obs.update(chunk)
    bin_width = (extent[1] - extent[0]) / 2048
    lo, hi = obs.range()
    assert abs(hi - np.percentile(data, 99.0)) <= bin_width
    assert abs(lo - np.percentile(data, 1.0)) <= bin_width
    assert make_observer("percentile", extent, percentile=100.0).percentile == 100.0


def test_mse_clip_shrinks_range_on_heavy_tails_and_beats_minmax() -> None:
    rng = np.random.default_rng(0)
    data = np.concatenate([rng.standard_normal(100_000), [60.0, -45.0]])  # two outliers
    extent = (float(data.min()), float(data.max()))
    obs = MseObserver(*extent)
    obs.update(data)
    lo, hi = obs.range()
    assert -45.0 < lo < -3.0 and 3.0 < hi < 60.0
    assert obs.expected_mse(lo, hi) < obs.expected_mse(*extent)


def test_mse_keeps_the_full_range_on_uniform_data() -> None:
    data = np.random.default_rng(0).uniform(-1.0, 1.0, 100_000)
    obs = MseObserver(-1.0, 1.0)
    obs.update(data)
    lo, hi = obs.range()
    assert lo <= -0.95 and hi >= 0.95


def test_histogram_observers_need_an_extent() -> None:
    with pytest.raises(ValueError, match="extent"):
        make_observer("mse")
    with pytest.raises(ValueError, match="unknown observer"):
        make_observer("entropy", (0.0, 1.0))
