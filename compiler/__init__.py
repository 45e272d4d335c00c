"""edgekiln's compiler engine: the public Python API.

    from compiler import compile_model, load_artifact, export_torch, Pipeline, Pass, register_pass

Attributes are imported lazily so that ``import compiler`` (and ``compile --help``) stay fast.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "compile_model": "compiler.api",
    "CompileResult": "compiler.api",
    "load_artifact": "compiler.artifact",
    "Artifact": "compiler.artifact",
    "export_torch": "compiler.export",
    "Pipeline": "compiler.pipeline",
    "Pass": "compiler.pass_base",
    "PassResult": "compiler.pass_base",
    "Fact": "compiler.pass_base",
    "Tolerance": "compiler.pass_base",
    "register_pass": "compiler.pass_base",
    "CompileContext": "compiler.context",
    "EdgekilnError": "compiler.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'compiler' has no attribute {name!r}")
