"""Input Gram matrices of Conv/Gemm/MatMul layers on calibration data.

For a layer ``y = W x`` the output error of any replacement ``W'`` on the calibration set is a
function of ``G = sum_x x x^T`` alone: ``sum ||(W - W') x||^2 = tr((W - W') G (W - W')^T)``. Low-rank
factorization (passes/lowrank/decompose) and GPTQ weight rounding (passes/quantize/gptq) both
minimise that, so this module reduces each calibration batch to one Gram per layer and never keeps
activations:

- Gemm/MatMul: ``x`` are the rows of the activation reshaped to ``[-1, K]`` (``A^T`` when
  ``transA=1``);
- Conv: ``x`` are the im2col patches ``[C*k1*..*kn]`` (channel major, the order of
  ``W.reshape(M, -1)``) at every output position, with the layer's pads, strides and dilations;
  a grouped conv (``GramRequest.groups = g``) gets one Gram per group over its ``C/g`` input
  channels, ``[g, K/g, K/g]`` (a depthwise conv: ``[C, k1*k2, k1*k2]``).

Activations come from ``compiler.intermediates`` (ONNX Runtime on a copy of the model). Layers are
processed in chunks whose Grams fit in :data:`GRAM_MEMORY_BYTES`, one session per chunk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from compiler.context import Feeds
from compiler.intermediates import intermediates
from compiler.ir import Model, Node

__all__ = ["GRAM_MEMORY_BYTES", "MAX_GRAM_DIM", "GramRequest", "conv_patches", "input_grams"]

#: Largest Gram side computed (a 4096 x 4096 float64 Gram is 128 MiB, and the whitening's Cholesky
#: and SVD on it take seconds); wider layers measure their error on the weights instead.
MAX_GRAM_DIM = 4096
#: Upper bound on the float64 Grams held at once; more layers are processed in further chunks.
GRAM_MEMORY_BYTES = 512 << 20


@dataclasses.dataclass(frozen=True)
class GramRequest:
    """One layer whose input Gram is wanted.

    Attributes:
        key: the caller's handle for the result.
        node: the Gemm/MatMul/Conv node (its input 0 is the activation).
        dim: the Gram's side (K for a matrix product, C/groups*prod(k) for a conv).
        groups: a conv's groups; > 1 gives one Gram per group, ``[groups, dim, dim]``.
    """

    key: str
    node: Node
    dim: int
    groups: int = 1


def _ints(node: Node, name: str, default: Sequence[int]) -> list[int]:
    attr = node.attributes.get(name)
    return list(default) if attr is None else list(attr.as_ints())


def conv_patches(x: np.ndarray, node: Node, kernel: Sequence[int]) -> np.ndarray:
    """im2col of ``x [N, C, *S]`` for the conv ``node``: ``[N*prod(O), C*prod(kernel)]``.

    Handles explicit pads and ``auto_pad`` (SAME_UPPER, SAME_LOWER, VALID), strides and dilations
    for any number of spatial dims.
    """
    n_sp = len(kernel)
    spatial = x.shape[2:]
    strides = _ints(node, "strides", [1] * n_sp)
    dilations = _ints(node, "dilations", [1] * n_sp)
    auto_pad = node.attributes.get("auto_pad")
    mode = auto_pad.as_string() if auto_pad is not None else "NOTSET"
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, s, e in zip(spatial, strides, extent):
            out = -(-size // s)
            total = max((out - 1) * s + e - size, 0)
            small, big = total // 2, total - total // 2
            begin.append(small if mode == "SAME_UPPER" else big)
            end.append(big if mode == "SAME_UPPER" else small)
    elif mode == "VALID":
        begin, end = [0] * n_sp, [0] * n_sp
    else:
        pads = _ints(node, "pads", [0] * (2 * n_sp))
        begin, end = pads[:n_sp], pads[n_sp:]
    padded = np.pad(x, [(0, 0), (0, 0)] + list(zip(begin, end)))
    axes = tuple(range(2, 2 + n_sp))
    windows = np.lib.stride_tricks.sliding_window_view(padded, extent, axis=axes)
    # windows: [N, C, *positions, *extent] -> subsample positions by stride, window by dilation.
    index = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides) + tuple(
        slice(None, None, d) for d in dilations
    )
    windows = windows[index]
    # -> [N, *O, C, *k], then rows = output positions, columns = (channel, kernel offset).
    order = (0,) + tuple(range(2, 2 + n_sp)) + (1,) + tuple(range(2 + n_sp, 2 + 2 * n_sp))
    patches = np.transpose(windows, order)
    return patches.reshape(-1, x.shape[1] * int(np.prod(kernel)))


def _rows(array: np.ndarray, request: GramRequest) -> np.ndarray:
    """The Gram's sample rows, ``[rows, dim]`` (``[groups, rows, dim]`` for a grouped conv)."""
    node = request.node
    if node.op_type == "Conv":
        weight_shape = node.inputs[1].const_value.shape
        kernel = [int(d) for d in tuple(weight_shape)[2:]]
        if request.groups > 1:
            n, c = array.shape[:2]
            grouped = array.reshape(n, request.groups, c // request.groups, *array.shape[2:])
            return np.stack([conv_patches(grouped[:, g], node, kernel) for g in range(request.groups)])
        return conv_patches(array, node, kernel)
    trans_a = node.attributes.get("transA")
    if node.op_type == "Gemm" and trans_a is not None and trans_a.as_int():
        array = array.T
    return array.reshape(-1, request.dim)


def _chunks(requests: Sequence[GramRequest]) -> list[list[GramRequest]]:
    chunks: list[list[GramRequest]] = [[]]
    used = 0
    for request in requests:
        size = request.groups * request.dim * request.dim * 8
        if chunks[-1] and used + size > GRAM_MEMORY_BYTES:
            chunks.append([])
            used = 0
        chunks[-1].append(request)
        used += size
    return [c for c in chunks if c]


def input_grams(model: Model, calibration: Sequence[Feeds], requests: Sequence[GramRequest]) -> dict[str, np.ndarray]:
    """``{request.key: G}`` summed over every calibration batch (float64; ``[groups, dim, dim]``
    for a grouped conv request).

    Raises:
        OptionError: a calibration batch lacks an input of the model or does not run.
    """
    grams: dict[str, np.ndarray] = {}
    for chunk in _chunks(requests):
        for request in chunk:
            shape = (request.dim, request.dim) if request.groups == 1 else (request.groups, request.dim, request.dim)
            grams[request.key] = np.zeros(shape)
        names = [request.node.inputs[0].name for request in chunk]
        for arrays in intermediates(model, calibration, names):
            for request in chunk:
                value = request.node.inputs[0]
                array = arrays[value.name] if value.name in arrays else value.const_value.numpy()
                rows = _rows(np.asarray(array, np.float64), request)
                grams[request.key] += np.swapaxes(rows, -1, -2) @ rows
    return grams
