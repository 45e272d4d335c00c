"""qparams: dyadic multipliers, activation/weight/bias quantization (pure numpy, no graph)."""

from __future__ import annotations

import numpy as np
import pytest

from passes.quantize.qparams import (
    M_HIGH,
    M_LOW,
    S_MAX,
    S_MIN,
    DyadicError,
    activation_qparams,
    dyadic,
    dyadic_array,
    quantize_bias,
    quantize_weight,
    shared_shift_multipliers,
    weight_qmax,
)


def test_dyadic_accuracy_and_range_over_many_magnitudes() -> None:
    rng = np.random.default_rng(0)
    factors = np.exp(rng.uniform(np.log(2.0**-32), np.log(2.0**27), 5000))
    factors = np.concatenate([factors, [1.0, 0.5, 2.0**-33, 2.0**27, 1 - 2.0**-40]])
    for r in factors:
        m, s = dyadic(float(r))
        assert M_LOW <= m < M_HIGH and S_MIN <= s <= S_MAX
        assert abs(r - m / 2.0**s) / r < 2.0**-29


def test_dyadic_rounding_up_to_two_to_the_thirty_renormalises() -> None:
    m, s = dyadic(1 - 2.0**-40)  # f * 2^30 rounds to exactly 2^30
    assert (m, s) == (M_LOW, 29)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), 2.0**-40, 2.0**40])
def test_dyadic_rejects_unrepresentable(bad: float) -> None:
    with pytest.raises(DyadicError):
        dyadic(bad)


def test_dyadic_per_channel_matches_scalar() -> None:
    r = np.array([[1e-3], [0.3], [7.5]])
    m, s = dyadic_array(r)
    assert m.shape == s.shape == (3, 1) and m.dtype == np.int64
    assert [(int(a), int(b)) for a, b in zip(m.ravel(), s.ravel())] == [dyadic(x) for x in r.ravel()]


def test_shared_shift_keeps_the_largest_multiplier_normalised() -> None:
    (m_a, m_b), s = shared_shift_multipliers([0.75, 0.01])
    assert M_LOW <= m_a < M_HIGH
    assert abs(m_b / 2.0**s - 0.01) <= 2.0 ** -(s + 1)


def test_activation_qparams_uint8_and_int8() -> None:
    qp = activation_qparams(-1.0, 3.0)
    assert qp.dtype == "uint8" and qp.scale == np.float32(4.0 / 255)
    assert qp.quantize(0.0) == qp.zero_point == round(1.0 / qp.scale)
    assert qp.quantize(-1.0) == 0 and qp.quantize(3.0) == 255
    relu = activation_qparams(0.5, 2.0)  # widened to contain 0
    assert relu.zero_point == 0 and relu.quantize(2.0) == 255
    sym = activation_qparams(-2.0, 1.0, "int8")
    assert sym.zero_point == 0 and sym.quantize(-2.0) == -127 and sym.qmin == -127
    assert activation_qparams(0.0, 0.0).scale == 1.0


def test_weights_symmetric_per_channel_never_minus_128() -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 3, 3, 3))
    w[2] = 0.0  # a pruned filter
    q, scales = quantize_weight(w, axis=0)
    assert q.dtype == np.int8 and scales.dtype == np.float32 and scales.shape == (6,)
    assert q.min() >= -127 and q.max() <= 127
    assert np.all(np.abs(q).reshape(6, -1).max(axis=1)[[0, 1, 3, 4, 5]] == 127)
    assert np.all(q[2] == 0) and scales[2] == scales.max()
    np.testing.assert_allclose(q * scales[:, None, None, None], w, atol=float(scales.max()) / 2 + 1e-7)
    q4, s4 = quantize_weight(w.reshape(6, -1).T, axis=1, bits=4)  # [K, N] layout, channels on axis 1
    assert q4.min() >= -7 and q4.max() <= 7 and s4.shape == (6,)


def test_seven_bit_weights_reach_63_and_keep_vpmaddubsw_exact() -> None:
    """bits=7 (ORT's reduce_range): codes in [-63, 63], every live channel reaches |63|, so a pair
    of products with uint8 activations is at most 255 * 126 < 2^15 (vpmaddubsw cannot saturate)."""
    w = np.random.default_rng(4).standard_normal((5, 8, 3, 3))
    q, scales = quantize_weight(w, axis=0, bits=7)
    assert q.min() >= -63 and q.max() <= 63
    assert np.all(np.abs(q).reshape(5, -1).max(axis=1) == 63)
    assert 255 * 2 * 63 < 2**15 and weight_qmax(7) == 63
    np.testing.assert_allclose(q * scales[:, None, None, None], w, atol=float(scales.max()) / 2 + 1e-7)
    with pytest.raises(ValueError, match="8, 7 or 4"):
        weight_qmax(6)


def test_bias_rounds_to_the_accumulator_scale() -> None:
    scales = np.array([0.5, 0.25], dtype=np.float32)
    b = quantize_bias(np.array([1.3, -0.7]), 0.1, scales)
    assert b.dtype == np.int32
    assert list(b) == [round(1.3 / 0.05), round(-0.7 / 0.025)]
    with pytest.raises(ValueError, match="conv1"):
        quantize_bias(np.array([1.0]), 1e-30, np.array([1e-30]), where="conv1")


def test_narrow_dyadic_caps_the_shift_where_the_multiplier_keeps_enough_bits():
    from passes.quantize.qparams import INT32_REQUANT_SHIFT, NARROW_MIN_BITS, narrow_dyadic

    for r in (2.0**-3, 0.0123, 2.0**-9 * 1.37, 2.0**-10 * 1.01, 2.0**-14 * 1.3):
        m, s = narrow_dyadic(r)
        assert s == INT32_REQUANT_SHIFT and 1 << (NARROW_MIN_BITS - 1) <= m < 1 << 30
        assert abs(m / 2.0**s - r) / r <= 2.0**-NARROW_MIN_BITS
    # a large factor needs no cap; a tiny one would keep too few bits: the full-precision pair
    assert narrow_dyadic(300.0) == dyadic(300.0) and dyadic(300.0)[1] <= INT32_REQUANT_SHIFT
    assert narrow_dyadic(2.0**-17) == dyadic(2.0**-17)
    m, s = dyadic_array(np.array([0.0123, 2.0**-17]), narrow=True)
    assert [int(v) for v in s] == [INT32_REQUANT_SHIFT, dyadic(2.0**-17)[1]]


def test_narrow_shared_shift_keeps_the_rescale_sum_in_int32():
    from passes.quantize.qparams import NARROW_MIN_BRANCH_SHIFT

    rs = [0.7, 1.3]
    (m_a, m_b), s = shared_shift_multipliers(rs, narrow=True)
    assert NARROW_MIN_BRANCH_SHIFT <= s and 255 * (abs(m_a) + abs(m_b)) + (1 << (s - 1)) < 1 << 31
    assert s == 21  # the largest: 2^21 * (256 * 2.0 + 0.5) < 2^31 <= 2^22 * (256 * 2.0 + 0.5)
    for r, m in zip(rs, (m_a, m_b)):
        assert abs(m / 2.0**s - r) <= 2.0 ** -(s + 1)
    assert shared_shift_multipliers(rs) != ((m_a, m_b), s)  # the default keeps 30-bit multipliers
    # factors so large that the int32 sum would need a shift below the minimum: the default
    assert shared_shift_multipliers([2.0**14], narrow=True) == shared_shift_multipliers([2.0**14])
