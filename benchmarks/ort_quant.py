"""ONNX Runtime's own static quantizer, the baseline users compare a quantizer with."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["quantize_static_qdq"]


def quantize_static_qdq(path: Path, out: Path, calibration: list[dict[str, np.ndarray]]) -> Path:
    """``onnxruntime.quantization.quantize_static`` with its usual settings for CPUs: QDQ format,
    per-channel int8 weights, uint8 activations, MinMax calibration on ``calibration`` (the same
    feeds edgekiln calibrates on). Writes ``out`` and returns it."""
    import logging

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    # quantize_static logs a warning per bias tensor ("Axis 1 is out-of-range ... rank 1"); noise here.
    logging.getLogger().setLevel(logging.ERROR)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(calibration)

        def get_next(self):
            return next(self._it, None)

    quantize_static(
        str(path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
    )
    return out
