"""Export the in-repo zoo (tests/data/models.py) to ONNX, cached under tests/data/.cache/.

    model_path("resnet18")            # -> tests/data/.cache/resnet18-b1-torch2.13.0+cpu.onnx
    python tests/data/make_models.py  # (re)build every model; --force to ignore the cache

Export settings and why:
- the TorchScript exporter (``dynamo=False``), opset 17: with torch 2.13 it gives a plain graph with
  static shapes, weights as initializers in one file, and with ``training=EVAL`` plus
  ``do_constant_folding=False`` it keeps the ``BatchNormalization`` nodes (20 in ResNet-18, 52 in
  MobileNetV2), which the canonicalize passes are there to fold. The dynamo exporter
  (``dynamo=True``, opset 18) also gives a clean graph (no local functions) but has already folded
  every BN into the Conv weights, so it would leave the BN-folding path untested.
- the file is written to a temporary name and renamed, so a killed export never leaves a truncated
  model in the cache; the key includes the torch version because a new exporter may emit a
  different graph.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import warnings
from pathlib import Path

CACHE_DIR = Path(__file__).parent / ".cache"
OPSET = 17


def _models():
    """tests/data/models.py, loaded by path: this file runs both as a script and as an import
    (``tests.data.make_models``), and ``tests`` is not always importable as a package."""
    name = "edgekiln_test_zoo_models"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parent / "models.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _torch_version() -> str:
    import torch

    return torch.__version__


def _cache_file(name: str, batch: int) -> Path:
    return CACHE_DIR / f"{name}-b{batch}-torch{_torch_version()}.onnx"


def export(name: str, batch: int, path: Path) -> None:
    """Export zoo model ``name`` with batch ``batch`` to ``path`` (one self-contained .onnx)."""
    import onnx
    import torch

    models = _models()
    model = models.build(name)
    example = models.example_input(name, batch)
    entry = models.ZOO[name]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter announces its own deprecation on every call.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                tmp,
                dynamo=False,
                opset_version=OPSET,
                input_names=[entry.input_name],
                output_names=["logits"],
                training=torch.onnx.TrainingMode.EVAL,
                do_constant_folding=False,
                export_params=True,
            )
        proto = onnx.load(tmp)
        onnx.checker.check_model(proto, full_check=True)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache is shared with other users' runs
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def model_path(name: str, batch: int = 1, force: bool = False) -> Path:
    """Path of the exported ONNX file for zoo model ``name`` at ``batch``; exports it if missing."""
    path = _cache_file(name, batch)
    if force or not path.exists():
        export(name, batch, path)
    return path


def main(argv: list[str] | None = None) -> int:
    models = _models()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(models.ZOO), help="zoo models (default: all)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--force", action="store_true", help="re-export even if cached")
    args = parser.parse_args(argv)
    for name in args.names:
        print(model_path(name, args.batch, force=args.force))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
