"""fold-batchnorm: Conv/Gemm + BN fold exactly (within FP32_REWRITE); ineligible BNs stay with a reason."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.context import CompileContext
from compiler.ir import copy_model
from compiler.verify import random_feeds
from passes.canonicalize.fold_batchnorm import FoldBatchNormPass
from passes.canonicalize.lift_constants import LiftConstantsPass
from tests.helpers import (
    OPSET,
    assert_same_outputs,
    check_bn_folded,
    conv_bn_model,
    count,
    digits_feeds,
    model_from_text,
    op_types,
    torch_cnn_model,
)
from tests.tolerances import FP32_REWRITE

BN_STATS = dict(s=(4,), o=(4,), m=(4,), var=(4,))


def _fold(model):
    before = copy_model(model)
    result = FoldBatchNormPass()(model, CompileContext())
    assert_same_outputs(before, model, random_feeds(model), FP32_REWRITE)
    return result


def test_grouped_conv_unbiased_conv_and_gemm_fold() -> None:
    model = conv_bn_model()
    result = _fold(model)
    assert result.modified and result.stats["folded"] == 3
    assert op_types(model) == ["Conv", "Relu", "Conv", "GlobalAveragePool", "Flatten", "Gemm"]
    assert len(model.graph.node(2).inputs) == 3  # the bias-free Conv gained a bias
    assert [v.name for v in model.graph.outputs] == ["y"]  # Gemm output took the BN output's name
    assert check_bn_folded(model) == []
    # old weights and statistics are gone: 3 (W, b) pairs remain
    assert len(model.graph.initializers) == 6


@pytest.mark.parametrize(
    "producer, shapes",
    [
        ("c = Conv <group=4> (f, w)", dict(w=(4, 1, 3, 3))),  # depthwise, no bias
        ("c = Gemm (f, w, b)", dict(w=(12, 4), b=(1, 4))),  # transB=0, C broadcast row
        ("c = Gemm <transB=1, alpha=0.5> (f, w)", dict(w=(4, 12))),  # no C
    ],
)
def test_more_producer_forms(producer: str, shapes: dict) -> None:
    conv = producer.startswith("c = Conv")
    x_type, y_type = ("float[1,4,5,5]", "float[1,4,3,3]") if conv else ("float[3,12]", "float[3,4]")
    model = model_from_text(
        OPSET + f"g ({x_type} x) => ({y_type} y) {{\n f = Identity (x)\n {producer}\n y = BatchNormalization (c, s, o, m, var) }}",
        **shapes, **BN_STATS,
    )
    assert _fold(model).stats["folded"] == 1
    assert count(model, "BatchNormalization") == 0


def test_old_tensors_are_not_mutated_and_shared_weights_stay() -> None:
    model = model_from_text(
        OPSET + """
        g (float[1,2,4,4] x) => (float[1,4,4,4] y, float[1,4,4,4] z) {
            c = Conv (x, w)
            y = BatchNormalization (c, s, o, m, var)
            z = Conv (x, w)
        }""",
        w=(4, 2, 1, 1), **BN_STATS,
    )
    w_value = model.graph.initializers["w"]
    original = w_value.const_value.numpy().copy()
    _fold(model)
    np.testing.assert_array_equal(w_value.const_value.numpy(), original)
    assert model.graph.node(1).inputs[1] is w_value  # the other Conv still reads the original


@pytest.mark.parametrize(
    "body, inputs, reason",
    [
        ("c = Conv (x, w)\n r = Relu (c)\n y = BatchNormalization (c, s, o, m, var)\n z = Neg (r)",
         "", "other consumers"),
        ("c = Conv (x, w)\n y = BatchNormalization (c, s, o, mean, var)\n z = Neg (y)",
         ", float[4] mean", "'mean' is not a constant"),
        ("c = Relu (x)\n y = BatchNormalization (c, s, o, m, var)\n z = Neg (y)",
         "", "no preceding Conv or Gemm"),
    ],
)
def test_ineligible_batchnorm_stays_with_a_reason(body: str, inputs: str, reason: str) -> None:
    model = model_from_text(
        OPSET + f"g (float[1,4,4,4] x{inputs}) => (float[1,4,4,4] y, float[1,4,4,4] z) {{\n {body} }}",
        w=(4, 4, 1, 1), **BN_STATS,
    )
    result = FoldBatchNormPass()(model, CompileContext())
    assert result.modified is False and result.stats["folded"] == 0
    assert count(model, "BatchNormalization") == 1
    assert reason in result.notes[0]


def test_real_exported_cnn_on_digits() -> None:
    model = torch_cnn_model()
    LiftConstantsPass()(model, CompileContext())
    assert count(model, "BatchNormalization") == 1
    before = copy_model(model)
    result = FoldBatchNormPass()(model, CompileContext())
    assert result.stats["folded"] == 1
    assert count(model, "BatchNormalization") == 0
    assert_same_outputs(before, model, digits_feeds(), FP32_REWRITE)
