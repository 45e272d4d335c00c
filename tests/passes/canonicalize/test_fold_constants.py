"""fold-constants: constant subgraphs fold; overridable initializers and output names survive."""

from __future__ import annotations

import numpy as np

from compiler.context import CompileContext
from compiler.ir import copy_model
from compiler.verify import random_feeds, run_onnxruntime
from passes.canonicalize.fold_constants import FoldConstantsPass
from passes.canonicalize.lift_constants import LiftConstantsPass
from tests.helpers import (
    OPSET,
    assert_same_outputs,
    check_constants_folded,
    digits_feeds,
    messy_model,
    model_from_text,
    op_types,
    torch_cnn_model,
)
from tests.tolerances import EXACT, FP32_REWRITE

CHAIN = (
    OPSET
    + """
    g (float[4] x) => (float[4] y) {
        s = Add (a, b)
        t = Mul (s, a)
        u = Sqrt (t)
        y = Mul (x, u)
    }
    """
)


def _chain():
    return model_from_text(CHAIN, a=np.array([1, 2, 3, 4], np.float32), b=np.array([2, 0.5, 1, 3], np.float32))


def test_constant_chain_folds_to_one_initializer() -> None:
    model = _chain()
    result = FoldConstantsPass()(model, CompileContext())
    assert result.modified and result.stats["folded"] == 3
    assert op_types(model) == ["Mul"]
    (folded,) = (v for v in model.graph.node(0).inputs if v.const_value is not None)
    np.testing.assert_allclose(folded.const_value.numpy(), np.sqrt(np.array([3, 5, 12, 28], np.float32)), rtol=FP32_REWRITE.rtol)
    assert list(model.graph.initializers) == [folded.name]  # a and b were only used by the chain
    assert check_constants_folded(model) == []


def test_initializer_that_is_a_graph_input_is_not_folded_and_stays_overridable() -> None:
    text = OPSET + """
        g (float[2,3] x, int64[2] shape, float[1] bias) => (float[a,b] y) <int64[2] shape = {2, 3}, float[1] bias = {1}> {
            two = Add (bias, bias)
            r = Reshape (x, shape)
            y = Add (r, two)
        }
    """
    model = model_from_text(text)
    before = copy_model(model)
    result = FoldConstantsPass()(model, CompileContext())
    assert op_types(model) == ["Add", "Reshape", "Add"]  # no shortcut turned Reshape into Identity
    assert set(model.graph.initializers) == {"shape", "bias"}
    assert any("'bias' is also a graph input" in note for note in result.notes)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    overridden = {"x": x, "shape": np.array([3, 2], np.int64), "bias": np.array([5], np.float32)}
    assert run_onnxruntime(model, overridden)[0].shape == (3, 2)
    assert_same_outputs(before, model, overridden, EXACT)


def test_folded_graph_output_keeps_its_name() -> None:
    model = model_from_text(
        OPSET + "g (float[2] x) => (float[2] y, float[2] c) {\n c = Add (a, a)\n y = Mul (x, c) }",
        a=np.array([1, 2], np.float32),
    )
    before = copy_model(model)
    FoldConstantsPass()(model, CompileContext())
    assert [v.name for v in model.graph.outputs] == ["y", "c"]
    assert op_types(model) == ["Mul"]
    assert_same_outputs(before, model, random_feeds(model), FP32_REWRITE)


def test_numeric_on_random_and_real_inputs() -> None:
    model = messy_model()
    LiftConstantsPass()(model, CompileContext())
    before = copy_model(model)
    assert FoldConstantsPass()(model, CompileContext()).modified
    assert check_constants_folded(model) == []
    assert_same_outputs(before, model, random_feeds(model), FP32_REWRITE)

    real = torch_cnn_model()
    LiftConstantsPass()(real, CompileContext())
    before = copy_model(real)
    FoldConstantsPass()(real, CompileContext())
    assert check_constants_folded(real) == []
    assert_same_outputs(before, real, digits_feeds(), FP32_REWRITE)
