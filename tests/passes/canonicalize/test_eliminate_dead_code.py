"""eliminate-dead-code: dead chains and unused initializers go; the signature stays."""

from __future__ import annotations

from compiler.context import CompileContext
from compiler.ir import copy_model, structural_fingerprint
from compiler.verify import random_feeds
from passes.canonicalize.eliminate_dead_code import EliminateDeadCodePass
from tests.helpers import OPSET, assert_same_outputs, check_dead_code_free, model_from_text, op_types, signature
from tests.tolerances import EXACT


def test_dead_chain_and_unused_initializer_removed_overridable_kept() -> None:
    model = model_from_text(
        OPSET + """
        g (float[2] x, float[2] d) => (float[2] y) <float[2] d = {1, 2}, float[2] w = {3, 4}> {
            a = Sigmoid (x)
            b = Add (a, w)
            y = Relu (x)
        }"""
    )
    before = copy_model(model)
    result = EliminateDeadCodePass()(model, CompileContext())
    assert result.stats == {"nodes_removed": 2, "initializers_removed": 1}
    assert op_types(model) == ["Relu"]
    assert list(model.graph.initializers) == ["d"]  # a graph input's default is part of the signature
    assert signature(model) == signature(before)
    assert check_dead_code_free(model) == []
    assert_same_outputs(before, model, random_feeds(model), EXACT)


def test_unused_optional_output_counts_as_a_modification() -> None:
    # The library prunes MaxPool's unused Indices without counting it; `modified` must say True.
    model = model_from_text(
        OPSET + "g (float[1,1,4,4] x) => (float[1,1,2,2] y) {\n y, idx = MaxPool <kernel_shape=[2,2], strides=[2,2]> (x) }"
    )
    fingerprint = structural_fingerprint(model)
    result = EliminateDeadCodePass()(model, CompileContext())
    assert result.modified is True and structural_fingerprint(model) != fingerprint
    assert len(model.graph.node(0).outputs) == 1
    assert EliminateDeadCodePass()(model, CompileContext()).modified is False
