"""ONNX Runtime's own static quantizer, the baseline users compare a quantizer with."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["quantize_static_qdq"]


def quantize_static_qdq(path: Path, out: Path, calibration: list[dict[str, np.ndarray]]) -> Path:
    """``onnxruntime.quantization.quantize_static`` with its usual settings for CPUs: QDQ format,
    per-channel int8 weights, uint8 activations, MinMax calibration on ``calibration`` (the same
    feeds edgekiln calibrates on), after ONNX Runtime's recommended pre-processing
    (``quant_pre_process``: shape inference and graph optimization, which folds BatchNormalization
    into the convs -- without it the exported CNNs kept float BatchNorm between Dequantize/Quantize
    pairs and ONNX Runtime int8 spent more than half its time outside the integer convs). Writes
    ``out`` and returns it."""
    import logging

    # quantize_static logs a warning per bias tensor ("Axis 1 is out-of-range ... rank 1") on the
    # root logger: noise here. Silenced for this call only -- a root level left at ERROR hides the
    # warnings other code listens for (compiler passes turn onnx_ir's warnings into errors).
    root = logging.getLogger()
    saved_level = root.level
    root.setLevel(logging.ERROR)
    try:
        return _quantize(path, out, calibration)
    finally:
        root.setLevel(saved_level)


def _quantize(path: Path, out: Path, calibration: list[dict[str, np.ndarray]]) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(calibration)

        def get_next(self):
            return next(self._it, None)

    prepared = out.with_name(out.stem + ".pre.onnx")
    try:
        quant_pre_process(str(path), str(prepared))
    except AttributeError:
        # its symbolic shape inference fails on some static exports (the digits CNN: "'NoneType'
        # object has no attribute 'HasField'"); ONNX's own shape inference still runs without it
        quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
    )
    return out
