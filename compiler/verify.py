"""Numeric checks against ONNX Runtime, with the one tolerance table the project uses.

``run_onnxruntime`` runs a model with graph optimizations disabled (so we test our transforms, not
ORT's fusions). ``compare`` measures two output lists and decides pass/fail by a tolerance policy:

    EXACT         max |a - b| == 0
    FP32_REWRITE  |a - b| <= atol + rtol * |b|,  rtol = 1e-5, atol = 1e-5 * max(1, max|b|)
    TVM_BACKEND   same formula with rtol = 1e-4 (different accumulation order and fast-math in
                  LLVM's vectorized reductions; measured errors on the test models are ~1e-6)
    LOSSY         never fails; reported as an accuracy budget, not an equivalence
"""

from __future__ import annotations

import dataclasses
import functools
import platform
from collections.abc import Sequence
from typing import Any

import numpy as np

from compiler.ir import Model, to_proto
from compiler.pass_base import Tolerance


@dataclasses.dataclass(frozen=True)
class TolerancePolicy:
    name: str
    rtol: float
    atol_scale: float  # atol = atol_scale * max(1, max|reference|)
    exact: bool = False
    lossy: bool = False


TOLERANCES: dict[str, TolerancePolicy] = {
    "exact": TolerancePolicy("exact", 0.0, 0.0, exact=True),
    "fp32-rewrite": TolerancePolicy("fp32-rewrite", 1e-5, 1e-5),
    "tvm-backend": TolerancePolicy("tvm-backend", 1e-4, 1e-4),
    "lossy": TolerancePolicy("lossy", 0.0, 0.0, lossy=True),
}


def policy_for(tolerance: Tolerance | str) -> TolerancePolicy:
    key = tolerance.value if isinstance(tolerance, Tolerance) else tolerance
    return TOLERANCES[key]


@functools.cache
def ort_u8s8_is_exact() -> bool:
    """Whether ONNX Runtime's uint8 x int8 ConvInteger/MatMulInteger is exact on this host.

    On x86 without VNNI, ONNX Runtime's u8 x s8 GEMM uses AVX2 ``vpmaddubsw``, which adds each
    pair of u8 * s8 products in int16 with saturation (|255 * 127 * 2| > 2^15), so results differ
    from the integer math (measured on Zen 3: ~6% of a 64x256x64 product's outputs). With
    AVX-512 VNNI / AVX-VNNI (``vpdpbusd``, int32 sums) and on non-x86 CPUs it is exact. u8 x u8,
    s8 x s8 and s8 x u8 are exact everywhere, which is why the integer-only form stores weights
    next to uint8 activations as offset-binary uint8 (passes/quantize/__init__.py).
    """
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def ort_session(model: Model | Any, optimize: bool = False, threads: int = 0):
    """An ONNX Runtime CPU session for an IR model or ModelProto (optimizations off by default)."""
    import onnxruntime as ort

    proto = to_proto(model) if isinstance(model, Model) else model
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run_onnxruntime(model: Model | Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of ``model`` on ``feeds`` in graph order, like ``InferenceSession.run(None, feeds)``."""
    return ort_session(model).run(None, feeds)


def compare(
    actual: Sequence[np.ndarray], expected: Sequence[np.ndarray], policy: TolerancePolicy | str
) -> dict[str, Any]:
    """Compare output lists; returns ``{"policy", "max_abs", "max_rel", "cosine", "passed"}``.

    ``cosine`` is over all outputs flattened together; ``max_rel`` is max |a-b| / max(1, |b|).
    """
    if isinstance(policy, str):
        policy = TOLERANCES[policy]
    if len(actual) != len(expected):
        return {"policy": policy.name, "passed": False, "reason": f"{len(actual)} outputs vs {len(expected)}"}
    max_abs, max_rel, passed = 0.0, 0.0, True
    dots = norm_a = norm_b = 0.0
    for a, b in zip(actual, expected):
        a = np.asarray(a)
        b = np.asarray(b)
        if a.shape != b.shape:
            return {"policy": policy.name, "passed": False, "reason": f"shape {a.shape} vs {b.shape}"}
        if a.size == 0:
            continue
        af, bf = a.astype(np.float64), b.astype(np.float64)
        diff = np.abs(af - bf)
        max_abs = max(max_abs, float(diff.max()))
        max_rel = max(max_rel, float(diff.max() / max(1.0, float(np.abs(bf).max()))))
        dots += float((af * bf).sum())
        norm_a += float((af * af).sum())
        norm_b += float((bf * bf).sum())
        if policy.exact:
            passed &= bool(np.array_equal(a, b))
        elif not policy.lossy:
            atol = policy.atol_scale * max(1.0, float(np.abs(bf).max()))
            passed &= bool(np.all(diff <= atol + policy.rtol * np.abs(bf)))
    cosine = dots / np.sqrt(norm_a * norm_b) if norm_a > 0 and norm_b > 0 else float(norm_a == norm_b)
    return {
        "policy": policy.name,
        "max_abs": max_abs,
        "max_rel": max_rel,
        "cosine": float(cosine),
        "passed": bool(passed),
    }


def random_feeds(model: Model, input_shapes: dict[str, Sequence[int]] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random inputs for every graph input (floats ~N(0,1); integers non-zero in [1, 10)).

    Symbolic dims must be given in ``input_shapes``.
    """
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for value in model.graph.inputs:
        if value.is_initializer():
            continue
        shape = tuple(input_shapes[value.name]) if input_shapes and value.name in input_shapes else None
        if shape is None:
            dims = list(value.shape) if value.shape is not None else []
            if not all(isinstance(d, int) for d in dims):
                raise ValueError(f"input '{value.name}' has symbolic dims {dims}; give its shape")
            shape = tuple(dims)
        dtype = value.dtype.numpy()
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[value.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[value.name] = rng.integers(1, 10, shape).astype(dtype)
    return feeds
