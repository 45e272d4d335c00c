"""Load an exported library and run it with the Relax VM on this machine's CPU.

The library does not record its input names (the VM knows only positions), so the caller passes
them in graph order; compiler/artifact.py keeps them in its manifest, from
``LoweringResult.input_names``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from compiler.errors import LoweringError, OptionError
from targets.lowering.errors import one_line


def flatten_outputs(value) -> list[np.ndarray]:
    """VM results (one tensor, or a tuple of them for several graph outputs) as numpy arrays."""
    if hasattr(value, "numpy"):
        return [value.numpy()]
    out: list[np.ndarray] = []
    for item in value:  # tvm-ffi Array (a Relax tuple)
        out += flatten_outputs(item)
    return out


def ordered_inputs(feeds: Mapping[str, np.ndarray], input_names: Sequence[str]) -> list[np.ndarray]:
    """``feeds`` as contiguous arrays in graph order (the VM knows inputs only by position).

    Raises OptionError naming the missing and unexpected input names.
    """
    missing = [name for name in input_names if name not in feeds]
    extra = sorted(set(feeds) - set(input_names))
    if missing or extra:
        raise OptionError(f"inputs do not match the model: missing {missing}, unexpected {extra}")
    return [np.ascontiguousarray(feeds[name]) for name in input_names]


def run_error(exc: BaseException, message: str) -> Exception:
    """The user-facing error for a failed VM call: OptionError for a wrong feed, else LoweringError.

    The VM checks each argument against the compiled signature (shape and dtype) and says which
    parameter failed (``loc=param``): that is a wrong feed, not a compiler fault.
    """
    message = f"{message}: {one_line(exc)}"
    return OptionError(message) if "loc=param" in str(exc) else LoweringError(message)


class LoadedLibrary:
    """A compiled model ready to run: ``run(feeds)`` works like ``InferenceSession.run(None, feeds)``."""

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
        except Exception as exc:
            raise LoweringError(f"cannot load compiled library '{self.path}': {one_line(exc)}") from exc

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs for ``feeds`` (input name -> array) in graph order."""
        args = [tvm.runtime.tensor(array, self.device) for array in ordered_inputs(feeds, self.input_names)]
        try:
            result = self._vm["main"](*args)
        except Exception as exc:
            raise run_error(exc, f"running '{self.path.name}' failed") from exc
        return flatten_outputs(result)

    def __repr__(self) -> str:
        return f"LoadedLibrary({str(self.path)!r}, input_names={self.input_names})"


def load_library(path: str | os.PathLike, input_names: Sequence[str]) -> LoadedLibrary:
    """Load the library at ``path``; ``input_names`` are the model's inputs in graph order."""
    return LoadedLibrary(path, input_names)
