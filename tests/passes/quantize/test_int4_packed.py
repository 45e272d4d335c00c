"""Packed int4 weight storage (``passes.quantize.int4``): the format, the subgraph ``quantize``
emits for 4-bit layers, and bit-exactness of the packed form against the 8-bit-container form in
the reference interpreter and ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from compiler.context import CompileContext
from compiler.ir import copy_model, to_proto
from compiler.pipeline import Pipeline
from compiler.reference import run_reference
from compiler.verify import run_onnxruntime
from passes.quantize.int4 import INT4_ZERO_POINT, match_packed_weight, match_packed_weight_proto, pack_int4, unpack_int4
from tests.helpers import OPSET, check_integer_only, count, model_from_text, weight_codes


@pytest.mark.parametrize("shape", [(1,), (2,), (27,), (16, 1, 3, 3), (3, 3, 3, 3), (64, 10)])
def test_pack_round_trips_and_halves_the_bytes(shape) -> None:
    codes = np.random.default_rng(0).integers(-8, 8, shape).astype(np.int8)
    packed = pack_int4(codes)
    assert packed.dtype == np.uint8 and packed.size == -(-codes.size // 2)
    np.testing.assert_array_equal(unpack_int4(packed, shape), codes)
    # planar layout: byte i holds element i (low nibble) and element i + ceil(n/2) (high nibble)
    flat = codes.reshape(-1).astype(np.int16) + INT4_ZERO_POINT
    assert int(packed[0] & 0x0F) == flat[0]
    if codes.size > 1:
        assert int(packed[0] >> 4) == flat[packed.size]


def test_pack_rejects_codes_outside_int4() -> None:
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        pack_int4(np.array([8], np.int8))


def _conv_gemm_model(out_channels: int = 6):
    """Conv (odd weight count with 3 input channels x 3x3) -> Relu -> GAP -> Flatten -> Gemm."""
    return model_from_text(
        OPSET + f"""
        g (float[2,3,8,8] x) => (float[2,5] y) {{
            c = Conv <pads=[1,1,1,1]> (x, w1, b1)
            r = Relu (c)
            p = GlobalAveragePool (r)
            f = Flatten (p)
            y = Gemm <transB=1> (f, w2, b2)
        }}""",
        w1=(out_channels, 3, 3, 3), b1=(out_channels,), w2=(5, out_channels), b2=(5,),
    )


def _calibration(batches=4, seed=0):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)} for _ in range(batches)]


def _quantized(spec: str, out_channels: int = 6):
    model = _conv_gemm_model(out_channels)
    _, records = Pipeline.parse(f"canonicalize,{spec}").run(model, CompileContext(calibration=_calibration()))
    return model, next(r for r in records if r.name == "quantize")


@pytest.mark.parametrize("out_channels", [5, 6])  # 5 * 27 = 135 weights: odd, the Slice form
def test_quantize_emits_packed_weights_with_zero_point_8(out_channels: int) -> None:
    packed, record = _quantized("quantize{bits=4}", out_channels)
    containers, _ = _quantized("quantize{bits=4,pack_int4=false}", out_channels)
    onnx.checker.check_model(to_proto(packed), full_check=True)
    assert check_integer_only(packed) == []
    assert record.stats["packed_int4_layers"] == 2
    assert all("packed two per byte" in n for n in record.notes if " -> ConvInteger" in n or " -> MatMulInteger" in n)
    odd = sum(c.size % 2 for c in weight_codes(containers).values())  # conv 27 * C, Gemm 5 * C weights
    assert count(packed, "BitShift") >= 3 * 2 and count(packed, "Slice") == odd == (2 if out_channels % 2 else 0)
    layers = [n for n in packed.graph if n.op_type in ("ConvInteger", "MatMulInteger")]
    for node in layers:
        assert node.inputs[1].const_value is None  # computed by the unpack, not an initializer
        found = match_packed_weight(node.inputs[1])
        assert found is not None and found.packed.size == -(-found.codes.size // 2)
        assert int(node.inputs[3].const_value.numpy()) == INT4_ZERO_POINT
        assert np.abs(found.codes.astype(np.int64)).max() <= 7
    # the same codes as the 8-bit containers (offset-binary uint8, zero point 128)
    packed_codes = {name.removesuffix("_w_q4"): c for name, c in weight_codes(packed).items()}
    container_codes = {name.removesuffix("_w_q"): c for name, c in weight_codes(containers).items()}
    assert packed_codes.keys() == container_codes.keys() and len(packed_codes) == 2
    for name, c in container_codes.items():
        np.testing.assert_array_equal(packed_codes[name], c)
    # stored bytes: the packed weights take about half of the containers' weight bytes
    weights = sum(c.size for c in weight_codes(containers).values())
    packed_bytes = sum(match_packed_weight(n.inputs[1]).packed.size for n in layers)
    assert packed_bytes == sum(-(-c.size // 2) for c in weight_codes(containers).values()) < weights


def test_packed_form_is_bit_exact_with_the_container_form() -> None:
    packed, _ = _quantized("quantize{bits=4}", 5)
    containers, _ = _quantized("quantize{bits=4,pack_int4=false}", 5)
    rng = np.random.default_rng(7)
    for feeds in _calibration(2, seed=3) + [{"x": rng.uniform(-4, 4, (2, 3, 8, 8)).astype(np.float32)}]:
        reference = run_reference(to_proto(packed), feeds)
        for got in (run_onnxruntime(packed, feeds), run_reference(to_proto(containers), feeds),
                    run_onnxruntime(containers, feeds)):
            assert len(got) == len(reference)
            for a, b in zip(got, reference):
                np.testing.assert_array_equal(a, b)


def test_matchers_agree_and_reject_other_subgraphs() -> None:
    packed, _ = _quantized("quantize{bits=4}")
    proto = to_proto(packed)
    for node in packed.graph:
        if node.op_type in ("ConvInteger", "MatMulInteger"):
            a = match_packed_weight(node.inputs[1])
            b = match_packed_weight_proto(proto.graph, node.inputs[1].name)
            assert b is not None and a.packed_name == b.packed_name
            np.testing.assert_array_equal(a.codes, b.codes)
        if node.op_type == "Reshape" and node.outputs[0].uses() and node.outputs[0].uses()[0].node.op_type not in (
                "ConvInteger", "MatMulInteger"):
            assert match_packed_weight(node.outputs[0]) is None
    eight, _ = _quantized("quantize{bits=8}")
    assert all(match_packed_weight(n.inputs[1]) is None for n in eight.graph if n.op_type in ("ConvInteger", "MatMulInteger"))


def test_int8_activations_keep_4_bit_codes_in_int8_containers() -> None:
    model, record = _quantized("quantize{bits=4,activations=int8}")
    assert "packed_int4_layers" not in record.stats
    assert count(model, "BitShift") == count(copy_model(_quantized("quantize{bits=8,activations=int8}")[0]), "BitShift")
