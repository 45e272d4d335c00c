"""What machine a benchmark ran on: CPU model, core count and the SIMD/dot-product features used."""

from __future__ import annotations

import os
import platform

#: Flags from /proc/cpuinfo that decide which kernels can be fast.
FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm", "sve")


def describe() -> dict:
    """CPU model, logical cores and the int8/fp32 vector features this machine has."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key in ("flags", "Features"):
                    flags.update(value.split())
    except OSError:
        pass
    try:  # "AMD EPYC" names Zen 3 and Zen 4 alike; LLVM's CPU name tells them apart
        from tvm.target import codegen

        llvm_cpu = str(codegen.llvm_get_system_cpu())
    except Exception:  # noqa: BLE001 - no TVM: the model name and the features must do
        llvm_cpu = None
    return {
        "cpu": model,
        "llvm_cpu": llvm_cpu,
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "features": {name: name in flags for name in FEATURES},
        "python": platform.python_version(),
    }


def same_machine(a: dict, b: dict) -> bool:
    """True if two ``describe()`` results are the same kind of machine: CPU model name, vector
    features, and LLVM's CPU name where both recorded it (older results did not)."""
    if a.get("cpu") != b.get("cpu") or a.get("features") != b.get("features"):
        return False
    return a.get("llvm_cpu") is None or b.get("llvm_cpu") is None or a["llvm_cpu"] == b["llvm_cpu"]
