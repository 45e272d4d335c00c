"""factorize-gemm: exact at full rank, Eckart-Young at rank k, data-aware beats plain, auto obeys the cost model."""

from __future__ import annotations

import numpy as np
import pytest

import passes.lowrank  # noqa: F401  (registers the passes; passes/__init__ does not import it yet)
from compiler.context import CompileContext
from compiler.ir import constant_array, copy_model
from compiler.verify import random_feeds, run_onnxruntime
from passes.lowrank.decompose import svd_spectrum
from passes.lowrank.gemm import FactorizeGemmPass
from targets.cost_model import RooflineCostModel
from targets.registry import get_target
from tests.helpers import OPSET, FACT_CHECKS, assert_same_outputs, count, facts_holding, model_from_text, op_types
from tests.tolerances import FP32_REWRITE, LOWRANK_EY_RTOL, LOWRANK_ERROR_FORMULA_RTOL

K, N, BATCH = 24, 16, 32


def _gemm_model(trans_a: int = 0):
    a_shape = f"[{K},{BATCH}]" if trans_a else f"[{BATCH},{K}]"
    return model_from_text(
        OPSET
        + f"""
        g (float{a_shape} x) => (float[{BATCH},{N}] y) {{
            y = Gemm <transA={trans_a}, transB=1, alpha=0.5, beta=2.0> (x, w, c)
        }}
        """,
        w=(N, K), c=(N,),
    )


def _matmul_model(weight: np.ndarray, rows: int = BATCH):
    k, n = weight.shape
    return model_from_text(
        OPSET + f"g (float[2,{rows},{k}] x) => (float[2,{rows},{n}] y) {{ y = MatMul (x, w) }}",
        w=weight.astype(np.float32),
    )


def _product(model) -> np.ndarray:
    """U @ V of a factorized layer, read back from the graph's initializers (float64)."""
    u = next(constant_array(n.inputs[1]) for n in model.graph if n.name.endswith("_lowrank_u"))
    v = next(constant_array(n.inputs[1]) for n in model.graph if n.inputs[1].name.endswith("_lowrank_v"))
    return u.astype(np.float64) @ v.astype(np.float64)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("trans_a", [0, 1])
def test_full_rank_gemm_equals_original_and_keeps_facts(trans_a: int) -> None:
    model = _gemm_model(trans_a)
    before, facts = copy_model(model), facts_holding(model)
    result = FactorizeGemmPass(rank=min(K, N))(model, CompileContext())
    assert result.modified and result.stats["ranks"] == {"Gemm_0": min(K, N)}
    # transA=1 keeps a Gemm<transA=1> as first factor; the second Gemm carries C and beta.
    assert op_types(model) == ["Gemm" if trans_a else "MatMul", "Gemm"]
    gemm = model.graph.node(1)
    assert gemm.attributes["beta"].as_float() == 2.0 and "alpha" not in gemm.attributes and "transB" not in gemm.attributes
    assert "w" not in model.graph.initializers  # the replaced weight is deleted
    assert_same_outputs(before, model, random_feeds(model), FP32_REWRITE)
    for fact in facts & FactorizeGemmPass.preserves:
        assert FACT_CHECKS[fact](model) == [], fact


def test_rank_k_obeys_eckart_young_and_the_output_bound() -> None:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((K, N))
    model = _matmul_model(weight)
    before = copy_model(model)
    rank = 5
    FactorizeGemmPass(rank=rank)(model, CompileContext())
    assert count(model, "MatMul") == 2
    w32 = weight.astype(np.float32).astype(np.float64)
    sigma = np.linalg.svd(w32, compute_uv=False)
    eckart_young = np.sqrt(np.sum(sigma[rank:] ** 2) / np.sum(sigma**2))
    assert _rel(_product(model), w32) == pytest.approx(eckart_young, rel=LOWRANK_EY_RTOL)

    # ||X (W - W_r)||_F <= ||X||_2 ||W - W_r||_F: the relative output error is bounded by
    # ||X||_2 * eckart_young * ||W||_F / ||X W||_F on any input.
    feeds = random_feeds(model, seed=3)
    x = feeds["x"].reshape(-1, K).astype(np.float64)
    y_hat = run_onnxruntime(model, feeds)[0].reshape(-1, N)
    y = run_onnxruntime(before, feeds)[0].reshape(-1, N)
    bound = np.linalg.norm(x, 2) * eckart_young * np.linalg.norm(w32) / np.linalg.norm(x @ w32)
    measured = _rel(y_hat, y)
    assert 0 < measured <= bound


