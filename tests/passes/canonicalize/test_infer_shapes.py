"""infer-shapes: structural (dtypes/shapes appear, data propagation), failure modes, numeric."""

from __future__ import annotations

import pytest

from compiler.context import CompileContext
from compiler.ir import copy_model
from compiler.verify import random_feeds
from passes.canonicalize.infer_shapes import InferShapesPass
from tests.helpers import OPSET, assert_same_outputs, check_shapes_inferred, model_from_text, torch_cnn_model, digits_feeds
from tests.tolerances import EXACT

RESHAPE_BY_COMPUTED_SHAPE = (
    OPSET
    + """
    g (float[2,3,4] x) => (float[a,b,c] y) {
        s = Shape (x)
        first = Slice (s, zero, two)
        last = Slice (s, two, three)
        shape = Concat <axis=0> (last, first)
        y = Reshape (x, shape)
    }
    """
)


def _reshape_model():
    import numpy as np

    return model_from_text(
        RESHAPE_BY_COMPUTED_SHAPE,
        zero=np.array([0], np.int64), two=np.array([2], np.int64), three=np.array([3], np.int64),
    )


def _value(model, name):
    return next(v for node in model.graph for v in node.outputs if v.name == name)


def test_every_value_gets_dtype_and_shape() -> None:
    model = _reshape_model()
    assert check_shapes_inferred(model)  # the parsed model has no intermediate types
    result = InferShapesPass()(model, CompileContext())
    assert result.modified
    assert check_shapes_inferred(model) == []
    assert result.stats["values_without_shape"] == 0


def test_data_propagation_gives_concrete_dims_to_computed_shapes() -> None:
    with_prop, without = _reshape_model(), _reshape_model()
    InferShapesPass(data_prop=True)(with_prop, CompileContext())
    InferShapesPass(data_prop=False)(without, CompileContext())
    assert list(_value(with_prop, "y").shape) == [4, 2, 3]
    assert not all(isinstance(d, int) for d in _value(without, "y").shape)


def test_unknown_op_is_noted_not_fatal() -> None:
    model = model_from_text(
        '<ir_version: 10, opset_import: ["" : 17, "custom" : 1]>'
        "g (float[2] x) => (float[2] y) { h = custom.Foo (x)\n y = Relu (h) }"
    )
    result = InferShapesPass()(model, CompileContext())
    assert result.stats["values_without_shape"] == 1
    assert "(h)" in result.notes[0]


def test_invalid_model_raises_instead_of_claiming_shapes() -> None:
    model = model_from_text(OPSET + "g (float[2] x, int64[2] k) => (float[2] y) { y = Add (x, k) }")
    with pytest.raises(RuntimeError, match="inconsistent type"):
        InferShapesPass()(model, CompileContext())


def test_second_run_changes_nothing() -> None:
    model = _reshape_model()
    InferShapesPass()(model, CompileContext())
    assert InferShapesPass()(model, CompileContext()).modified is False


def test_outputs_bit_exact_on_random_and_real_inputs() -> None:
    model = _reshape_model()
    before = copy_model(model)
    InferShapesPass()(model, CompileContext())
    assert_same_outputs(before, model, random_feeds(model), EXACT)

    real = torch_cnn_model()
    before = copy_model(real)
    InferShapesPass()(real, CompileContext())
    assert_same_outputs(before, real, digits_feeds(), EXACT)
