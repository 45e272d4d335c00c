"""Task accuracy on labelled data: the "accuracy vs fp32" numbers in the compile report.

The data comes from ``.npz`` files (the ``<stem>.calib.npz`` / ``<stem>.eval.npz`` sidecars beside a
model, or ``--calib``/``--eval``): one array per graph input, stacked along dim 0, plus an optional
``labels`` array of class indices. The model is run through a plain callable, so the same helper
measures ONNX Runtime, the optimized graph and the compiled TVM artifact alike.

Example (from the repository root)::

    import onnx
    from compiler.accuracy import evaluate_classification, load_npz_feeds
    from compiler.verify import ort_session

    feeds, labels = load_npz_feeds("examples/digits_cnn.eval.npz", ["x"])
    session = ort_session(onnx.load("examples/digits_cnn.onnx"))
    evaluate_classification(lambda f: session.run(None, f), feeds, labels, 1, ["x"])
    # {'top1': 0.9944..., 'samples': 540}
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from compiler.errors import OptionError

__all__ = ["LABELS_KEY", "evaluate_classification", "load_npz_feeds", "split_batches"]

#: The key holding class indices in an evaluation ``.npz``.
LABELS_KEY = "labels"


def split_batches(arrays: dict[str, np.ndarray], batch_size: int) -> list[dict[str, np.ndarray]]:
    """Cut stacked arrays into consecutive batches along dim 0 (the last one may be smaller).

    Every array must have the same length along dim 0. A model with a static batch of 1 needs
    ``batch_size=1``; one with a symbolic batch dim takes any size.

    >>> [b["x"].shape for b in split_batches({"x": np.zeros((5, 2))}, 2)]
    [(2, 2), (2, 2), (1, 2)]
    """
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise OptionError(f"batch size must be a positive integer, got {batch_size!r}")
    if not arrays:
        return []
    count = _common_length(arrays)
    return [
        {name: array[start : start + batch_size] for name, array in arrays.items()}
        for start in range(0, count, batch_size)
    ]


def evaluate_classification(
    run: Callable[[dict[str, np.ndarray]], list[np.ndarray]],
    data: dict[str, np.ndarray],
    labels: np.ndarray,
    batch_size: int = 1,
    input_names: Sequence[str] | None = None,
) -> dict:
    """Top-1 accuracy of a classifier over stacked samples.

    Args:
        run: maps one batch of feeds ``{input name: array}`` to the model's outputs in graph order
            (e.g. ``lambda feeds: session.run(None, feeds)``). The first output holds the class
            scores, shape ``[batch, classes]`` (any extra dims are flattened into the scores).
        data: stacked inputs, one array per input name, all with the same dim 0.
        labels: integer class index per sample, shape ``[N]``.
        batch_size: samples per call of ``run``. When it does not divide N, the last batch is
            padded to ``batch_size`` by repeating its last sample (the padded predictions are not
            counted), so a model compiled for a static batch always gets the shape it expects.
        input_names: which arrays of ``data`` to feed (default: all of them), so a dict that also
            holds labels or other keys can be passed as is.

    Returns:
        ``{"top1": correct / N, "samples": N}``.

    Raises:
        OptionError: an input name is missing from ``data``, the sample counts disagree, the labels
            are not integer class indices, or there are no samples.
    """
    names = list(data) if input_names is None else list(input_names)
    missing = [name for name in names if name not in data]
    if missing:
        raise OptionError(f"evaluation data has no array for input(s) {missing}; it has {sorted(data)}")
    feeds_all = {name: np.asarray(data[name]) for name in names}
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise OptionError(
            f"labels must be a 1-D array of integer class indices, got {labels.dtype} with shape {labels.shape}"
        )
    count = _common_length(feeds_all) if feeds_all else 0
    if count == 0:
        raise OptionError("evaluation data holds no samples")
    if labels.shape[0] != count:
        raise OptionError(f"{labels.shape[0]} labels for {count} samples")

    correct = 0
    start = 0
    for batch in split_batches(feeds_all, batch_size):
        size = next(iter(batch.values())).shape[0]
        if size < batch_size:
            pad = batch_size - size
            batch = {name: np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) for name, a in batch.items()}
        scores = np.asarray(run(batch)[0])
        if scores.ndim == 0 or scores.shape[0] != batch_size:
            raise OptionError(
                f"the model's first output has shape {list(scores.shape)} for a batch of {batch_size}; "
                "expected class scores [batch, classes]"
            )
        predicted = scores.reshape(batch_size, -1)[:size].argmax(axis=1)
        correct += int((predicted == labels[start : start + size]).sum())
        start += size
    return {"top1": correct / count, "samples": count}


def load_npz_feeds(
    path: str | os.PathLike, input_names: Sequence[str]
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Read stacked feeds for ``input_names`` (and the optional ``labels``) from an ``.npz`` file.

    Returns:
        ``(feeds, labels)``: ``feeds`` maps each input name to its array; ``labels`` is the
        ``labels`` array, or None when the file has none. Other keys are ignored.

    Raises:
        OptionError: the file is missing or not a valid ``.npz`` archive, needs pickle to load, or
            lacks an array for one of ``input_names``; the message names the file and the key.
    """
    path = Path(path)
    if not path.is_file():
        raise OptionError(f"{path}: no such data file")
    # Decide by magic bytes: np.load's own error for a non-npz file talks about pickles.
    with open(path, "rb") as handle:
        magic = handle.read(6)
    if magic.startswith(b"\x93NUMPY"):
        raise OptionError(f"{path}: a single .npy array, not an .npz archive; write it with numpy.savez")
    if not magic.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        raise OptionError(f"{path}: not a valid .npz file (not a zip archive)")
    try:
        # allow_pickle=False: reading a data file must never run code.
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            missing = [name for name in input_names if name not in keys]
            if missing:
                raise OptionError(f"{path}: no array for input '{missing[0]}' (the file has keys {sorted(keys)})")
            # Materialize now: NpzFile reads members lazily from the open zip.
            feeds = {name: archive[name] for name in input_names}
            labels = archive[LABELS_KEY] if LABELS_KEY in keys else None
    except OptionError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise OptionError(f"{path}: not a valid .npz file ({type(exc).__name__}: {exc})") from None
    return feeds, labels


def _common_length(arrays: dict[str, np.ndarray]) -> int:
    lengths = {name: (np.shape(array)[0] if np.ndim(array) else None) for name, array in arrays.items()}
    scalars = [name for name, length in lengths.items() if length is None]
    if scalars:
        raise OptionError(f"array(s) {scalars} are scalars; expected samples stacked along dim 0")
    if len(set(lengths.values())) > 1:
        raise OptionError(f"arrays have different numbers of samples along dim 0: {lengths}")
    return next(iter(lengths.values()))
