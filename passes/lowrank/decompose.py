"""The linear algebra of the low-rank passes: truncated SVD (plain and data-aware) and Tucker-2.

Pure numpy/scipy, no IR: the passes in :mod:`passes.lowrank.gemm` and :mod:`passes.lowrank.conv`
turn these factors into nodes. Everything is computed in float64; callers cast the factors back to
the weight's dtype.

Conventions
-----------
A layer is a matrix ``W`` of shape ``[out, in]`` acting as ``y = W x`` (a Gemm weight ``B [K, N]``
is passed as ``B^T``; a Conv weight ``[M, C, k1..kn]`` as its ``[M, C*k1*..*kn]`` reshape acting on
im2col patches). ``G = sum_x x x^T`` (``[in, in]``) is the Gram matrix of the layer's inputs over the
calibration data (the uncentred second moment: the output error ``(W - W') x`` has no bias term, so
the mean is not removed). ``G = None`` means "no data": errors are then weight errors (``G = I``).

Relative output error of an approximation ``W'`` (what ``max_error`` budgets)::

    e(W') = ||(W - W') X||_F / ||W X||_F = sqrt(tr(D G D^T) / tr(W G W^T)),   D = W - W'

Truncated SVD (Eckart-Young)
----------------------------
``W = P S Q^T``; keeping the ``r`` largest singular values gives the best rank-``r`` approximation
in Frobenius norm, with ``||W - W_r||_F^2 = sum_{i>r} s_i^2``. The factors are balanced,
``A = P_r sqrt(S_r)`` (``[out, r]``) and ``B = sqrt(S_r) Q_r^T`` (``[r, in]``), so both halves have
the same dynamic range (which later quantization prefers).

Data-aware SVD (whitening by the input Gram)
--------------------------------------------
What matters is the output error ``||(W - W') X||_F``, not the weight error. With ``G = L L^T``
(Cholesky)::

    ||(W - W') X||_F^2 = tr((W - W') G (W - W')^T) = ||(W - W') L||_F^2 = ||M - M'||_F^2,
    M = W L,  M' = W' L.

So the best rank-``r`` ``W'`` for the *output* is ``W' = M_r L^{-1}``, with ``M_r`` the truncated
SVD of ``M = P S Q^T`` (Eckart-Young applied to ``M``): ``A = P_r sqrt(S_r)``,
``B = sqrt(S_r) Q_r^T L^{-1}`` (computed with a triangular solve, never an explicit inverse), and
the output error is ``sqrt(sum_{i>r} s_i(M)^2)``. ``G`` is regularized as ``G + lambda I`` with
``lambda = RIDGE * mean(diag G)`` so that input directions the calibration data never excites (dead
pixels, padding) keep a small weight-error penalty instead of an arbitrary value. At full rank
``W' = W`` exactly, whatever ``lambda``.

Per-rank errors in closed form: with ``b_i`` the i-th row direction of ``B`` before scaling
(``q_i`` for plain SVD, ``L^{-T} q_i`` when whitened), ``W - W_r = sum_{i>r} s_i p_i b_i^T`` and,
``p_i`` being orthonormal, ``||(W - W_r) X||_F^2 = sum_{i>r} s_i^2 b_i^T G b_i``.

Tucker-2 (HOSVD on the two channel modes of a conv kernel)
----------------------------------------------------------
``W [M, C, k..] ~ K x_0 U_out x_1 U_in`` with ``U_out`` (``[M, r2]``) the leading left singular
vectors of the mode-0 unfolding ``W_(0) = W.reshape(M, -1)``, ``U_in`` (``[C, r1]``) those of the
mode-1 unfolding, and the core ``K = W x_0 U_out^T x_1 U_in^T`` (``[r2, r1, k..]``). As a network:
1x1 conv ``C -> r1`` with ``U_in^T``, kxk conv ``r1 -> r2`` with ``K``, 1x1 conv ``r2 -> M`` with
``U_out``. The approximation is the orthogonal projection of ``W`` onto ``span(U_out) (x)
span(U_in)``, hence ``||W - W'||_F^2 = ||W||_F^2 - ||K||_F^2`` and the HOSVD bound
``||W - W'||_F^2 <= sum_{i>r2} s_i(W_(0))^2 + sum_{j>r1} s_j(W_(1))^2``. With full orthonormal
bases the rotated kernel ``W~ = W x_0 U_out^T x_1 U_in^T`` and rotated Gram ``G~ = (U_in (x) I)^T G
(U_in (x) I)`` give the output error of every ``(r1, r2)`` at once: the approximation keeps the
block ``rows < r2, input channels < r1`` of ``W~``, and ``tr(D G~ D^T)`` expands into cumulative
sums (:func:`tucker2_error_table`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.linalg

__all__ = [
    "RIDGE",
    "MatrixSpectrum",
    "Tucker2",
    "energy_rank",
    "relative_output_error",
    "svd_spectrum",
    "tucker2",
]

#: Ridge added to the Gram before whitening, as a fraction of its mean diagonal. Small enough that
#: the data term dominates wherever the calibration data has energy; large enough that the Cholesky
#: factor is well conditioned when some inputs are constant zero (measured: digits' dead pixels).
RIDGE = 1e-4


def relative_output_error(weight: np.ndarray, approx: np.ndarray, gram: np.ndarray | None) -> float:
    """``sqrt(tr(D G D^T) / tr(W G W^T))`` with ``D = W - W'`` (weight error when ``gram`` is None)."""
    w = np.asarray(weight, np.float64)
    d = w - np.asarray(approx, np.float64)
    if gram is None:
        num, den = float(np.sum(d * d)), float(np.sum(w * w))
    else:
        num, den = float(np.sum((d @ gram) * d)), float(np.sum((w @ gram) * w))
    return float(np.sqrt(max(num, 0.0) / den)) if den > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class MatrixSpectrum:
    """A full SVD of a layer matrix ``[out, in]``, ready to be truncated at any rank.

    Attributes:
        left: ``P`` (``[out, n]``, orthonormal columns), ``n = min(out, in)``.
        sigma: singular values ``s_1 >= ... >= s_n`` of the matrix that was truncated (``W``, or
            ``W L`` when whitened).
        right: ``[n, in]``; row i is ``b_i`` (``q_i^T``, or ``(L^{-T} q_i)^T`` when whitened).
        errors: ``errors[r]`` is the relative output error (weight error without a Gram) of the
            rank-``r`` truncation, for ``r = 0..n`` (``errors[n] == 0``).
        data_aware: whether the factorization was whitened by the input Gram.
    """

    left: np.ndarray
    sigma: np.ndarray
    right: np.ndarray
    errors: np.ndarray
    data_aware: bool

    @property
    def full_rank(self) -> int:
        return int(self.sigma.size)

    def factors(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """Balanced factors ``A [out, r]``, ``B [r, in]`` with ``A @ B`` the rank-``r`` truncation."""
        r = int(rank)
        if not 1 <= r <= self.full_rank:
            raise ValueError(f"rank {r} outside 1..{self.full_rank}")
        root = np.sqrt(self.sigma[:r])
        return self.left[:, :r] * root[None, :], root[:, None] * self.right[:r]

    def energy_rank(self, energy: float) -> int:
        """Smallest ``r >= 1`` with ``sum_{i<=r} s_i^2 >= energy * sum_i s_i^2``."""
        return energy_rank(self.sigma, energy)


def energy_rank(sigma: np.ndarray, energy: float) -> int:
    """Smallest ``r >= 1`` whose leading singular values keep ``energy`` of ``sum s_i^2``."""
    power = np.asarray(sigma, np.float64) ** 2
    total = float(power.sum())
    if total <= 0:
        return 1
    kept = np.cumsum(power) / total
    # The tolerance absorbs the rounding of cumsum so that energy=1.0 means full rank, not n+1.
    return int(min(np.searchsorted(kept, energy - 1e-12) + 1, power.size))


def _whitening(gram: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor ``L`` of ``G + lambda I`` (``lambda = RIDGE * mean(diag G)``)."""
    g = np.asarray(gram, np.float64)
    g = 0.5 * (g + g.T)  # accumulated in float: restore exact symmetry before Cholesky
    scale = float(np.mean(np.diag(g))) if g.size else 0.0
    ridge = RIDGE * scale if scale > 0 else 1.0
    return np.linalg.cholesky(g + ridge * np.eye(g.shape[0]))


def svd_spectrum(weight: np.ndarray, gram: np.ndarray | None = None, data_aware: bool = False) -> MatrixSpectrum:
    """Full (thin) SVD of ``weight [out, in]``, plain or whitened, with the error of every rank.

    Args:
        weight: the layer matrix in ``[out, in]`` layout.
        gram: input Gram ``[in, in]`` on calibration data; errors are measured on outputs when given.
        data_aware: whiten by ``gram`` (needs ``gram``) so the truncation minimises output error.
    """
    w = np.asarray(weight, np.float64)
    if data_aware:
        if gram is None:
            raise ValueError("the data-aware SVD needs the input Gram matrix")
        chol = _whitening(gram)
        p, s, qt = np.linalg.svd(w @ chol, full_matrices=False)
        # b_i = L^{-T} q_i for every i at once: solve L^T X = Q (upper triangular).
        right = scipy.linalg.solve_triangular(chol.T, qt.T, lower=False).T
    else:
        p, s, right = np.linalg.svd(w, full_matrices=False)
    if gram is None:
        contrib = s**2
        total = float(np.sum(w * w))
    else:
        g = np.asarray(gram, np.float64)
        contrib = s**2 * np.einsum("ij,ij->i", right @ g, right)  # b_i^T G b_i, via one GEMM
        total = float(np.sum((w @ g) * w))
    # errors[r] = sqrt(sum_{i >= r} contrib_i / total): reverse cumulative sum, 0 at r = n.
    tail = np.concatenate([np.cumsum(contrib[::-1])[::-1], [0.0]])
    errors = np.sqrt(np.maximum(tail, 0.0) / total) if total > 0 else np.zeros_like(tail)
    return MatrixSpectrum(p, s, right, errors, data_aware)


@dataclasses.dataclass(frozen=True)
class Tucker2:
    """Full Tucker-2 (HOSVD) bases of a conv kernel ``[M, C, k..]``, truncated on demand.

    Attributes:
        u_out: ``[M, M]`` left singular vectors of the mode-0 unfolding (descending).
        u_in: ``[C, C]`` left singular vectors of the mode-1 unfolding.
        core: the rotated kernel ``W x_0 u_out^T x_1 u_in^T`` (``[M, C, k..]``).
        sigma_out / sigma_in: singular values of the two unfoldings (for the HOSVD bound).
        errors: ``errors[r2, r1]`` relative output (or weight) error of the ``(r1, r2)`` truncation,
            for ``r1 = 0..C``, ``r2 = 0..M``.
    """

    u_out: np.ndarray
    u_in: np.ndarray
    core: np.ndarray
    sigma_out: np.ndarray
    sigma_in: np.ndarray
    errors: np.ndarray

    def factors(self, r1: int, r2: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(first [r1, C, 1..], core [r2, r1, k..], last [M, r2, 1..])`` conv weights."""
        m, c = self.u_out.shape[0], self.u_in.shape[0]
        if not (1 <= r1 <= c and 1 <= r2 <= m):
            raise ValueError(f"Tucker ranks ({r1}, {r2}) outside 1..{c} x 1..{m}")
        ones = (1,) * (self.core.ndim - 2)
        first = self.u_in[:, :r1].T.reshape((r1, c) + ones)
        last = self.u_out[:, :r2].reshape((m, r2) + ones)
        return first, self.core[:r2, :r1], last

    def reconstruct(self, r1: int, r2: int) -> np.ndarray:
        first, core, last = self.factors(r1, r2)
        out = np.einsum("mr,rs...->ms...", last.reshape(last.shape[:2]), core)
        return np.einsum("ms...,sc->mc...", out, first.reshape(first.shape[:2]))


def tucker2(weight: np.ndarray, gram: np.ndarray | None = None) -> Tucker2:
    """HOSVD of ``weight [M, C, k..]`` on its two channel modes, with the error of every rank pair.

    ``gram`` is the Gram of the im2col patches (``[C*k.., C*k..]``, channel-major like
    ``weight.reshape(M, -1)``); errors are weight errors when it is None.
    """
    w = np.asarray(weight, np.float64)
    m, c = w.shape[:2]
    # Only the left singular vectors are used; a square U needs full_matrices only when the
    # unfolding has fewer columns than rows (the right factor of a 512 x 4608 unfolding would be
    # 4608 x 4608 and dominate the run time).
    unfold_out = w.reshape(m, -1)
    unfold_in = np.moveaxis(w, 1, 0).reshape(c, -1)
    u_out, s_out, _ = np.linalg.svd(unfold_out, full_matrices=unfold_out.shape[0] > unfold_out.shape[1])
    u_in, s_in, _ = np.linalg.svd(unfold_in, full_matrices=unfold_in.shape[0] > unfold_in.shape[1])
    # optimize=True contracts one factor at a time (O(M C k (M + C))); the default evaluates the
    # three-operand sum naively, O(M^2 C^2 k), which takes minutes on a 512-channel conv.
    core = np.einsum("mc...,mi,cj->ij...", w, u_out, u_in, optimize=True)
    return Tucker2(u_out, u_in, core, s_out, s_in, tucker2_error_table(w, core, u_in, gram))


def tucker2_error_table(weight: np.ndarray, core: np.ndarray, u_in: np.ndarray, gram: np.ndarray | None) -> np.ndarray:
    """``errors[r2, r1]``: relative output error of keeping the block ``[:r2, :r1]`` of ``core``.

    With ``W~ = core.reshape(M, C*kk)`` (rows: output basis; columns: input basis x spatial, channel
    major) and ``G~`` the rotated Gram, the kept block is ``B`` and::

        ||D X||^2 = tr(W~ G~ W~^T) - 2 tr(B G~ W~^T) + tr(B G~ B^T)

    ``tr(B G~ W~^T) = sum_{rows<r2, j<c1} W~[row, j] (W~ G~)[row, j]`` and ``tr(B G~ B^T) = sum_{rows<r2}
    q_row(c1)`` with ``q(c1) = sum_{j,l<c1} w_j G~_jl w_l``, which grows by ``w_c^2 G~_cc + 2 w_c
    sum_{l<c} G~_cl w_l`` per column: all cumulative sums, ``c1 = r1 * kk``. Without a Gram the
    projection identity gives ``||W||^2 - ||B||^2`` directly.
    """
    m, c = core.shape[:2]
    kk = int(np.prod(core.shape[2:], dtype=np.int64))
    rotated = core.reshape(m, c * kk)
    if gram is None:
        energy = np.sum(rotated.reshape(m, c, kk) ** 2, axis=2)  # [M, C]
        kept = np.zeros((m + 1, c + 1))
        kept[1:, 1:] = np.cumsum(np.cumsum(energy, axis=0), axis=1)
        total = float(np.sum(weight.astype(np.float64) ** 2))
        err2 = total - kept
    else:
        g = np.asarray(gram, np.float64).reshape(c, kk, c, kk)
        g_rot = np.einsum("ci,capb,pj->iajb", u_in, g, u_in, optimize=True).reshape(c * kk, c * kk)
        h = rotated @ g_rot
        total = float(np.sum(h * rotated))
        cross = np.cumsum(rotated * h, axis=1)  # [M, C*kk]: sum_{j<=col} W~ (W~G~)
        lower = rotated @ np.tril(g_rot, -1).T  # [row, c] = sum_{l<c} G~[c, l] W~[row, l]
        quad = np.cumsum(rotated**2 * np.diag(g_rot)[None, :] + 2.0 * rotated * lower, axis=1)
        cols = np.arange(1, c + 1) * kk - 1  # last column of each kept input channel count
        per_row = -2.0 * cross[:, cols] + quad[:, cols]  # [M, C] for r1 = 1..C
        table = np.zeros((m + 1, c + 1))
        table[1:, 1:] = np.cumsum(per_row, axis=0)
        err2 = total + table
    if total <= 0:
        return np.zeros((m + 1, c + 1))
    return np.sqrt(np.maximum(err2, 0.0) / total)
