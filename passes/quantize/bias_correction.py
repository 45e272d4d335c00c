"""Bias correction (Nagel et al., "Data-Free Quantization", empirical form).

Quantizing weights shifts each output channel's mean: with the dequantized weight
W_dq = s_w * W_q, the expected output error on the calibration data is

    E[W x] - E[W_dq x] = (W - W_dq) E[x]

because the layer is linear in x. Adding this to the bias removes the shift. E[x] is the
per-input-channel mean of the layer's float input over the calibration set:

    Conv:   corr[c] = sum_{k, taps} (W - W_dq)[c, k, taps] * E[x][g(c) * C_in/g + k]
            (g(c) is output channel c's group; padding is ignored, so border outputs, which see
             fewer taps, get the interior correction - exact for 'valid' convolutions)
    MatMul: corr[n] = sum_k E[x][k] * (W - W_dq)[k, n]
"""

from __future__ import annotations

import numpy as np

from passes.quantize.layers import Layer

__all__ = ["bias_correction", "dequantized", "input_channel_axis"]


def input_channel_axis(layer: Layer) -> int:
    """The axis of the layer's input that its weight reduces over (channels / features)."""
    return 1 if layer.kind == "conv" else -1


def dequantized(layer: Layer, weight_q: np.ndarray, weight_scales: np.ndarray) -> np.ndarray:
    """W_dq = s_w[c] * W_q in the layer's normalised layout (float64)."""
    shape = [1] * layer.weight.ndim
    shape[layer.weight_axis] = -1
    return weight_q.astype(np.float64) * weight_scales.astype(np.float64).reshape(shape)


def bias_correction(layer: Layer, weight_dq: np.ndarray, input_mean: np.ndarray) -> np.ndarray:
    """The per-output-channel correction (W - W_dq) E[x] to add to the float bias (float64 [C]).

    ``weight_dq`` is the dequantized weight in the layer's normalised layout (see ``dequantized``).
    """
    error = layer.weight - np.asarray(weight_dq, dtype=np.float64)
    mean = np.asarray(input_mean, dtype=np.float64)
    if layer.kind == "conv":
        c_out, c_in_group = error.shape[:2]
        per_tap = error.reshape(c_out, c_in_group, -1).sum(axis=2)  # [C_out, C_in/g]
        if mean.size != c_in_group * layer.groups:
            raise ValueError(f"{layer.label}: input mean has {mean.size} channels, expected {c_in_group * layer.groups}")
        group_of = np.arange(c_out) // (c_out // layer.groups)
        return (per_tap * mean.reshape(layer.groups, c_in_group)[group_of]).sum(axis=1)
    if mean.size != error.shape[0]:
        raise ValueError(f"{layer.label}: input mean has {mean.size} features, expected {error.shape[0]}")
    return mean @ error
