"""topological-sort: an out-of-order graph gets sorted; a sorted one is untouched."""

from __future__ import annotations

from compiler.context import CompileContext
from compiler.ir import copy_model
from compiler.verify import random_feeds
from passes.canonicalize.topological_sort import TopologicalSortPass
from tests.helpers import OPSET, assert_same_outputs, check_topo_sorted, model_from_text, op_types
from tests.tolerances import EXACT

UNSORTED = OPSET + "g (float[2] x) => (float[2] y) {\n y = Add (a, b)\n b = Relu (a)\n a = Neg (x) }"


def test_unsorted_graph_is_sorted_stably() -> None:
    model = model_from_text(UNSORTED)
    assert check_topo_sorted(model)
    before = copy_model(model)
    result = TopologicalSortPass()(model, CompileContext())
    assert result.modified and result.stats["moved"] == 2  # Relu keeps its slot
    assert op_types(model) == ["Neg", "Relu", "Add"]
    assert check_topo_sorted(model) == []
    assert_same_outputs(before, model, random_feeds(model), EXACT)


def test_sorted_graph_is_untouched() -> None:
    model = model_from_text(OPSET + "g (float[2] x) => (float[2] y) {\n a = Neg (x)\n b = Relu (x)\n y = Add (a, b) }")
    result = TopologicalSortPass()(model, CompileContext())
    assert result.modified is False and op_types(model) == ["Neg", "Relu", "Add"]


def test_subgraph_reordering_is_reported() -> None:
    model = model_from_text(
        OPSET + """
        g (bool c, float[2] x) => (float[2] y) {
            y = If (c) <
                then_branch = t () => (float[2] r) {\n r = Relu (n)\n n = Neg (x) },
                else_branch = e () => (float[2] q) {\n q = Neg (x) }
            >
        }"""
    )
    result = TopologicalSortPass()(model, CompileContext())
    assert result.modified is True  # only the subgraph moved; the library's own flag says False
    assert check_topo_sorted(model) == []
