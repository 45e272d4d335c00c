"""prune-channels: exact against the zeroed model, ratio and rounding, options, notes, latency mode."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest

from compiler.context import CompileContext
from compiler.errors import OptionError
from compiler.ir import copy_model, ir, to_proto
from compiler.pipeline import Pipeline
from compiler.verify import compare, random_feeds, run_onnxruntime
from passes.prune.channels import PruneChannelsPass
from passes.prune.dependency import analyze
from targets.cost_model import RooflineCostModel
from targets.registry import get_target
from tests.helpers import check_shapes_inferred, signature
from tests.passes.prune._models import TEXT_MODELS, prepared, residual_model, zero_removed_channels
from tests.tolerances import PRUNE_ZEROED

RATIO = 0.4
HALF = 0.5  # the exact tests: a 2-unit group (grouped Conv) loses one unit in every mode
SEEDS = (1, 2)
WIDE = 32  # channels of the residual model in the rounding tests
MULTIPLE = 8
WEAK_SCALE = 1e-3  # shrinks chosen filters far below the N(0, 1) others


def _target(multiple: int):
    return dataclasses.replace(get_target("cpu"), channel_multiple=multiple)


def assert_pruned_equals_zeroed(model, the_pass, ctx):
    """Plan on the model, zero the chosen channels in a copy (A), prune the model (B): A == B."""
    zeroed = copy_model(model)
    plan = the_pass.plan(model, ctx)
    removed = plan.removed_by_name()
    assert removed, "the pass chose nothing to prune: the test would be vacuous"
    assert zero_removed_channels(zeroed, removed) > 0
    before = signature(model)
    result = the_pass(model, ctx)
    assert result.modified and result.stats["channels_removed"] > 0
    assert signature(model) == before
    onnx.checker.check_model(to_proto(model), full_check=True)
    assert check_shapes_inferred(model) == []
    for seed in SEEDS:
        feeds = random_feeds(model, seed=seed)
        check = compare(run_onnxruntime(model, feeds), run_onnxruntime(zeroed, feeds), PRUNE_ZEROED)
        assert check["passed"], check
    return result


@pytest.mark.parametrize("mode", ["uniform", "global"])
@pytest.mark.parametrize("name", sorted(TEXT_MODELS))
def test_pruned_equals_zeroed_on_text_models(name, mode):
    model = prepared(TEXT_MODELS[name]())
    assert_pruned_equals_zeroed(model, PruneChannelsPass(ratio=HALF, mode=mode, reconstruct=False), CompileContext())


def test_pruned_shapes_match_onnx_shape_inference():
    model = prepared(TEXT_MODELS["pad_resize_split"]())
    PruneChannelsPass(ratio=RATIO, reconstruct=False)(model, CompileContext())
    inferred = onnx.shape_inference.infer_shapes(to_proto(model), strict_mode=True)
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in inferred.graph.value_info}
    for node in model.graph:
        for value in node.outputs:
            if value.name in dims:
                assert list(value.shape) == dims[value.name], value.name


def test_uniform_ratio_is_respected_per_group():
    model = prepared(residual_model(WIDE))
    the_pass = PruneChannelsPass(ratio=RATIO, reconstruct=False)
    plan = the_pass.plan(model, CompileContext())
    eligible = [i for i, g in enumerate(plan.groups) if g.eligible]
    assert eligible and set(plan.kept) == set(eligible)
    for i in eligible:
        assert len(plan.kept[i]) == round(plan.groups[i].size * (1 - RATIO))


def test_kept_counts_are_rounded_to_the_channel_multiple():
    model = prepared(residual_model(WIDE))
    ctx = CompileContext(target=_target(MULTIPLE))
    the_pass = PruneChannelsPass(ratio=RATIO, reconstruct=False)
    plan = the_pass.plan(model, ctx)
    assert plan.kept
    for i, keep in plan.kept.items():
        assert len(keep) % MULTIPLE == 0 and 0 < len(keep) < plan.groups[i].size
    the_pass(model, ctx)
    conv_channels = [n.outputs[0].shape[1] for n in model.graph if n.op_type == "Conv"]
    assert all(c % MULTIPLE == 0 for c in conv_channels), conv_channels


def test_rounding_never_goes_below_one_multiple_or_min_channels():
    model = prepared(residual_model(WIDE))
    nearly_all = 0.99
    plan = PruneChannelsPass(ratio=nearly_all, reconstruct=False).plan(model, CompileContext(target=_target(MULTIPLE)))
    assert all(len(k) == MULTIPLE for k in plan.kept.values())
    floor = MULTIPLE + 1  # not a multiple: rounded up to the next one
    plan = PruneChannelsPass(ratio=nearly_all, min_channels=floor, reconstruct=False).plan(
        model, CompileContext(target=_target(MULTIPLE))
    )
    assert all(len(k) == 2 * MULTIPLE for k in plan.kept.values())


def test_l1_importance_removes_the_weakest_filters():
    model = prepared(residual_model())
    groups = analyze(model)
    (group,) = [g for g in groups if g.name == "c"]
    weight_value = group.sources[0].inputs[1]
    weight = weight_value.const_value.numpy().copy()
    weak = [1, 5, 6]
    weight[weak] *= WEAK_SCALE
    weight_value.const_value = ir.tensor(weight, name=weight_value.name)
    plan = PruneChannelsPass(ratio=len(weak) / group.size, reconstruct=False).plan(model, CompileContext())
    index = [i for i, g in enumerate(plan.groups) if g.name == "c"][0]
    assert sorted(set(range(group.size)) - set(plan.kept[index].tolist())) == weak


@pytest.mark.parametrize("importance", ["l2", "bn", "activation"])
def test_every_importance_criterion_prunes_exactly(importance):
    model = prepared(residual_model(WIDE))
    ctx = CompileContext(calibration=[random_feeds(model, seed=s) for s in SEEDS])
    result = assert_pruned_equals_zeroed(model, PruneChannelsPass(ratio=RATIO, importance=importance, reconstruct=False), ctx)
    if importance == "bn":  # BN was folded by canonicalize: the note says where the scale came from
        assert any("folded" in n for n in result.notes)


def test_latency_mode_cuts_estimated_time_and_notes_every_decision():
    model = prepared(residual_model(WIDE))
    target = _target(MULTIPLE)
    cost_model = RooflineCostModel(target)
    before = cost_model.estimate(model).seconds
    ctx = CompileContext(target=target, cost_model=cost_model)
    result = assert_pruned_equals_zeroed(model, PruneChannelsPass(ratio=RATIO, mode="latency", reconstruct=False), ctx)
    after = cost_model.estimate(model).seconds
    assert after < before
    assert result.stats["estimated_ms_after"] < result.stats["estimated_ms_before"]
    pruned = [n for n in result.notes if "->" in n and "channels" in n]
    assert pruned and all("ms estimated" in n for n in pruned)
    assert any("ineligible" in n for n in result.notes)  # the output Gemm


def test_latency_mode_needs_a_cost_model():
    with pytest.raises(OptionError, match="cost model"):
        PruneChannelsPass(mode="latency")(prepared(residual_model()), CompileContext())


def test_activation_importance_needs_calibration():
    with pytest.raises(OptionError, match="calibration"):
        PruneChannelsPass(importance="activation")(prepared(residual_model()), CompileContext())


@pytest.mark.parametrize(
    "spec", ["prune-channels{mode=fastest}", "prune-channels{ratio=1.5}", "prune-channels{importance=taylor}", "prune-channels{min_channels=0}"]
)
def test_bad_options_are_rejected_by_the_pipeline_parser(spec):
    with pytest.raises(OptionError):
        Pipeline.parse(spec)


def test_spec_round_trips():
    pipeline = Pipeline.parse("prune-channels{ratio=0.25,mode=global,importance=l2,reconstruct=false,min_channels=4}")
    assert Pipeline.parse(str(pipeline)) == pipeline


def test_nothing_to_prune_reports_unmodified():
    model = prepared(residual_model())
    fingerprint = to_proto(model).SerializeToString(deterministic=True)
    result = PruneChannelsPass(ratio=0.0)(model, CompileContext())
    assert not result.modified
    assert to_proto(model).SerializeToString(deterministic=True) == fingerprint


def test_old_weights_are_not_mutated():
    model = prepared(residual_model())
    arrays = {name: v.const_value.numpy().copy() for name, v in model.graph.initializers.items()}
    tensors = {name: v.const_value for name, v in model.graph.initializers.items()}
    PruneChannelsPass(ratio=RATIO, reconstruct=False)(model, CompileContext())
    for name, tensor in tensors.items():
        assert np.array_equal(tensor.numpy(), arrays[name]), name
