"""MetaSchedule helpers that must be importable by name in builder worker processes.

Why this module exists (shared/research/tvm-0.27.md, blocker B3): MetaSchedule's ``LocalBuilder``
runs ``import tvm.s_tir.tensor_intrin`` in every fresh worker, and it creates fresh workers for
every batch of candidates. That package registers the tensor intrinsics of every backend (CUDA
alone takes ~18 s to import here), ~30 s in all, so with the default 30 s builder timeout every
candidate fails with ``LocalBuilder: Timeout``. Registering only the CPU intrinsics takes ~4 s.

:func:`fast_tensor_intrin` installs an empty ``tvm.s_tir.tensor_intrin`` package module (so the
builder's ``import tvm.s_tir.tensor_intrin`` is a no-op) and imports only the x86 (and optionally
the ARM) submodules. It is called in the tuning process before any ``TuneContext`` is created and,
as the builder's ``initializer``, in every worker. cloudpickle sends the initializer *by
reference* (module + name), which is why it lives in an importable module and not in a closure.

This module imports nothing from the rest of edgekiln, so a worker only pays for ``import tvm``
(plus the ``targets.lowering`` package ``__init__``).
"""

from __future__ import annotations

import importlib
import os
import sys
import types

_PACKAGE = "tvm.s_tir.tensor_intrin"


def fast_tensor_intrin(arm: bool = False) -> None:
    """Register only the x86 (and, with ``arm``, the ARM) tensor intrinsics of TVM.

    Idempotent. If the real ``tvm.s_tir.tensor_intrin`` package was already imported (all
    intrinsics registered), nothing is done. Submodules of other backends stay importable by
    their full name (``tvm.s_tir.tensor_intrin.cuda``) because the stub keeps the package path;
    only names re-exported by the real package ``__init__`` are missing from the stub.
    """
    if _PACKAGE not in sys.modules:
        import tvm.s_tir

        pkgdir = os.path.join(os.path.dirname(tvm.s_tir.__file__), "tensor_intrin")
        stub = types.ModuleType(_PACKAGE)
        stub.__path__ = [pkgdir]
        stub.__package__ = _PACKAGE
        sys.modules[_PACKAGE] = stub
        tvm.s_tir.tensor_intrin = stub
    # x86: dot_16x4_vnni / dot_16x4_avx512 etc. MetaSchedule picks the VNNI rule set for mcpus that
    # have it (znver4, cascadelake...) and fails with "TensorIntrin 'dot_16x4_vnni' is not
    # registered" without them. Importing an already-imported submodule is free.
    importlib.import_module(f"{_PACKAGE}.x86")
    if arm:
        importlib.import_module(f"{_PACKAGE}.arm_cpu")


def fast_tensor_intrin_arm() -> None:
    """Builder initializer for ARM targets (``initializer`` takes no arguments)."""
    fast_tensor_intrin(arm=True)
