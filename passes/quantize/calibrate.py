"""Calibration: run ONNX Runtime on ``ctx.calibration`` and observe intermediate values.

``collect_statistics`` works on a protobuf copy of the model in which every requested value is an
extra graph output (declared with its element type only, so symbolic or batch dims inferred earlier
never conflict with what the calibration batches produce). The model itself is not touched.

Graph inputs are observed straight from the feeds; an input with an initializer default that the
feeds omit is observed through that default (ONNX Runtime uses it too).

Histogram observers need each tensor's extent first, so those run two sweeps over the data: min-max,
then the histograms (see ``observers``). Per-channel means (for bias correction) ride on the first
sweep.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from compiler.context import Feeds
from compiler.intermediates import intermediates
from compiler.ir import Model, constant_array
from passes.quantize.observers import MinMaxObserver, Observer, make_observer

__all__ = ["CalibrationError", "Statistics", "collect_statistics"]


class CalibrationError(ValueError):
    """Calibration cannot run: no data, or the data does not fit the model."""


@dataclasses.dataclass
class Statistics:
    """What calibration measured: a clip range per value name, per-channel means where asked."""

    ranges: dict[str, tuple[float, float]]
    channel_means: dict[tuple[str, int], np.ndarray]
    batches: int


def _sweeps(model: Model, calibration: Sequence[Feeds], names: list[str]):
    """A function that yields ``{name: array}`` for every calibration batch each time it is called
    (``compiler.intermediates``; errors are CalibrationError)."""

    def sweep():
        yield from intermediates(model, calibration, names, error=CalibrationError)

    return sweep


def constant_array_any(value) -> np.ndarray:
    """The initializer array of a value, including an overridable graph-input default."""
    array = constant_array(value)
    return array if array is not None else value.const_value.numpy()


def collect_statistics(
    model: Model,
    calibration: Sequence[Feeds],
    names: Sequence[str],
    observer: str = "minmax",
    percentile: float = 99.99,
    channel_means: Sequence[tuple[str, int]] = (),
) -> Statistics:
    """Observe ``names`` (graph inputs or node outputs) over all calibration batches.

    Args:
        observer: ``minmax``, ``percentile`` or ``mse`` (see ``observers``).
        channel_means: ``(value name, channel axis)`` pairs whose per-channel mean (over every other
            axis and every batch) is wanted, e.g. a Conv input's mean per input channel.

    Raises:
        CalibrationError: no calibration batches, a batch lacks an input or does not run.
    """
    if not calibration:
        raise CalibrationError("quantization needs calibration data (ctx.calibration is empty; pass --calib)")
    names = list(dict.fromkeys(names))
    mean_names = [n for n, _ in channel_means]
    sweep = _sweeps(model, calibration, list(dict.fromkeys([*names, *mean_names])))

    extents: dict[str, MinMaxObserver] = {n: MinMaxObserver() for n in names}
    sums: dict[tuple[str, int], np.ndarray] = {}
    counts: dict[tuple[str, int], int] = {}
    batches = 0
    for arrays in sweep():
        batches += 1
        for n in names:
            extents[n].update(arrays[n])
        for key in channel_means:
            name, axis = key
            array = np.asarray(arrays[name], dtype=np.float64)
            axis = axis % array.ndim
            other = tuple(i for i in range(array.ndim) if i != axis)
            sums[key] = sums.get(key, 0.0) + array.sum(axis=other)
            counts[key] = counts.get(key, 0) + array.size // array.shape[axis]

    ranges: dict[str, tuple[float, float]] = {}
    if observer == "minmax":
        ranges = {n: obs.range() for n, obs in extents.items()}
    else:
        observers: dict[str, Observer] = {
            n: make_observer(observer, obs.range(), percentile=percentile) for n, obs in extents.items()
        }
        for arrays in sweep():
            for n in names:
                observers[n].update(arrays[n])
        ranges = {n: obs.range() for n, obs in observers.items()}
    means = {key: sums[key] / counts[key] for key in sums}
    return Statistics(ranges, means, batches)
