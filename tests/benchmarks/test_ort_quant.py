"""The ONNX Runtime int8 baseline of the benchmarks (benchmarks/ort_quant.py) is ORT's recommended
workflow: pre-processing folds BatchNormalization, then quantize_static writes a QDQ model."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from benchmarks.ort_quant import quantize_static_qdq


def _conv_bn_model(path):
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.uniform(0.5, 2, 8).astype(np.float32), "scale"),
        numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "bias"),
        numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "mean"),
        numpy_helper.from_array(rng.uniform(0.5, 2, 8).astype(np.float32), "var"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["b"]),
        helper.make_node("Relu", ["b"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "conv_bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)


def test_baseline_folds_batchnorm_and_quantizes(tmp_path):
    _conv_bn_model(tmp_path / "m.onnx")
    rng = np.random.default_rng(1)
    calib = [{"x": rng.normal(size=(1, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    out = quantize_static_qdq(tmp_path / "m.onnx", tmp_path / "q.onnx", calib)
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert "BatchNormalization" not in ops
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, calib[0])
    (ref,) = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, calib[0])
    assert np.corrcoef(y.ravel(), ref.ravel())[0, 1] > 0.99


def test_baseline_quantizes_the_digits_example(tmp_path):
    """The digits export, whose ONNX Runtime symbolic shape inference fails, still quantizes."""
    from pathlib import Path

    digits = Path(__file__).resolve().parents[2] / "examples" / "digits_cnn.onnx"
    calib = [{"x": np.random.default_rng(i).uniform(0, 16, (1, 1, 8, 8)).astype(np.float32)} for i in range(4)]
    out = quantize_static_qdq(digits, tmp_path / "q.onnx", calib)
    assert "QuantizeLinear" in {node.op_type for node in onnx.load(str(out)).graph.node}
