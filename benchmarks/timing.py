"""Timing helpers: medians of repeated runs after warm-up."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def measure(fn: Callable[[], object], runs: int = 20, warmup: int = 3, max_seconds: float = 120.0) -> dict:
    """Run ``fn`` ``warmup`` times, then ``runs`` times (fewer if ``max_seconds`` would be exceeded,
    never fewer than 3); returns median/min/p90 in milliseconds and the run count."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    deadline = time.perf_counter() + max_seconds
    while len(samples) < runs and (len(samples) < 3 or time.perf_counter() < deadline):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    ms = np.array(samples) * 1e3
    return {
        "median_ms": float(np.median(ms)),
        "min_ms": float(ms.min()),
        "p90_ms": float(np.percentile(ms, 90)),
        "runs": len(samples),
    }


def interleaved_samples(fns: dict[str, Callable[[], object]], runs: int = 20, warmup: int = 3, block: int = 2,
                        max_seconds: float = 240.0) -> dict[str, list[float]]:
    """Time several callables in alternation, ``block`` timed runs of one, then of the next (the
    order rotates every round), so a burst of load from other processes on a shared machine lands
    on all of them alike and their ratios stay meaningful. Each block starts with one untimed
    call: the previous callable's thread pool (ONNX Runtime's and TVM's workers spin a while after
    a run) would otherwise compete for the cores in the first timed run. Returns the timed runs
    in milliseconds per name, in order: every list has the same length, and with ``block`` 1
    entry i of each was measured in round i (``benchmarks.ab`` pairs them)."""
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    deadline = time.perf_counter() + max_seconds
    rounds = 0
    while any(len(v) < runs for v in samples.values()) and (rounds < 1 or time.perf_counter() < deadline):
        order = names[rounds % len(names):] + names[: rounds % len(names)]
        for name in order:
            fns[name]()  # untimed: let the previous callable's spinning threads go idle
            for _ in range(min(block, runs - len(samples[name]))):
                start = time.perf_counter()
                fns[name]()
                samples[name].append((time.perf_counter() - start) * 1e3)
        rounds += 1
    return samples


def measure_interleaved(fns: dict[str, Callable[[], object]], runs: int = 20, warmup: int = 3, block: int = 2,
                        max_seconds: float = 240.0) -> dict[str, dict]:
    """:func:`interleaved_samples` summarized: ``measure``'s statistics per name."""
    out = {}
    for name, values in interleaved_samples(fns, runs, warmup, block, max_seconds).items():
        ms = np.array(values)
        out[name] = {
            "median_ms": float(np.median(ms)),
            "min_ms": float(ms.min()),
            "p90_ms": float(np.percentile(ms, 90)),
            "runs": len(values),
        }
    return out