def _correlated_feeds(rows: int, seed: int) -> dict[str, np.ndarray]:
    """Inputs living near a 4-dimensional subspace of R^K (pixels of one image are correlated)."""
    mix = np.random.default_rng(1234).standard_normal((4, K))  # the same subspace for every batch
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((2, rows, 4))
    noise = 0.05 * rng.standard_normal((2, rows, K))
    return {"x": (latent @ mix + noise).astype(np.float32)}


def test_data_aware_has_lower_output_error_than_plain_svd_and_the_formula_is_exact() -> None:
    weight = np.random.default_rng(1).standard_normal((K, N))
    calibration = [_correlated_feeds(BATCH, seed) for seed in range(4)]
    held_out = _correlated_feeds(BATCH, 99)
    reference = run_onnxruntime(_matmul_model(weight), held_out)[0]
    errors, notes = {}, {}
    for aware in (False, True):
        model = _matmul_model(weight)
        result = FactorizeGemmPass(rank=4, data_aware=aware)(model, CompileContext(calibration=calibration))
        errors[aware] = _rel(run_onnxruntime(model, held_out)[0], reference)
        notes[aware] = result.notes[0]
    assert "(data-aware)" in notes[True] and "rel. output error" in notes[True]
    assert errors[True] < errors[False]

    # The closed-form per-rank output error equals the error measured on the calibration data.
    x = np.concatenate([c["x"].reshape(-1, K) for c in calibration]).astype(np.float64)
    w32 = weight.astype(np.float32).astype(np.float64)
    spectrum = svd_spectrum(w32.T, x.T @ x, data_aware=True)
    a, b = spectrum.factors(4)
    measured = _rel(x @ (a @ b).T, x @ w32)
    assert spectrum.errors[4] == pytest.approx(measured, rel=LOWRANK_ERROR_FORMULA_RTOL)


def _cpu_context(feeds) -> CompileContext:
    target = get_target("cpu")
    return CompileContext(target=target, cost_model=RooflineCostModel(target), calibration=[feeds])


def test_auto_factorizes_a_big_square_gemm_and_rounds_to_the_channel_multiple() -> None:
    rng = np.random.default_rng(2)
    size, true_rank = 256, 20
    weight = rng.standard_normal((size, true_rank)) @ rng.standard_normal((true_rank, size)) / np.sqrt(size)
    weight += 1e-3 * rng.standard_normal((size, size))  # full rank, but 20 directions carry the energy
    model = model_from_text(
        OPSET + f"g (float[64,{size}] x) => (float[64,{size}] y) {{ y = Gemm (x, w, c) }}",
        w=weight.astype(np.float32), c=(size,),
    )
    before = copy_model(model)
    feeds = random_feeds(model)
    ctx = _cpu_context(feeds)
    result = FactorizeGemmPass()(model, ctx)
    rank = result.stats["ranks"]["Gemm_0"]
    assert rank % ctx.target.channel_multiple == 0 and true_rank <= rank < size // 2
    assert "ms estimated" in result.notes[0] and "rel. output error" in result.notes[0]
    error = _rel(run_onnxruntime(model, feeds)[0], run_onnxruntime(before, feeds)[0])
    assert error <= FactorizeGemmPass.max_error
    assert ctx.cost_model.estimate(model).seconds < ctx.cost_model.estimate(before).seconds


def test_auto_leaves_a_small_skinny_gemm_dense_even_below_break_even() -> None:
    """Rank 2 of a 64x8 weight is below break-even (64*8/72 ~ 7.1), but an extra kernel costs more."""
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((64, 2)) @ rng.standard_normal((2, 8))  # exactly rank 2
    model = _matmul_model(weight, rows=4)
    feeds = random_feeds(model)
    result = FactorizeGemmPass()(model, _cpu_context(feeds))
    assert not result.modified and op_types(model) == ["MatMul"]
    assert "left dense: factorized estimate" in result.notes[0] and ">= dense" in result.notes[0]


def test_energy_rank_and_unsupported_patterns_leave_notes_not_crashes() -> None:
    model = model_from_text(
        OPSET
        + """
        g (float[4,8] x, float[8,6] wx) => (float[4,6] y, float[8,8] z, float[4,6] e) {
            y = MatMul (x, wx)
            x2 = Transpose <perm=[1,0]> (x)
            z = MatMul (w_left, x2)
            e = MatMul (x, w)
        }
        """,
        w_left=(8, 4), w=(8, 6),
    )
    result = FactorizeGemmPass(energy=0.5)(model, CompileContext())
    assert any("not a constant initializer" in n for n in result.notes)
    assert any("left operand" in n for n in result.notes)
    # 8x6: break-even 3.4; keeping half the energy of a random matrix needs fewer ranks than that.
    assert result.stats["factorized"] == 1 and result.stats["params_after"] < result.stats["params_before"]
