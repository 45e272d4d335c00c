"""CUDA targets (Jetson boards, server GPUs): build with TVM's GPU pipeline, kernels by nvcc.

Why the set-up below (shared/research/tvm-0.27.md §5): TVM compiles CUDA C to a binary only when
``libtvm_runtime_cuda.so`` is loaded, and that library needs the driver ``libcuda.so.1``, which a
build machine without a GPU lacks. TVM then *silently* ships CUDA C source only. So, when no
driver is installed, :func:`enable_device_compile` builds a stub ``libcuda.so.1`` (every ``cu*``
symbol the runtime imports, each returning CUDA_ERROR_NO_DEVICE) in a cache directory, loads it
with RTLD_GLOBAL (the dynamic loader then satisfies the runtime's ``libcuda.so.1`` dependency with
it, matching by soname), loads the runtime, and selects ``TVM_CUDA_COMPILE_MODE=nvcc``. nvcc reads
the architecture from ``Target.current()``, so compilation runs under ``with target``. The result
is a fatbin for the target's ``sm_XX`` inside the exported library; :mod:`targets.lowering.cross`
reads the arch back from the file.

Without nvcc the library carries CUDA source only, and the notes say so.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import tvm
from tvm import tirx

from targets.lowering import schedules
from targets.lowering.build import BuildOutput, prepare
from targets.lowering.errors import lowering_step

GPU_RULE = "dlight-gpu"
"""Name reported for kernels scheduled by TVM's default GPU pipeline (dlight rules)."""

_STUB_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgekiln" / "cuda-stub"


def find_nvcc() -> str | None:
    """Path of nvcc: on PATH, else under $CUDA_HOME / /usr/local/cuda."""
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    return None


def _runtime_dir() -> Path:
    from tvm.base import _LOADED_LIBS

    return Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent


def _build_stub(runtime_lib: Path) -> Path:
    """A ``libcuda.so.1`` defining every driver symbol ``runtime_lib`` imports (cached by mtime)."""
    stub = _STUB_DIR / "libcuda.so.1"
    if stub.is_file() and stub.stat().st_mtime >= runtime_lib.stat().st_mtime:
        return stub
    _STUB_DIR.mkdir(parents=True, exist_ok=True)
    nm = subprocess.run(["nm", "-D", "--undefined-only", str(runtime_lib)], capture_output=True, text=True, check=True)
    names = sorted({s.split("@")[0] for s in nm.stdout.split() if s.startswith("cu") and s[2:3].isupper()})
    source = _STUB_DIR / "stub.c"
    # 100 = CUDA_ERROR_NO_DEVICE: any driver call made at run time fails cleanly.
    source.write_text("".join(f"int {name}(void) {{ return 100; }}\n" for name in names))
    tmp = _STUB_DIR / f".libcuda.{os.getpid()}.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(tmp), str(source)],
                   capture_output=True, text=True, check=True)
    tmp.replace(stub)
    return stub


def enable_device_compile() -> tuple[bool, str]:
    """Load TVM's CUDA runtime (with a stub driver if needed). Returns (loaded, note)."""
    from tvm.base import _LOADED_LIBS
    from tvm_ffi.libinfo import load_lib_ctypes

    if "tvm_runtime_cuda" in _LOADED_LIBS:
        return True, "TVM CUDA runtime already loaded"
    note = "CUDA driver found"
    try:
        ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
    except OSError:
        runtime_lib = _runtime_dir() / "libtvm_runtime_cuda.so"
        if not runtime_lib.is_file():
            return False, "this TVM build has no libtvm_runtime_cuda.so"
        try:
            stub = _build_stub(runtime_lib)
        except (OSError, subprocess.CalledProcessError) as exc:
            return False, f"cannot build a stub libcuda.so.1 ({exc})"
        ctypes.CDLL(str(stub), mode=ctypes.RTLD_GLOBAL)
        note = "no CUDA driver here: TVM's CUDA runtime loaded against a stub libcuda.so.1 (compile only)"
    try:
        _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(
            package="tvm", target_name="tvm_runtime_cuda", extra_lib_paths=[_runtime_dir()], mode="RTLD_LOCAL"
        )
    except (OSError, RuntimeError, FileNotFoundError) as exc:
        return False, f"cannot load TVM's CUDA runtime ({exc})"
    return True, note


@contextlib.contextmanager
def _compile_mode(mode: str) -> Iterator[None]:
    """Set TVM_CUDA_COMPILE_MODE for the block (TVM's compile callback reads it per call)."""
    old = os.environ.get("TVM_CUDA_COMPILE_MODE")
    os.environ["TVM_CUDA_COMPILE_MODE"] = mode
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TVM_CUDA_COMPILE_MODE", None)
        else:
            os.environ["TVM_CUDA_COMPILE_MODE"] = old


def build(mod: tvm.IRModule, tvm_target: tvm.target.Target) -> tuple[BuildOutput, list[str]]:
    """Compile ``mod`` for a CUDA ``tvm_target``; returns the build and notes on how kernels were built.

    The CPU schedule rules are not used: TVM's default CUDA pipeline schedules every kernel with
    its dlight GPU rules (thread binding is required on a GPU, so nothing stays unscheduled).
    """
    start = time.perf_counter()
    notes: list[str] = []
    mod = prepare(mod, tvm_target)
    report = schedules.ScheduleReport()
    for gvar, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc):
            report.scheduled[gvar.name_hint] = GPU_RULE
    arch = str(tvm_target.attrs.get("arch", ""))
    nvcc = find_nvcc()
    mode = None
    if nvcc is None:
        notes.append(f"nvcc not found: CUDA kernels for {arch} are shipped as CUDA C source only "
                     "(install the CUDA toolkit, or put nvcc on PATH, for a compiled fatbin)")
    else:
        loaded, how = enable_device_compile()
        if loaded:
            mode = "nvcc"
            notes.append(f"CUDA kernels compiled by {nvcc} for {arch}; {how}")
        else:
            notes.append(f"CUDA kernels shipped as source only: {how}")
    with tvm_target, lowering_step("compile (CUDA)"):
        with _compile_mode(mode) if mode else contextlib.nullcontext():
            executable = tvm.compile(mod, target=tvm_target)
    return BuildOutput(executable, report, time.perf_counter() - start), notes


def relax_vm_module_names(executable: tvm.runtime.Executable) -> list[str]:
    """Kinds of the modules inside ``executable`` (``relax.VMExecutable``, ``llvm``, ``cuda``)."""
    out: list[str] = []

    def walk(module) -> None:
        out.append(str(module.kind))
        for child in module.imports:
            walk(child)

    walk(executable.mod)
    return out


__all__ = ["GPU_RULE", "build", "enable_device_compile", "find_nvcc", "relax_vm_module_names"]
