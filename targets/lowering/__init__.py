"""Lowering through Apache TVM (Relax): the only package of edgekiln that imports tvm.

    result = lower_model(model_proto, get_target("cpu"), {"x": (1, 3, 224, 224)}, out_dir)
    lib = load_library(out_dir / result.library_file, result.input_names)
    outputs = lib.run({"x": x})          # list of numpy arrays, graph order

Modules: ``tvm_target`` (resolve a spec's TVM target, "host" values), ``importer`` (ONNX -> Relax,
operator support check), ``build`` (passes, schedules, compile, export), ``runtime`` (load and run
with the Relax VM), ``errors`` (TVM exceptions -> one-line LoweringError), ``schedules`` (CPU
schedule rules), ``lower`` (sequences the steps).
"""

from __future__ import annotations

from targets.lowering.lower import LoweringResult, lower_model
from targets.lowering.runtime import LoadedLibrary, load_library


def versions() -> dict[str, str]:
    """Versions of the TVM stack that built an artifact (for report.json and cache keys)."""
    import tvm
    import tvm_ffi
    from tvm.target import codegen

    return {
        "tvm": tvm.__version__,
        "tvm-ffi": tvm_ffi.__version__,
        "llvm": str(codegen.llvm_version_major()),
    }


__all__ = ["LoadedLibrary", "LoweringResult", "load_library", "lower_model", "versions"]
