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
    return {
        "cpu": model,
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "features": {name: name in flags for name in FEATURES},
        "python": platform.python_version(),
    }
