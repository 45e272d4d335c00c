"""Structure of the integer-only rewrite (``quantize``) and the QDQ export on small models."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from compiler.context import CompileContext
from compiler.errors import PassFailedError
from compiler.frontend import fix_input_shapes
from compiler.ir import to_proto
from compiler.pipeline import Pipeline
from compiler.verify import run_onnxruntime
from passes.quantize.integer import QuantizeIntegerPass
from tests.helpers import (
    OPSET,
    check_integer_only,
    check_qdq_form,
    count,
    digits_feeds,
    facts_holding,
    model_from_text,
    signature,
    torch_cnn_model,
    weight_codes,
)

RNG = np.random.default_rng(0)


def _calibration(shape, batches=4, seed=0):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(batches)]


def _quantize(model, calibration, spec="quantize"):
    before = signature(model)
    _, records = Pipeline.parse(f"canonicalize,{spec}").run(model, CompileContext(calibration=calibration))
    onnx.checker.check_model(to_proto(model), full_check=True)
    assert signature(model) == before
    run_onnxruntime(model, calibration[0])  # runs in ONNX Runtime
    return records[-1]


def _float_ops_between_q_and_dq(model) -> list[str]:
    """Ops other than Q/DQ that compute a float tensor (islands would show up here)."""
    return [
        n.op_type for n in model.graph
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and any(o.dtype.name == "FLOAT" for o in n.outputs)
    ]


def test_conv_relu() -> None:
    model = model_from_text(
        OPSET + "g (float[2,3,8,8] x) => (float[2,4,8,8] y) { c = Conv <pads=[1,1,1,1]> (x, w, b)\n y = Relu (c) }",
        w=(4, 3, 3, 3), b=(4,),
    )
    assert check_integer_only(model)  # the checker does see a float model
    record = _quantize(model, _calibration((2, 3, 8, 8)))
    assert check_integer_only(model) == []
    assert [count(model, op) for op in ("QuantizeLinear", "ConvInteger", "BitShift", "DequantizeLinear")] == [1, 1, 1, 1]
    assert _float_ops_between_q_and_dq(model) == []
    assert record.stats["fused_activations"] == 1 and record.stats["islands"] == 0
    clip = next(n for n in model.graph if n.op_type == "Clip")
    zero_point = next(n for n in model.graph if n.op_type == "DequantizeLinear").inputs[2].const_value.numpy()
    assert clip.inputs[1].const_value.numpy() == zero_point  # ReLU folded: the clamp starts at real 0
    weights = list(weight_codes(model).values())
    assert len(weights) == 1 and weights[0].min() >= -127 and weights[0].max() <= 127


def test_residual_add_with_relu() -> None:
    model = model_from_text(
        OPSET
        + """g (float[1,4,6,6] x) => (float[1,4,6,6] y) {
            c1 = Conv <pads=[1,1,1,1]> (x, w1, b1)
            r1 = Relu (c1)
            c2 = Conv <pads=[1,1,1,1]> (r1, w2, b2)
            s = Add (c2, x)
            y = Relu (s)
        }""",
        w1=(4, 4, 3, 3), b1=(4,), w2=(4, 4, 3, 3), b2=(4,),
    )
    record = _quantize(model, _calibration((1, 4, 6, 6)))
    assert record.stats["integer_adds"] == 1 and record.stats["fused_activations"] == 2
    assert count(model, "ConvInteger") == 2 and count(model, "BitShift") == 3 and count(model, "Relu") == 0
    assert count(model, "QuantizeLinear") == 1 and check_integer_only(model) == []


def test_gemm_matmul_bias_and_concat() -> None:
    model = model_from_text(
        OPSET
        + """g (float[3,8] x) => (float[3,10] y) {
            a = Gemm <transB=1, alpha=0.5> (x, w1, b1)
            m = MatMul (x, w2)
            mb = Add (m, b2)
            y = Concat <axis=1> (a, mb)
        }""",
        w1=(4, 8), b1=(4,), w2=(8, 6), b2=(6,),
    )
    record = _quantize(model, _calibration((3, 8)))
    assert count(model, "MatMulInteger") == 2 and count(model, "Concat") == 1
    assert record.stats["integer_concats"] == 1 and check_integer_only(model) == []
    concat = next(n for n in model.graph if n.op_type == "Concat")
    assert all(v.dtype.name == "UINT8" for v in concat.inputs)


def test_maxpool_and_global_average_pool_on_uint8() -> None:
    model = model_from_text(
        OPSET
        + """g (float[2,3,8,8] x) => (float[2,4,1,1] y) {
            c = Conv (x, w, b)
            r = Relu (c)
            p = MaxPool <kernel_shape=[2,2], strides=[2,2]> (r)
            y = GlobalAveragePool (p)
        }""",
        w=(4, 3, 1, 1), b=(4,),
    )
    record = _quantize(model, _calibration((2, 3, 8, 8)))
    pool = next(n for n in model.graph if n.op_type == "MaxPool")
    assert pool.inputs[0].dtype.name == "UINT8" and pool.outputs[0].dtype.name == "UINT8"
    assert count(model, "ReduceSum") == 1 and count(model, "GlobalAveragePool") == 0
    assert record.stats["integer_pools"] == 1 and check_integer_only(model) == []


def test_tanh_becomes_a_listed_float_island() -> None:
    model = model_from_text(
        OPSET + "g (float[4,8] x) => (float[4,5] y, float[4,5] z) { g1 = Gemm (x, w, b)\n y = Tanh (g1)\n z = Gemm (y, v, c) }",
        w=(8, 5), b=(5,), v=(5, 5), c=(5,),
    )
    record = _quantize(model, _calibration((4, 8)))
    assert record.stats["islands"] == 1
    assert any("Tanh" in note and "island" in note for note in record.notes)
    tanh = next(n for n in model.graph if n.op_type == "Tanh")
    assert tanh.inputs[0].producer().op_type == "DequantizeLinear"
    assert {u.node.op_type for u in tanh.outputs[0].uses()} == {"QuantizeLinear"}  # back to integers
    assert tanh.outputs[0].is_graph_output() and count(model, "MatMulInteger") == 2
    assert check_integer_only(model) == []


def test_torch_cnn_batched_calibration() -> None:
    model = torch_cnn_model()
    feeds = digits_feeds()  # a batch of 16 real images
    record = _quantize(model, [feeds])
    assert count(model, "ConvInteger") == 1 and count(model, "MatMulInteger") == 1
    assert _float_ops_between_q_and_dq(model) == [] and record.stats["islands"] == 0
    assert [v.name for v in model.graph.outputs] == ["logits"]
    assert check_integer_only(model) == []
    assert QuantizeIntegerPass.preserves <= facts_holding(model)  # canonical facts survive the rewrite


def test_seven_bit_weights_option() -> None:
    """quantize{bits=7} (``--quantize int8-w7``): the same integer-only form with every weight code
    in [-63, 63] (each layer reaches 63), still runnable and exact in ONNX Runtime."""
    model = torch_cnn_model()
    record = _quantize(model, [digits_feeds()], spec="quantize{bits=7}")
    codes = list(weight_codes(model).values())
    assert len(codes) == 2 and record.stats["islands"] == 0
    assert all(c.min() >= -63 and c.max() <= 63 and np.abs(c).max() == 63 for c in codes)
    assert any("int7" in note for note in record.notes)
    assert check_integer_only(model) == []


def test_symbolic_batch_fixed_by_the_frontend() -> None:
    model = model_from_text(
        OPSET + "g (float[N,3,6,6] x) => (float[N,2] y) { c = Conv (x, w, b)\n r = Relu (c)\n p = GlobalAveragePool (r)\n y = Flatten (p) }",
        w=(2, 3, 3, 3), b=(2,),
    )
    fix_input_shapes(model, {"x": (5, 3, 6, 6)}, "test")
    Pipeline.parse("infer-shapes").run(model, CompileContext())
    _quantize(model, _calibration((5, 3, 6, 6)))
    assert check_integer_only(model) == []


def test_export_qdq_form() -> None:
    model = torch_cnn_model()
    record = _quantize(model, [digits_feeds()], spec="export-qdq")
    assert check_qdq_form(model) == [] and check_integer_only(model)  # QDQ is not integer-only
    conv = next(n for n in model.graph if n.op_type == "Conv")
    w_dq = conv.inputs[1].producer()
    assert w_dq.op_type == "DequantizeLinear" and w_dq.attributes["axis"].as_int() == 0
    assert conv.inputs[2].producer().inputs[0].dtype.name == "INT32"
    assert record.stats["quantized_weights"] == 2


def test_errors_name_the_problem() -> None:
    model = model_from_text(OPSET + "g (float[1,3] x) => (float[1,2] y) { y = Gemm (x, w) }", w=(3, 2))
    with pytest.raises(PassFailedError, match="calibration"):
        Pipeline.parse("canonicalize,quantize").run(model, CompileContext())

    class NoInt8:
        name = "fp-only"
        precisions = {"fp32": True}

    with pytest.raises(PassFailedError, match="int8"):
        Pipeline.parse("canonicalize,quantize").run(model, CompileContext(target=NoInt8(), calibration=_calibration((1, 3))))
    with pytest.raises(PassFailedError, match="observer"):
        Pipeline.parse("canonicalize,quantize{observer=entropy}").run(model, CompileContext(calibration=_calibration((1, 3))))
    with pytest.raises(PassFailedError, match="bits=6"):
        Pipeline.parse("canonicalize,quantize{bits=6}").run(model, CompileContext(calibration=_calibration((1, 3))))


def test_spec_text_round_trips() -> None:
    spec = "quantize{bits=4,observer=percentile,percentile=99.9,bias_correction=true},export-qdq{observer=mse}"
    assert str(Pipeline.parse(spec)) == spec
