"""lift-constants: every attribute kind becomes an initializer of the right dtype and shape."""

from __future__ import annotations

import numpy as np

from compiler.context import CompileContext
from compiler.ir import DataType, copy_model
from compiler.verify import random_feeds
from passes.canonicalize.lift_constants import LiftConstantsPass
from tests.helpers import (
    OPSET,
    assert_same_outputs,
    count,
    digits_feeds,
    messy_model,
    model_from_text,
    torch_cnn_model,
)
from tests.tolerances import EXACT


def test_all_value_kinds_are_lifted_with_their_dtype_and_shape() -> None:
    model = messy_model()
    result = LiftConstantsPass()(model, CompileContext())
    assert result.modified and result.stats == {"lifted": 5}
    assert count(model, "Constant") == 0
    inits = model.graph.initializers
    expected = {  # name: (dtype, shape, values)
        "k": (DataType.FLOAT, (3,), [1.0, 2.0, 3.0]),
        "f": (DataType.FLOAT, (), [2.0]),
        "fs": (DataType.FLOAT, (3,), [1.0, 1.0, 1.0]),
        "i": (DataType.INT64, (), [1]),
        "shape": (DataType.INT64, (2,), [2, 3]),
    }
    for name, (dtype, shape, values) in expected.items():
        tensor = inits[name].const_value
        assert (tensor.dtype, tuple(tensor.shape)) == (dtype, shape), name
        np.testing.assert_array_equal(tensor.numpy().reshape(-1), values)
        assert inits[name].uses(), f"{name} is not wired to its consumer"


def test_constant_graph_output_stays_a_node_with_a_note() -> None:
    model = model_from_text(
        OPSET + "g (float[2] x) => (float[2] y, float[2] c) {\n c = Constant <value_floats = [1.0, 2.0]> ()\n y = Add (x, c) }"
    )
    result = LiftConstantsPass()(model, CompileContext())
    assert result.modified is False
    assert count(model, "Constant") == 1
    assert "graph output" in result.notes[0]


def test_outputs_bit_exact_on_random_and_real_inputs() -> None:
    model = messy_model()
    before = copy_model(model)
    LiftConstantsPass()(model, CompileContext())
    assert_same_outputs(before, model, random_feeds(model), EXACT)

    real = torch_cnn_model()
    assert count(real, "Constant") > 0  # the dynamo exporter stores shape tensors as Constant nodes
    before = copy_model(real)
    assert LiftConstantsPass()(real, CompileContext()).modified
    assert count(real, "Constant") == 0
    assert_same_outputs(before, real, digits_feeds(), EXACT)
