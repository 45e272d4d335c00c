"""Reconstruction without training: re-fit a consumer's remaining weights by least squares.

After channel pruning, a consumer (Conv with group 1, Gemm, MatMul) has lost some input channels
and its upstream layers changed too. Following ThiNet (Luo et al. 2017) and AIMET's channel
pruning, its remaining weights are re-fitted so that, on the calibration data, its output is as
close as possible to the *original* model's output of that layer.

Per consumer, with the pruned model's input to it unrolled as rows ``A`` (one row per output
position: a Conv's im2col patch of the kept channels ``[C_kept * kh * kw]``, a Gemm/MatMul input
row ``[K_kept]``), a column of ones appended when the op has a bias (intercept), and the original
model's output ``Y`` (``[rows, M_kept]``, the consumer's own output channels that survived)::

    W* = argmin_W ||A W - Y||_F^2 + lambda ||D W||_F^2
    (A^T A + lambda D) W* = A^T Y                              (normal equations)
    lambda = RIDGE * mean(diag(A^T A)),   D = diag(1, ..., 1, 0)   (the intercept is not shrunk)

``A^T A`` and ``A^T Y`` are accumulated batch by batch (float64), so memory is
``O(features^2 + features * M)`` whatever the data size; rows beyond :data:`MAX_ROWS_PER_BATCH` per
batch are sub-sampled (seeded). The ridge term keeps the system well-posed when there are fewer
rows than features (a Gemm after Flatten on few calibration samples) or when channels are
collinear. The output error before and after is read from the same sums::

    ||A W - Y||^2 = tr(Y^T Y) - 2 tr(W^T A^T Y) + tr(W^T A^T A W)

Consumers are re-fitted in graph order, each on the activations of the model whose earlier
consumers are already re-fitted (AIMET's sequential scheme), so later layers also absorb the
remaining error of earlier ones.

Ridge strength by held-out error. With few calibration samples a consumer can have more features
than rows (the Gemm after a Flatten: 256 features, 179 digits images), and then the fit
*interpolates* the calibration data: on the bundled digits CNN a fixed ``lambda = 1e-3 * mean
diag`` gave a calibration output error of 0.4% and a held-out one of 11%. So every
:data:`HOLDOUT_EVERY`-th calibration batch is held out: the sums are accumulated separately for
the fitting batches (``G_f, C_f``) and the held-out ones (``G_h, C_h``), each ``lambda`` of
:data:`RIDGE_GRID` (times ``mean(diag(G_f))``) is solved on the fitting sums and scored on the
held-out ones, and the best is refitted on all batches. The fit is applied only when its held-out
error is below that of the pruned weights as they are; the errors reported (:class:`Refit`) are
the held-out ones. With fewer than two batches nothing can be held out: ``lambda`` is
:data:`RIDGE` and the errors are in-sample (``Refit.held_out`` says which).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from compiler.context import Feeds
from compiler.ir import Model, Node, constant_array, ir
from passes.canonicalize._graph_utils import new_initializer, remove_unused_initializers, unique_name, used_names
from compiler.intermediates import intermediates
from passes.prune.dependency import int_attr, ints_attr, node_label

__all__ = ["RIDGE", "RIDGE_GRID", "HOLDOUT_EVERY", "MAX_ROWS_PER_BATCH", "Refit", "reconstruct"]

#: Ridge strength relative to the mean diagonal of A^T A when nothing can be held out (scale-free;
#: 1e-3 shrinks little but bounds the condition number by ~1e3 * max/mean eigenvalue ratio).
RIDGE = 1e-3
#: Relative ridge strengths tried against the held-out batches (see the module docstring).
RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
#: Every this-many-th calibration batch is held out to choose the ridge strength.
HOLDOUT_EVERY = 4
#: Rows (output positions) used per calibration batch and consumer; more add little to a
#: [features x features] system and cost memory.
MAX_ROWS_PER_BATCH = 4096


@dataclasses.dataclass(frozen=True)
class Refit:
    """Outcome for one consumer: relative output error before/after the re-fit, on the held-out
    calibration batches (``held_out``) or, with a single batch, on the calibration data itself;
    ``ridge`` is the chosen strength relative to ``mean(diag(A^T A))``."""

    node: str
    error_before: float
    error_after: float
    applied: bool
    held_out: bool = False
    ridge: float = RIDGE


def _conv_rows(node: Node, x: np.ndarray) -> np.ndarray | None:
    """im2col rows ``[N*oh*ow, C*kh*kw]`` of a 2-D Conv input (None when unsupported)."""
    weight = node.inputs[1].const_value
    auto_pad = node.attributes.get("auto_pad")
    if x.ndim != 4 or len(weight.shape) != 4 or (auto_pad is not None and auto_pad.as_string() not in ("NOTSET", "VALID")):
        return None
    kh, kw = int(weight.shape[2]), int(weight.shape[3])
    pads = ints_attr(node, "pads") or [0, 0, 0, 0]
    sh, sw = ints_attr(node, "strides") or [1, 1]
    dh, dw = ints_attr(node, "dilations") or [1, 1]
    padded = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    windows = sliding_window_view(padded, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    windows = windows[:, :, ::sh, ::sw, ::dh, ::dw]  # [N, C, oh, ow, kh, kw]
    n, c, oh, ow = windows.shape[:4]
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * kh * kw)


def _rows(node: Node, x: np.ndarray) -> np.ndarray | None:
    if node.op_type == "Conv":
        return _conv_rows(node, x)
    return x.reshape(-1, x.shape[-1])


def _output_rows(node: Node, y: np.ndarray) -> np.ndarray:
    if node.op_type == "Conv":
        return np.moveaxis(y, 1, -1).reshape(-1, y.shape[1])
    return y.reshape(-1, y.shape[-1])


def _current_solution(node: Node) -> tuple[np.ndarray, bool] | None:
    """The consumer's present weights as a ``[features (+1), M]`` matrix and whether it has an
    intercept; None for a Gemm whose C differs per row (not an intercept)."""
    weight = constant_array(node.inputs[1]).astype(np.float64)
    bias_value = node.inputs[2] if len(node.inputs) > 2 else None
    bias = constant_array(bias_value)
    if node.op_type == "Conv":
        w = weight.reshape(weight.shape[0], -1).T
        b = np.zeros(weight.shape[0]) if bias is None else bias.astype(np.float64)
        return np.vstack([w, b[None, :]]), True
    if node.op_type == "Gemm":
        alpha = node.attributes.get("alpha")
        beta = node.attributes.get("beta")
        alpha = 1.0 if alpha is None else alpha.as_float()
        beta = 1.0 if beta is None else beta.as_float()
        w = alpha * (weight.T if int_attr(node, "transB", 0) else weight)
        outputs = w.shape[1]
        if bias is None:
            b = np.zeros(outputs)
        elif bias.size in (1, outputs) and (bias.ndim < 2 or bias.shape[0] == 1):
            b = np.broadcast_to(beta * bias.astype(np.float64).reshape(-1), (outputs,)).copy()
        else:
            return None  # C differs per row: not an intercept
        return np.vstack([w, b[None, :]]), True
    return weight, False  # MatMul: no bias input


def _write(node: Node, solution: np.ndarray, intercept: bool, taken: set[str]) -> list:
    """Store ``solution`` as the consumer's new weight (and bias); returns the replaced values."""
    graph = node.graph
    old = [v for v in node.inputs[1:3] if v is not None]
    weight = constant_array(node.inputs[1])
    w, b = (solution[:-1], solution[-1]) if intercept else (solution, None)
    stem = node_label(node)
    if node.op_type == "Conv":
        new_w = w.T.reshape(weight.shape)
    elif node.op_type == "Gemm":
        alpha = node.attributes.get("alpha")
        w = w / (1.0 if alpha is None else alpha.as_float())
        new_w = w.T if int_attr(node, "transB", 0) else w
        node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)  # the fitted intercept is C itself
    else:
        new_w = w
    node.replace_input_with(1, new_initializer(graph, unique_name(f"{stem}_weight_refit", taken), new_w.astype(weight.dtype)))
    if b is not None:
        if len(node.inputs) < 3:
            node.resize_inputs(3)
        node.replace_input_with(2, new_initializer(graph, unique_name(f"{stem}_bias_refit", taken), b.astype(weight.dtype)))
    return old


