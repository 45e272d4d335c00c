"""GPTQ weight rounding: choose each layer's integer codes to minimise its output error on the
calibration data, not the weight error (Frantar et al., "GPTQ", ICLR 2023; from Optimal Brain
Quantization / Optimal Brain Surgeon). The layer-wise weight tuning of issue 4 (AdaQuant-style:
adjust the rounding per layer on calibration data, no training), deterministic and closed form.

One layer, one output channel's weight row ``w`` (length K, its per-channel scale ``s`` fixed by
``qparams.quantize_weight``), calibration inputs ``x`` with Gram ``H = sum x x^T``
(``compiler.layer_grams``). The output error of codes ``q`` is

    E(q) = (w - s q) H (w - s q)^T = sum_x (w x - s q x)^2.

Rounding to nearest minimises ``|w - s q|`` per weight and ignores ``H``. GPTQ rounds the columns
j = 0..K-1 in order and, after each, moves the not-yet-rounded weights to the optimal
compensation for the error just made (the OBS update): with ``U`` the upper Cholesky factor of
``H^-1`` (``H^-1 = U^T U``),

    e_j = (w_j - s q_j) / U_jj,      w_{j+1:} <- w_{j+1:} - e_j U_{j, j+1:}

which is exact least squares for the remaining columns given ``q_0..q_j``. The update is applied
in blocks of :data:`BLOCK` columns (the "lazy batch" form: rank-1 updates inside the block, one
matrix product for the rest), the same arithmetic in a cache-friendly order.

Invariants kept for the integer-only form: the scales are unchanged (still max|W[c]| / qmax), so
codes stay in [-qmax, qmax] and the bias quantization and dyadic multipliers downstream do not
change. Dampening ``H + DAMP * mean(diag H) * I`` keeps ``H^-1`` well conditioned; an input that is
zero on every calibration sample (``H_jj = 0``) gets ``H_jj = 1`` and no coupling, so its weight is
rounded to nearest, not zeroed (it may be non-zero on other inputs).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from passes.quantize.layers import Layer

__all__ = ["BLOCK", "DAMP", "MAX_DIM", "gptq_codes", "gptq_layer_codes", "output_error"]

#: Relative dampening of the Gram's diagonal (GPTQ's default).
DAMP = 0.01
#: Columns per lazy-batch block.
BLOCK = 128
#: Widest Gram GPTQ is run on (a 6144^2 float64 Gram is 288 MiB); wider layers round to nearest.
MAX_DIM = 6144


def gptq_codes(rows: np.ndarray, gram: np.ndarray, scales: np.ndarray, qmax: int) -> np.ndarray:
    """Codes ``q [M, K]`` (int8, in [-qmax, qmax]) for weight rows ``rows [M, K]`` with per-row
    scales ``scales [M]`` and input Gram ``gram [K, K]``; see the module docstring."""
    w = np.array(rows, dtype=np.float64)
    h = np.array(gram, dtype=np.float64)
    k = w.shape[1]
    if h.shape != (k, k):
        raise ValueError(f"Gram is {list(h.shape)}, the weight rows have {k} columns")
    dead = np.diag(h) <= 0
    h[dead, :] = 0.0
    h[:, dead] = 0.0
    h[dead, dead] = 1.0
    live = np.diag(h)[~dead]
    h[np.diag_indices(k)] += DAMP * (float(live.mean()) if live.size else 1.0)
    h_inv = scipy.linalg.cho_solve(scipy.linalg.cho_factor(h), np.eye(k))
    u = scipy.linalg.cholesky(h_inv, lower=False)

    s = np.asarray(scales, dtype=np.float64)
    codes = np.zeros_like(w)
    for start in range(0, k, BLOCK):
        stop = min(start + BLOCK, k)
        block = w[:, start:stop].copy()
        errors = np.zeros_like(block)
        u_block = u[start:stop, start:stop]
        for j in range(stop - start):
            column = block[:, j]
            q = np.clip(np.rint(column / s), -qmax, qmax)
            codes[:, start + j] = q
            errors[:, j] = (column - s * q) / u_block[j, j]
            block[:, j:] -= np.outer(errors[:, j], u_block[j, j:])
        w[:, stop:] -= errors @ u[start:stop, stop:]
    return codes.astype(np.int8)


def _rows_view(layer: Layer) -> np.ndarray:
    """The layer's weight as rows = output channels, columns in the Gram's input order."""
    if layer.kind == "conv":
        return layer.weight.reshape(layer.weight.shape[0], -1)
    return layer.weight.T  # matmul weight [K, N] -> [N, K]


def gptq_layer_codes(layer: Layer, scales: np.ndarray, gram: np.ndarray, qmax: int) -> np.ndarray:
    """GPTQ codes of ``layer`` in its normalised weight layout (the layout ``quantize_weight``
    returns). ``gram`` is ``[K, K]``, or ``[groups, K/groups, K/groups]`` for a grouped conv."""
    rows = _rows_view(layer)
    if layer.kind == "conv" and layer.groups > 1:
        per_group = rows.shape[0] // layer.groups
        parts = [
            gptq_codes(rows[g * per_group:(g + 1) * per_group], gram[g], scales[g * per_group:(g + 1) * per_group], qmax)
            for g in range(layer.groups)
        ]
        return np.concatenate(parts).reshape(layer.weight.shape)
    codes = gptq_codes(rows, gram, scales, qmax)
    return codes.reshape(layer.weight.shape) if layer.kind == "conv" else codes.T


def output_error(layer: Layer, codes: np.ndarray, scales: np.ndarray, gram: np.ndarray) -> float:
    """``sum over calibration inputs of ||W x - W_dq x||^2`` = tr(D G D^T), D = W - s q (rows view)."""
    shape = [1] * layer.weight.ndim
    shape[layer.weight_axis] = -1
    dequantized = codes.astype(np.float64) * np.asarray(scales, np.float64).reshape(shape)
    diff = layer.weight - dequantized
    d = diff.reshape(diff.shape[0], -1) if layer.kind == "conv" else diff.T
    if layer.kind == "conv" and layer.groups > 1:
        per_group = d.shape[0] // layer.groups
        return float(sum(np.einsum("ik,kl,il->", d[g * per_group:(g + 1) * per_group], gram[g],
                                   d[g * per_group:(g + 1) * per_group]) for g in range(layer.groups)))
    return float(np.einsum("ik,kl,il->", d, gram, d))
