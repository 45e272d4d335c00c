"""The output directory: written atomically, described by ``manifest.json``, loadable and runnable.

Layout of ``OUT/``::

    model.opt.onnx   the optimized ONNX model (runs in ONNX Runtime)
    model.so|.tar    the TVM-compiled library (weights embedded); absent when lowering was skipped
    pipeline.txt     the replayable pass spec (``compile --passes "$(cat pipeline.txt)"``)
    report.json      what was done and measured (see compiler/report.py)
    report.html      the same, for people
    manifest.json    input/output signature, library file, target: what load_artifact needs

Atomicity: everything is written into ``.<name>.tmp-<pid>`` beside ``OUT`` and renamed into place
only when complete. On any error the temporary folder is removed, so a failed compile leaves nothing
behind. An existing ``OUT`` is replaced only when ``force`` is set.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from compiler.errors import OptionError

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


def check_output_dir(out_dir: Path, force: bool) -> None:
    """Fail before doing any work when ``out_dir`` exists and may not be replaced."""
    if out_dir.exists() and not force:
        raise OptionError(f"output directory '{out_dir}' already exists; use --force to replace it")
    if out_dir.exists() and not out_dir.is_dir():
        raise OptionError(f"output path '{out_dir}' exists and is not a directory")
    parent = out_dir.absolute().parent
    if not parent.is_dir():
        raise OptionError(f"cannot create output directory '{out_dir}': parent '{parent}' does not exist")


@contextlib.contextmanager
def atomic_output_dir(out_dir: Path, force: bool) -> Iterator[Path]:
    """Yield a temporary directory; on normal exit move it to ``out_dir``, else delete it."""
    check_output_dir(out_dir, force)
    tmp = out_dir.absolute().parent / f".{out_dir.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out_dir.exists():
        old = out_dir.absolute().parent / f".{out_dir.name}.old-{os.getpid()}"
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def signature_of(model) -> dict[str, list[dict[str, Any]]]:
    """Input/output names, static shapes and numpy dtype names of an IR model, in graph order."""

    def describe(value) -> dict[str, Any]:
        shape = [d if isinstance(d, int) else None for d in value.shape] if value.shape is not None else None
        return {"name": value.name, "shape": shape, "dtype": np.dtype(value.dtype.numpy()).name}

    return {
        "inputs": [describe(v) for v in model.graph.inputs if not v.is_initializer()],
        "outputs": [describe(v) for v in model.graph.outputs],
    }


def write_manifest(directory: Path, *, signature: dict, library: str | None, target: dict, onnx_file: str) -> None:
    manifest = {
        "schema_version": MANIFEST_VERSION,
        "onnx": onnx_file,
        "library": library,
        "target": target,
        **signature,
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


class Artifact:
    """A compiled output directory loaded back. ``run(feeds)`` mirrors ``InferenceSession.run(None, feeds)``."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        path = self.directory / MANIFEST
        if not path.is_file():
            raise OptionError(f"{self.directory}: not an edgekiln output directory (no {MANIFEST})")
        self.manifest = json.loads(path.read_text())
        self.inputs: list[dict[str, Any]] = self.manifest["inputs"]
        self.outputs: list[dict[str, Any]] = self.manifest["outputs"]
        self._library = None

    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [o["name"] for o in self.outputs]

    @property
    def report(self) -> dict[str, Any]:
        return json.loads((self.directory / "report.json").read_text())

    def _load(self):
        if self._library is None:
            library = self.manifest.get("library")
            if not library:
                raise OptionError(f"{self.directory}: no compiled library (lowering was skipped); run model.opt.onnx instead")
            if not self.manifest["target"].get("runs_locally", True):
                raise OptionError(
                    f"{self.directory}: the library is built for target '{self.manifest['target']['name']}' "
                    "and cannot run on this machine; run it on the board with .remote(tracker, key) (see README)"
                )
            from targets.lowering import load_library

            self._library = load_library(self.directory / library, self.input_names)
        return self._library

    def check_feeds(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Validate names, shapes and dtypes; returns the feeds as contiguous arrays."""
        missing = [n for n in self.input_names if n not in feeds]
        extra = [n for n in feeds if n not in self.input_names]
        if missing or extra:
            raise OptionError(f"feeds do not match the inputs {self.input_names}: missing {missing}, unexpected {extra}")
        checked = {}
        for spec in self.inputs:
            array = np.ascontiguousarray(feeds[spec["name"]])
            if list(array.shape) != spec["shape"]:
                raise OptionError(f"input '{spec['name']}': shape {list(array.shape)}, artifact was compiled for {spec['shape']}")
            if array.dtype.name != spec["dtype"]:
                raise OptionError(f"input '{spec['name']}': dtype {array.dtype.name}, expected {spec['dtype']}")
            checked[spec["name"]] = array
        return checked

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the compiled library; returns outputs as numpy arrays in graph order."""
        return self._load().run(self.check_feeds(feeds))

    def remote(self, tracker: str, key: str, timeout_s: float | None = None) -> RemoteArtifact:
        """This artifact on a board, through a TVM RPC tracker (``"HOST:PORT"``) and the board's
        device key: ``.run(feeds)`` like :meth:`run`, ``.time(feeds)`` the latency measured there."""
        library = self.manifest.get("library")
        if not library:
            raise OptionError(f"{self.directory}: no compiled library (lowering was skipped)")
        from targets.lowering.rpc import RemoteLibrary, RpcDevice, device_kind

        device = RpcDevice.from_options(tracker, key, timeout_s, device_kind(self.manifest["target"]))
        return RemoteArtifact(self, RemoteLibrary(device, self.directory / library, self.input_names))


class RemoteArtifact:
    """An Artifact loaded on a board (:meth:`Artifact.remote`); feeds are checked like ``run``'s."""

    def __init__(self, artifact: Artifact, library):
        self.artifact = artifact
        self.library = library

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs computed on the board, as numpy arrays in graph order."""
        return self.library.run(self.artifact.check_feeds(feeds))

    def time(self, feeds: dict[str, np.ndarray], repeat: int = 10) -> dict[str, Any]:
        """``{"median_ms", "min_ms", "runs", ...}`` timed on the board by TVM's time_evaluator."""
        return self.library.time(self.artifact.check_feeds(feeds), repeat=repeat)


def load_artifact(directory: str | os.PathLike) -> Artifact:
    """Load an output directory written by ``compile`` / ``compile_model``."""
    return Artifact(Path(directory))