def _error(gram: np.ndarray, cross: np.ndarray, energy: float, solution: np.ndarray) -> float:
    value = energy - 2.0 * float(np.sum(solution * cross)) + float(np.sum(solution * (gram @ solution)))
    return float(np.sqrt(max(value, 0.0) / energy)) if energy > 0 else 0.0


@dataclasses.dataclass
class _Sums:
    """``A^T A``, ``A^T Y`` and ``||Y||^2`` over a set of rows."""

    gram: np.ndarray
    cross: np.ndarray
    energy: float = 0.0

    def add(self, a: np.ndarray, y: np.ndarray) -> None:
        self.gram += a.T @ a
        self.cross += a.T @ y
        self.energy += float(np.sum(y * y))

    def error(self, solution: np.ndarray) -> float:
        return _error(self.gram, self.cross, self.energy, solution)


def _solve(sums: _Sums, relative_ridge: float, intercept: bool) -> np.ndarray:
    """Ridge solution ``(G + lambda D)^-1 C`` with ``lambda = relative_ridge * mean(diag(G))``."""
    features = sums.gram.shape[0]
    penalty = np.ones(features)
    if intercept:
        penalty[-1] = 0.0
    diag = np.diag(sums.gram)[: features - 1 if intercept else features]
    lam = relative_ridge * float(np.mean(diag)) if diag.size else 0.0
    system = sums.gram + lam * np.diag(penalty)
    try:
        return np.linalg.solve(system, sums.cross)
    except np.linalg.LinAlgError:  # singular even with the ridge (all-zero inputs): least norm
        return np.linalg.lstsq(system, sums.cross, rcond=None)[0]


