"""eliminate-identity: Identity and inference Dropout disappear; graph output names survive."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.context import CompileContext
from compiler.ir import copy_model
from compiler.verify import random_feeds
from passes.canonicalize.eliminate_identity import EliminateIdentityPass
from tests.helpers import OPSET, assert_same_outputs, digits_feeds, model_from_text, op_types, torch_cnn_model
from tests.tolerances import EXACT


def _run(model):
    before = copy_model(model)
    result = EliminateIdentityPass()(model, CompileContext())
    assert_same_outputs(before, model, random_feeds(model), EXACT)
    return result


@pytest.mark.parametrize(
    "dropout",
    [
        "d = Dropout <seed=1> (h)",
        "d = Dropout (h, ratio)",
        "d = Dropout (h, ratio, off)",  # training_mode: constant initializer false
        "t = Constant <value = bool {0}> ()\n d = Dropout (h, ratio, t)",  # Constant-node false
        "d, mask = Dropout (h)",  # unused mask
    ],
)
def test_identity_and_inference_dropout_are_removed(dropout: str) -> None:
    model = model_from_text(
        OPSET + f"g (float[2,3] x) => (float[2,3] y) {{\n h = Identity (x)\n {dropout}\n y = Relu (d) }}",
        ratio=np.array(0.5, np.float32), off=np.array(False),
    )
    result = _run(model)
    assert result.stats == {"identity": 1, "dropout": 1}
    assert "Identity" not in op_types(model) and "Dropout" not in op_types(model)
    assert model.graph.node(len(model.graph) - 1).inputs[0] is model.graph.inputs[0]


@pytest.mark.parametrize(
    "graph_inputs, dropout, reason",
    [
        (", bool training", "d = Dropout (h, ratio, training)", "not a constant"),
        ("", "d = Dropout (h, ratio, on)", "training_mode is true"),
        ("", "d, mask = Dropout (h)\n z = Not (mask)", "mask output"),
    ],
)
def test_dropout_that_may_drop_stays(graph_inputs: str, dropout: str, reason: str) -> None:
    outputs = ", bool[2,3] z" if "mask" in dropout else ""
    model = model_from_text(
        OPSET + f"g (float[2,3] x{graph_inputs}) => (float[2,3] y{outputs}) {{\n h = Neg (x)\n {dropout}\n y = Relu (d) }}",
        ratio=np.array(0.5, np.float32), on=np.array(True),
    )
    result = EliminateIdentityPass()(model, CompileContext())
    assert result.modified is False and "Dropout" in op_types(model)
    assert reason in result.notes[0]


def test_graph_output_keeps_its_name() -> None:
    model = model_from_text(OPSET + "g (float[2] x) => (float[2] y) {\n h = Neg (x)\n y = Identity (h) }")
    _run(model)
    assert op_types(model) == ["Neg"]
    assert model.graph.outputs[0].name == "y" and model.graph.outputs[0].producer().op_type == "Neg"


@pytest.mark.parametrize(
    "body, reason",
    [
        ("y = Identity (x)\n z = Neg (x)", "graph input or initializer"),
        ("z = Neg (x)\n y = Identity (z)", "duplicates graph output 'z'"),
    ],
)
def test_identity_needed_by_outputs_stays(body: str, reason: str) -> None:
    model = model_from_text(OPSET + f"g (float[2] x) => (float[2] y, float[2] z) {{\n {body} }}")
    result = EliminateIdentityPass()(model, CompileContext())
    assert result.modified is False and "Identity" in op_types(model)
    assert reason in result.notes[0]


def test_real_exported_cnn_on_digits() -> None:
    model = torch_cnn_model()
    assert "Identity" in op_types(model)  # the exporter's Dropout in eval mode
    before = copy_model(model)
    assert EliminateIdentityPass()(model, CompileContext()).modified
    assert "Identity" not in op_types(model)
    assert_same_outputs(before, model, digits_feeds(), EXACT)
