"""The channel dependency analysis: ties through residual Add, Concat, depthwise/grouped Conv,
Flatten, Split; unknown ops and graph outputs make groups ineligible with a reason."""

from __future__ import annotations

import numpy as np

from compiler.context import CompileContext
from passes.prune.channels import PruneChannelsPass
from passes.prune.dependency import analyze
from tests.passes.prune._models import (
    concat_model,
    depthwise_flatten_model,
    grouped_model,
    pad_resize_split_model,
    prepared,
    reshape_model,
    residual_model,
    unknown_op_model,
)


def _group_of(groups, value_name):
    found = [g for g in groups if any(m.value.name == value_name for m in g.members)]
    assert found, f"no group holds '{value_name}'"
    return found


def _member(group, value_name):
    return next(m for m in group.members if m.value.name == value_name)


def test_residual_add_ties_both_branches_into_one_group():
    groups = analyze(prepared(residual_model()))
    (group,) = _group_of(groups, "s")
    names = {m.value.name for m in group.members}
    assert {"a", "ra", "b", "s", "rs"} <= names
    assert {n.outputs[0].name for n in group.sources} == {"a", "b"}  # both Convs feeding the Add
    assert {n.outputs[0].name for n in group.sinks} == {"b", "c"}  # both Convs reading the stream
    assert group.eligible and group.size == 8
    for member in group.members:  # channel c of every tensor is unit c
        assert [u.tolist() for u in member.units] == [[c] for c in range(8)]


def test_concat_offsets_map_each_input_to_its_slot():
    groups = analyze(prepared(concat_model()))
    (group_a,) = [g for g in _group_of(groups, "cat") if any(m.value.name == "a" for m in g.members)]
    (group_b,) = [g for g in _group_of(groups, "cat") if any(m.value.name == "b" for m in g.members)]
    assert np.concatenate(_member(group_a, "cat").units).tolist() == list(range(0, 6))
    assert np.concatenate(_member(group_b, "cat").units).tolist() == list(range(6, 16))
    assert _member(group_b, "cat").units[3].tolist() == [9]  # unit 3 of b is concat channel 6 + 3
    assert group_a.eligible and group_b.eligible


def test_depthwise_conv_passes_channels_through_and_flatten_maps_feature_blocks():
    groups = analyze(prepared(depthwise_flatten_model()))
    (group,) = _group_of(groups, "d")
    assert {n.outputs[0].name for n in group.sources} == {"a", "d"}  # depthwise Conv is a member
    flat = _member(group, "f")  # [2, 8*4*4]: channel c -> features c*16 .. c*16+15
    spatial = 4 * 4
    for c, unit in enumerate(flat.units):
        assert unit.tolist() == list(range(c * spatial, (c + 1) * spatial))
    assert [n.op_type for n in group.sinks] == ["Gemm"]
    assert group.eligible


def test_grouped_conv_units_are_whole_groups():
    groups = analyze(prepared(grouped_model()))
    (group,) = _group_of(groups, "gc")
    assert group.size == 2  # group=2: a unit is one Conv group
    assert [u.tolist() for u in _member(group, "ra").units] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [u.tolist() for u in _member(group, "gc").units] == [[0, 1, 2], [3, 4, 5]]
    assert group.unit_width == 4


def test_split_on_channels_gives_one_group_per_slice():
    groups = analyze(prepared(pad_resize_split_model()))
    split_groups = sorted((g for g in groups if any(m.value.name == "a" for m in g.members)), key=lambda g: g.size)
    assert [g.size for g in split_groups] == [3, 5]
    assert np.concatenate(_member(split_groups[1], "a").units).tolist() == [3, 4, 5, 6, 7]
    assert all(g.eligible for g in split_groups)


def test_unknown_op_makes_its_group_ineligible_with_the_reason_in_the_notes():
    model = prepared(unknown_op_model())
    groups = analyze(model)
    (blocked,) = _group_of(groups, "a")
    assert not blocked.eligible and "Softmax" in blocked.reason
    result = PruneChannelsPass(ratio=0.5, reconstruct=False)(model, CompileContext())
    assert any("ineligible" in n and "Softmax" in n for n in result.notes), result.notes
    shapes = {n.outputs[0].name: list(n.outputs[0].shape) for n in model.graph}
    assert shapes["a"][1] == 8  # the blocked group kept every channel
    assert shapes["b"][1] == 4  # the other group was pruned


def test_reshape_with_unknown_mapping_is_ineligible():
    (group,) = [g for g in analyze(prepared(reshape_model())) if g.name == "a"]
    assert not group.eligible and "Reshape" in group.reason and "unknown mapping" in group.reason


def test_graph_output_channels_are_never_pruned():
    groups = analyze(prepared(residual_model()))
    (out_group,) = _group_of(groups, "y")
    assert not out_group.eligible and "graph output" in out_group.reason
