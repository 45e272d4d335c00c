"""Load an exported library and run it with the Relax VM on this machine's CPU.

The library does not record its input names (the VM knows only positions), so the caller passes
them in graph order; compiler/artifact.py keeps them in its manifest, from
``LoweringResult.input_names``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from compiler.errors import LoweringError, OptionError
from targets.lowering.errors import one_line


# TVM's kernels assume 64-byte aligned buffers (its DLPack import refuses anything less).
_ALIGNMENT = 64


def _to_numpy(tensor) -> np.ndarray:
    """A numpy copy of a VM output tensor (through DLPack: ~1 us instead of ~9 us for
    ``Tensor.numpy()``; the VM may reuse the tensor's storage on the next call, hence the copy)."""
    try:
        return np.from_dlpack(tensor).copy()
    except (TypeError, RuntimeError, BufferError):  # a dtype numpy's DLPack import lacks
        return tensor.numpy()


def flatten_outputs(value, to_numpy: Callable = _to_numpy) -> list[np.ndarray]:
    """VM results (one tensor, or a tuple of them for several graph outputs) as numpy arrays.

    ``to_numpy`` converts one tensor; remote (RPC) tensors must use ``Tensor.numpy()``, which
    copies over the connection (DLPack only sees local memory)."""
    if hasattr(value, "numpy"):
        return [to_numpy(value)]
    out: list[np.ndarray] = []
    for item in value:  # tvm-ffi Array (a Relax tuple)
        out += flatten_outputs(item, to_numpy)
    return out


def check_feed_names(feeds: Mapping[str, np.ndarray], input_names: Sequence[str]) -> None:
    """Raise OptionError naming the missing and unexpected input names, if any."""
    missing = [name for name in input_names if name not in feeds]
    extra = sorted(set(feeds) - set(input_names))
    if missing or extra:
        raise OptionError(f"inputs do not match the model: missing {missing}, unexpected {extra}")


def ordered_inputs(feeds: Mapping[str, np.ndarray], input_names: Sequence[str]) -> list[np.ndarray]:
    """``feeds`` as contiguous arrays in graph order (the VM knows inputs only by position).

    Raises OptionError naming the missing and unexpected input names.
    """
    check_feed_names(feeds, input_names)
    return [np.ascontiguousarray(feeds[name]) for name in input_names]


def run_error(exc: BaseException, message: str) -> Exception:
    """The user-facing error for a failed VM call: OptionError for a wrong feed, else LoweringError.

    The VM checks each argument against the compiled signature (shape and dtype) and says which
    parameter failed (``loc=param``): that is a wrong feed, not a compiler fault.
    """
    message = f"{message}: {one_line(exc)}"
    return OptionError(message) if "loc=param" in str(exc) else LoweringError(message)


def _aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialized C-contiguous array whose data starts on a 64-byte boundary."""
    nbytes = max(1, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
    raw = np.empty(nbytes + _ALIGNMENT, np.uint8)
    offset = (-raw.ctypes.data) % _ALIGNMENT
    return raw[offset : offset + nbytes].view(dtype)[: int(np.prod(shape, dtype=np.int64))].reshape(shape)


class LoadedLibrary:
    """A compiled model ready to run: ``run(feeds)`` works like ``InferenceSession.run(None, feeds)``.

    Not thread-safe (neither is the Relax VM): the inputs are staged in buffers owned by the
    object. Use one LoadedLibrary per thread."""

    def __init__(self, path: str | os.PathLike, input_names: Sequence[str]):
        self.path = Path(path)
        self.input_names = list(input_names)
        if len(set(self.input_names)) != len(self.input_names):
            raise OptionError(f"duplicate input names {self.input_names}")
        if not self.path.is_file():
            raise OptionError(f"compiled library '{self.path}' does not exist")
        self.device = tvm.cpu()
        try:
            self._module = tvm.runtime.load_module(str(self.path))
            self._vm = relax.VirtualMachine(self._module, self.device)
            self._main = self._vm["main"]
        except Exception as exc:
            raise LoweringError(f"cannot load compiled library '{self.path}': {one_line(exc)}") from exc
        # Per input: an aligned numpy staging buffer and a TVM tensor viewing it (zero-copy), made
        # on first use for each (shape, dtype). Copying a feed into it costs ~1 us; creating a
        # TVM tensor from numpy per call cost ~27 us, more than a small model's whole inference.
        self._staging: dict[str, tuple[np.ndarray, object]] = {}

    def _argument(self, name: str, value) -> object:
        array = np.asarray(value)
        staged = self._staging.get(name)
        if staged is None or staged[0].shape != array.shape or staged[0].dtype != array.dtype:
            buffer = _aligned_empty(array.shape, array.dtype)
            try:
                staged = (buffer, tvm.runtime.from_dlpack(buffer))
            except Exception:  # noqa: BLE001 - a dtype DLPack cannot carry: copy per call instead
                staged = None
            if staged is None:
                return tvm.runtime.tensor(np.ascontiguousarray(array), self.device)
            self._staging[name] = staged
        np.copyto(staged[0], array)
        return staged[1]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs for ``feeds`` (input name -> array) in graph order."""
        check_feed_names(feeds, self.input_names)
        args = [self._argument(name, feeds[name]) for name in self.input_names]
        try:
            result = self._main(*args)
        except Exception as exc:
            raise run_error(exc, f"running '{self.path.name}' failed") from exc
        return flatten_outputs(result)

    def __repr__(self) -> str:
        return f"LoadedLibrary({str(self.path)!r}, input_names={self.input_names})"


def load_library(path: str | os.PathLike, input_names: Sequence[str]) -> LoadedLibrary:
    """Load the library at ``path``; ``input_names`` are the model's inputs in graph order."""
    return LoadedLibrary(path, input_names)
