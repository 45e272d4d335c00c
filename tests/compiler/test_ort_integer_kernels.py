"""Why the integer-only form stores weights offset-binary next to uint8 activations.

ONNX Runtime's uint8 x int8 MatMulInteger on x86 without VNNI adds pairs of products in saturating
int16 (``vpmaddubsw``), while its uint8 x uint8 kernels are exact on every CPU. These tests pin
both facts to the host (``compiler.verify.ort_u8s8_is_exact``): if ORT changes, they say so.
"""

from __future__ import annotations

import numpy as np
import pytest

from compiler.verify import ort_u8s8_is_exact, run_onnxruntime
from tests.compiler.test_reference import offset_binary, single_op

RNG = np.random.default_rng


def _worst_case_operands():
    """Every u8 pair at 255 against int8 weights at +-127: each pair of products is +-64770, past
    int16, so a saturating pairwise sum cannot be exact."""
    a = np.full((4, 64), 255, np.uint8)
    b = RNG(0).choice(np.array([-127, 127], np.int8), (64, 16))
    return a, b, a.astype(np.int64) @ b.astype(np.int64)


def test_onnxruntime_u8_x_s8_is_exact_only_where_the_host_says_so():
    a, b, expected = _worst_case_operands()
    got = run_onnxruntime(single_op("MatMulInteger", {"a": a}, np.int32, {"b": b}), {"a": a})[0]
    assert np.array_equal(got, expected) == ort_u8s8_is_exact()


@pytest.mark.parametrize("zero_point", [0, 9])
def test_onnxruntime_offset_binary_weights_are_exact_everywhere(zero_point):
    a, b, _ = _worst_case_operands()
    a = a.copy()
    a[1] = RNG(1).integers(0, 256, 64)
    consts = {"b": offset_binary(b), "az": np.array(zero_point, np.uint8), "bz": np.array(128, np.uint8)}
    got = run_onnxruntime(single_op("MatMulInteger", {"a": a}, np.int32, consts), {"a": a})[0]
    assert np.array_equal(got, (a.astype(np.int64) - zero_point) @ b.astype(np.int64))
