"""prune-channels on real architectures (canonicalized ResNet-18 and MobileNetV2 from the zoo):
the residual streams, depthwise blocks and the Flatten -> Gemm head are grouped correctly, and the
pruned model equals the model with the same channels zeroed."""

from __future__ import annotations

import pytest

from compiler.context import CompileContext
from compiler.ir import load_model
from passes.prune.channels import PruneChannelsPass
from passes.prune.dependency import analyze
from tests.passes.prune._models import prepared
from tests.passes.prune.test_prune_channels import RATIO, assert_pruned_equals_zeroed

pytest.importorskip("torch")

# Residual streams: ResNet-18 has one per stage (stem + layer1, then layer2..4), each fed by
# several Convs; MobileNetV2's expand -> depthwise pairs are one group each.
RESNET_STAGE_WIDTHS = [64, 128, 256, 512]


@pytest.fixture(scope="module")
def zoo():
    from tests.data.make_models import model_path

    return {name: model_path(name) for name in ("resnet18", "mobilenetv2", "transformer")}


def test_resnet18_residual_stages_are_single_groups(zoo):
    groups = analyze(prepared(load_model(zoo["resnet18"])))
    streams = [g for g in groups if len(g.sources) > 1]
    assert [g.size for g in streams] == RESNET_STAGE_WIDTHS
    assert all(g.eligible for g in streams)
    assert all(sum(m.value.producer().op_type == "Add" for m in g.members) == 2 for g in streams)
    (head,) = [g for g in groups if not g.eligible]
    assert "graph output" in head.reason


def test_mobilenetv2_depthwise_convs_join_their_expand_group(zoo):
    groups = analyze(prepared(load_model(zoo["mobilenetv2"])))
    depthwise = [
        n for n in load_model(zoo["mobilenetv2"]).graph
        if n.op_type == "Conv" and n.attributes.get("group") is not None and n.attributes["group"].as_int() > 1
    ]
    in_groups = {s.name for g in groups for s in g.sources if s.attributes.get("group") is not None and s.attributes["group"].as_int() > 1}
    assert len(in_groups) == len(depthwise)
    assert all(g.eligible for g in groups if g.name != "/classifier/classifier.1/Gemm")


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2"])
@pytest.mark.parametrize("mode", ["uniform", "global"])
def test_pruned_zoo_model_equals_zeroed(zoo, name, mode):
    model = prepared(load_model(zoo[name]))
    assert_pruned_equals_zeroed(model, PruneChannelsPass(ratio=RATIO, mode=mode, reconstruct=False), CompileContext())


def test_transformer_prunes_only_the_feed_forward_hidden_channels(zoo):
    """The FFN hidden width (MatMul -> GELU as Erf/Mul/Div/Add -> MatMul) is prunable; the head
    split Reshape and the residual stream from the embedding are not, with their reasons."""
    model = prepared(load_model(zoo["transformer"]))
    groups = analyze(model)
    eligible = [g for g in groups if g.eligible]
    assert eligible and all(g.sources[0].name.endswith("fc1/MatMul") for g in eligible)
    assert any(not g.eligible and "Reshape" in g.reason for g in groups)
    assert_pruned_equals_zeroed(model, PruneChannelsPass(ratio=RATIO, reconstruct=False), CompileContext())
