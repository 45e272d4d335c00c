"""Resolve a Target's ``tvm_target`` (JSON dict or tag) into a ``tvm.target.Target``.

Specs may say ``"host"`` for values that depend on the machine running the compiler
(targets/specs/cpu.toml): they are resolved here from LLVM's view of this CPU, so the artifact uses
the instructions (AVX-512, VNNI, NEON...) of the machine that builds it, and is deterministic on it.
"""

from __future__ import annotations

import os
from typing import Any

import tvm
from tvm.target import codegen

from compiler.errors import OptionError
from targets.registry import Target

HOST = "host"


def physical_core_count() -> int:
    """Physical cores this process may use (hyper-threads share a core's vector units, so TVM's
    thread pool gains nothing from them)."""
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or logical
    except ImportError:  # psutil is a declared dependency; keep working without it anyway
        physical = logical
    return max(1, min(physical, logical))


def _host_value(key: str) -> Any:
    """The value of target key ``key`` on this machine."""
    if key == "mcpu":
        return codegen.llvm_get_system_cpu()
    if key == "mtriple":
        return codegen.llvm_get_system_triple()
    if key == "num-cores":
        return physical_core_count()
    raise OptionError(f"target key '{key}' cannot be \"host\" (only mcpu, mtriple and num-cores can)")


def resolve_host_values(spec: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A copy of ``spec`` with every ``"host"`` value resolved, and one note per resolution."""
    resolved, notes = {}, []
    for key, value in spec.items():
        if isinstance(value, dict):
            value, sub_notes = resolve_host_values(value)
            notes += sub_notes
        elif value == HOST:
            value = _host_value(key)
            notes.append(f"{key}=host resolved to {value}")
        resolved[key] = value
    return resolved, notes


def resolve(target: Target) -> tuple[tvm.target.Target, list[str]]:
    """The TVM target for ``target`` and notes on what was resolved for this host.

    A string is a TVM tag (``raspberry-pi/4b-aarch64``); CLI-style strings ("llvm -mcpu=x") are not
    accepted by TVM 0.27, so they are rejected with the reason.
    """
    spec = target.tvm_target
    if isinstance(spec, str):
        if " -" in spec or spec.startswith("-"):
            raise OptionError(
                f"target '{target.name}': tvm_target '{spec}' is a CLI target string, which TVM 0.27 rejects; "
                "use a JSON table (kind = \"llvm\", mcpu = ...) or a tag"
            )
        return tvm.target.Target(spec), []
    if not isinstance(spec, dict):
        raise OptionError(f"target '{target.name}': tvm_target must be a table or a tag string, not {spec!r}")
    resolved, notes = resolve_host_values(spec)
    return tvm.target.Target(resolved), notes


def to_json(value: Any) -> Any:
    """``Target.export()`` (tvm-ffi Map/Array/String) as plain JSON-able Python values."""
    if isinstance(value, str):  # tvm-ffi String is a str subclass
        return str(value)
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    if hasattr(value, "items"):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or hasattr(value, "__len__"):
        return [to_json(v) for v in value]
    return str(value)


def export(tvm_target: tvm.target.Target) -> dict[str, Any]:
    """The fully resolved target as a JSON dict (recorded in reports and the manifest)."""
    return to_json(tvm_target.export())


def tag_as_dict(tag: str) -> dict[str, Any]:
    """The JSON dict of TVM tag ``tag`` (so a key such as ``arch`` can be overridden).

    ``Target.export()`` also returns bookkeeping keys (``tag``, ``keys``) that the constructor
    re-derives; they are dropped. Raises OptionError for an unknown tag.
    """
    if tag not in tvm.target.list_tags():
        raise OptionError(f"unknown TVM target tag '{tag}'")
    exported = export(tvm.target.Target(tag))

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in ("tag", "keys")}
        return value

    return clean(exported)
