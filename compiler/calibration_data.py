"""Calibration data: every source a user can hand over, cut into batches of the compiled shapes.

Sources (``--calib`` on the command line, ``calibration=`` in ``compile_model``):

* an ``.npz`` archive of stacked samples keyed by input name (dim 0 = sample);
* a directory of ``.npy`` files: ``<input name>.npy`` per input (stacked like the ``.npz``), or,
  for a model with one input, any number of ``*.npy`` files, each one sample or a stack of samples
  (read in file-name order and concatenated);
* a mapping ``{input name: stacked array}``;
* an iterable of feed dicts (a generator, a ``torch`` DataLoader turned into numpy, ...): each
  value a batch (leading batch dim) or a single sample (without it); they are stacked.

Every source is normalised the same way: stacked per input along dim 0, then cut into batches of
the batch size the model is compiled for. The compiled shapes are static, so a short last batch
(e.g. 179 samples at batch 8) is completed with samples from the start of the set (wrap-around):
every sample is used, none is invented, and min/max ranges are unchanged by the repeats (histogram
observers see the few repeated samples twice). ``CalibrationSet.note`` says when that happened.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from compiler.accuracy import load_npz_feeds, split_batches
from compiler.errors import OptionError

__all__ = ["CalibrationSet", "calibration_batches", "load_npy_dir"]

Feeds = dict[str, np.ndarray]


@dataclasses.dataclass
class CalibrationSet:
    """Batches of the compiled input shapes, and what was done to get them."""

    batches: list[Feeds]
    samples: int = 0
    note: str | None = None


def load_npy_dir(path: Path, names: Sequence[str]) -> dict[str, list[np.ndarray]]:
    """The arrays of a directory of ``.npy`` files, per input (see the module docstring).

    Raises:
        OptionError: no ``.npy`` files, a file that is not a plain ``.npy`` array, or (several
            inputs) a missing ``<input>.npy``; the message names the directory or file.
    """
    files = sorted(p for p in path.iterdir() if p.suffix == ".npy" and p.is_file())
    if not files:
        raise OptionError(f"{path}: no .npy files in the calibration directory")
    by_name = {p.stem: p for p in files}
    if all(name in by_name for name in names):
        return {name: [_load_npy(by_name[name])] for name in names}
    if len(names) != 1:
        missing = next(name for name in names if name not in by_name)
        raise OptionError(f"{path}: no {missing}.npy (a model with several inputs needs one <input>.npy per input)")
    return {names[0]: [_load_npy(p) for p in files]}


def _load_npy(path: Path) -> np.ndarray:
    try:
        # allow_pickle=False: reading a data file must never run code.
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise OptionError(f"{path}: not a readable .npy array ({str(exc).splitlines()[0]})") from None


def _parts(source, names: Sequence[str]) -> dict[str, list[np.ndarray]]:
    """The arrays a source holds per input, not yet stacked (each a sample or a stack)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            return load_npy_dir(path, names)
        arrays, _ = load_npz_feeds(path, names)
        return {name: [arrays[name]] for name in names}
    if isinstance(source, Mapping):
        missing = [name for name in names if name not in source]
        if missing:
            raise OptionError(f"calibration data has no array for input '{missing[0]}' (it has {sorted(source)})")
        return {name: [np.asarray(source[name])] for name in names}
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for index, feeds in enumerate(source):
        if not isinstance(feeds, Mapping):
            raise OptionError(f"calibration item {index} is a {type(feeds).__name__}, not a dict of input name -> array")
        for name in names:
            if name not in feeds:
                raise OptionError(f"calibration item {index} has no array for input '{name}' (it has {sorted(feeds)})")
            parts[name].append(np.asarray(feeds[name]))
    return parts


def _stack(parts: Sequence[np.ndarray], shape: tuple[int, ...], name: str) -> np.ndarray:
    """Concatenate the parts of one input along dim 0: a part of the compiled per-sample shape
    ``shape[1:]`` is one sample, a part ``[n, *shape[1:]]`` a stack of n samples."""
    sample = tuple(shape[1:])
    stacks = []
    for part in parts:
        if part.shape == sample and len(shape) > 0:
            part = part[None]
        if part.ndim != len(shape) or part.shape[1:] != sample:
            raise OptionError(
                f"calibration input '{name}' has samples of shape {list(part.shape[1:])}; "
                f"the model is compiled for {list(shape)} (one sample: {list(sample)})"
            )
        stacks.append(part)
    return np.concatenate(stacks, axis=0)


def calibration_batches(source, shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, np.dtype]) -> CalibrationSet:
    """Batches of exactly ``shapes`` (and ``dtypes``) from any calibration ``source``.

    Raises:
        OptionError: a source that cannot be read, lacks an input, or whose samples do not have
            the compiled per-sample shape; the message names the input and both shapes.
    """
    names = list(shapes)
    if source is None or not names:
        return CalibrationSet([])
    parts = _parts(source, names)
    if not parts[names[0]]:
        return CalibrationSet([])  # an empty iterable: no calibration data
    arrays = {name: _stack(parts[name], tuple(shapes[name]), name) for name in names}
    lengths = {array.shape[0] for array in arrays.values()}
    if len(lengths) != 1:
        raise OptionError(f"calibration inputs have different sample counts {sorted(lengths)}")
    samples = lengths.pop()
    batch_sizes = {shapes[name][0] for name in names if shapes[name]}
    batch = batch_sizes.pop() if len(batch_sizes) == 1 else 1
    note = None
    short = -samples % batch
    if short:
        # Static compiled shapes: complete the last batch from the start of the set (wrap-around).
        index = np.arange(samples + short) % samples
        arrays = {name: array[index] for name, array in arrays.items()}
        note = (f"{samples} calibration samples at batch {batch}: the last batch was completed with "
                f"{short} sample(s) from the start of the set")
    batches = split_batches({name: arrays[name].astype(dtypes[name], copy=False) for name in names}, batch)
    return CalibrationSet(batches, samples, note)