def _fit(fitting: _Sums, held: _Sums, solution: np.ndarray, intercept: bool) -> tuple[np.ndarray, float, float, float, bool]:
    """(fitted weights, error before, error after, relative ridge, held out?) - module docstring."""
    if held.energy == 0.0:  # nothing held out: the fixed ridge, in-sample errors
        fitted = _solve(fitting, RIDGE, intercept)
        return fitted, fitting.error(solution), fitting.error(fitted), RIDGE, False
    scored = [(held.error(_solve(fitting, ridge, intercept)), ridge) for ridge in RIDGE_GRID]
    after, ridge = min(scored)
    everything = _Sums(fitting.gram + held.gram, fitting.cross + held.cross, fitting.energy + held.energy)
    return _solve(everything, ridge, intercept), held.error(solution), after, ridge, True


def reconstruct(
    pruned: Model,
    original: Model,
    consumers: Sequence[Node],
    kept_outputs: dict[str, np.ndarray],
    calibration: Sequence[Feeds],
    seed: int = 0,
) -> list[Refit]:
    """Re-fit ``consumers`` (nodes of ``pruned``) in graph order; returns one :class:`Refit` each.

    Args:
        pruned: the model after channel removal (mutated: new weight initializers).
        original: the model before pruning (read only), source of the target outputs.
        consumers: Conv (group 1) / Gemm / MatMul nodes of ``pruned`` that lost input channels.
        kept_outputs: for a consumer output name whose channels were pruned too, the original
            channel indices that remain (its last axis for Gemm/MatMul, axis 1 for Conv).
        calibration: feed dicts; targets come from ``original`` on the same feeds.
    """
    rng = np.random.default_rng(seed)
    order = {id(n): i for i, n in enumerate(pruned.graph)}
    consumers = sorted(consumers, key=lambda n: order[id(n)])
    results: list[Refit] = []
    taken = used_names(pruned.graph)
    replaced = []
    for node in consumers:
        x_name, y_name = node.inputs[0].name, node.outputs[0].name
        current = _current_solution(node)
        if current is None:
            results.append(Refit(node_label(node), float("nan"), float("nan"), False))
            continue
        solution, intercept = current
        features = solution.shape[0]
        fitting, held = (_Sums(np.zeros((features, features)), np.zeros((features, solution.shape[1]))) for _ in range(2))
        supported = True
        hold_out = len(calibration) >= 2
        targets = intermediates(original, calibration, [y_name])
        for batch, (inputs, outputs) in enumerate(zip(intermediates(pruned, calibration, [x_name]), targets)):
            a = _rows(node, np.asarray(inputs[x_name], dtype=np.float64))
            if a is None:
                supported = False
                break
            y = np.asarray(outputs[y_name], dtype=np.float64)
            if y_name in kept_outputs:
                y = np.take(y, kept_outputs[y_name], axis=1 if node.op_type == "Conv" else y.ndim - 1)
            y = _output_rows(node, y)
            if len(a) > MAX_ROWS_PER_BATCH:
                pick = rng.choice(len(a), MAX_ROWS_PER_BATCH, replace=False)
                a, y = a[pick], y[pick]
            if intercept:
                a = np.hstack([a, np.ones((len(a), 1))])
            (held if hold_out and batch % HOLDOUT_EVERY == HOLDOUT_EVERY - 1 else fitting).add(a, y)
        if not supported or fitting.energy == 0.0:
            results.append(Refit(node_label(node), float("nan"), float("nan"), False))
            continue
        fitted, before, after, ridge, held_out = _fit(fitting, held, solution, intercept)
        applied = after < before
        if applied:
            replaced += _write(node, fitted, intercept, taken)
        results.append(Refit(node_label(node), before, after, applied, held_out, ridge))
    remove_unused_initializers(replaced)
    return results
