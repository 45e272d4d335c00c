"""The kernels of a built model, for timing them one by one on a device (per-layer measurement).

TVM 0.27 has no Relax VM profiler, and the VM's instrument hook takes a Python callback, which
cannot run on a board behind TVM RPC. So a board's per-kernel times are taken the way
MetaSchedule's RPC runner takes them: each compiled kernel is called in isolation by the remote
``time_evaluator`` with arguments of its signature. That needs, besides the model's library:

- :func:`kernel_calls`: the kernels ``main`` calls, in execution order (read from the VM bytecode,
  so a reshape that ``tvm.compile`` turned into ``vm.builtin.reshape`` is not counted), each with
  the shapes and dtypes of its arguments (inputs then outputs: the destination-passing signature
  of the PrimFunc after scheduling and weight pre-packing, which is what ``tvm.compile`` turns
  into code). A PrimFunc with symbolic shapes is left out (it has no single shape to time).
- :func:`export_kernels`: the kernels as a plain shared library. A model library's kernels are an
  import of the VM executable, which RPC clients cannot reach (``time_evaluator`` looks a name up
  in the module itself and then in the global registry); a library of the kernels alone exposes
  them by name.
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path

import tvm

from targets.lowering.errors import lowering_step


@dataclasses.dataclass(frozen=True)
class KernelCall:
    """One call of a compiled kernel: its symbol and its arguments' ``(shape, dtype)``."""

    name: str
    args: tuple[tuple[tuple[int, ...], str], ...]


def _signature(func) -> tuple[tuple[tuple[int, ...], str], ...] | None:
    """``(shape, dtype)`` of every tensor parameter of a PrimFunc (in TVM 0.27 a parameter is a
    buffer variable with ``shape`` and ``dtype``); None when one is a scalar (a symbolic shape
    variable) or has a symbolic dimension."""
    from tvm import tirx

    args = []
    for param in func.params:
        shape = getattr(param, "shape", None)
        if shape is None:
            return None
        dims = []
        for dim in shape:
            if not isinstance(dim, tirx.IntImm):
                return None
            dims.append(int(dim.value))
        args.append((tuple(dims), str(param.dtype)))
    return tuple(args)


_CALL = re.compile(r"^\s*call\s+(\S+)\s+in:")


def vm_call_sequence(executable, entry: str = "main") -> list[str]:
    """The functions ``entry`` calls, in order, read from the VM bytecode (``VMExecutable.as_text``:
    one ``call <name> in: ... dst: ...`` line per call instruction; the exact execution order)."""
    from tvm import relax

    text = relax.VMExecutable(executable.mod).as_text()
    names, inside = [], False
    for line in text.splitlines():
        if line.startswith("@"):
            inside = line.strip() == f"@{entry}:"
            continue
        match = _CALL.match(line) if inside else None
        if match:
            names.append(match.group(1))
    return names


def kernel_calls(mod: tvm.IRModule, executable, entry: str = "main") -> list[KernelCall]:
    """The kernels ``entry`` calls in the compiled ``executable``, in execution order, with the
    argument signatures of their PrimFuncs in ``mod`` (the scheduled module it was compiled from).

    VM builtins (``vm.builtin.reshape`` replaces a reshape kernel) are not kernels; a PrimFunc with
    symbolic shapes has no single signature and is left out.
    """
    from tvm import tirx

    signatures = {gvar.name_hint: _signature(func) for gvar, func in mod.functions_items()
                  if isinstance(func, tirx.PrimFunc)}
    return [KernelCall(name, signatures[name]) for name in vm_call_sequence(executable, entry)
            if signatures.get(name) is not None]


def export_kernels(executable, path: Path, cross_compiler: str | None = None) -> float:
    """Write the executable's kernel module alone as a shared library; returns the seconds taken."""
    start = time.perf_counter()
    library = executable.mod.imports[0]
    with lowering_step("export of the kernel library", path.name):
        if cross_compiler:
            from tvm.support import cc

            library.export_library(str(path), fcompile=cc.cross_compiler(cross_compiler))
        else:
            library.export_library(str(path))
    return time.perf_counter() - start
