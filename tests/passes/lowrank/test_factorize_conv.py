"""factorize-conv: both forms exact at full rank with strides/pads kept; error formulas; auto by cost."""

from __future__ import annotations

import numpy as np
import pytest

import passes.lowrank  # noqa: F401  (registers the passes; passes/__init__ does not import it yet)
from compiler.context import CompileContext
from compiler.ir import constant_array, copy_model
from compiler.verify import random_feeds, run_onnxruntime
from compiler.layer_grams import GramRequest, input_grams
from passes.lowrank.conv import FactorizeConvPass
from passes.lowrank.decompose import relative_output_error, tucker2
from targets.cost_model import RooflineCostModel
from targets.registry import get_target
from tests.helpers import OPSET, FACT_CHECKS, assert_same_outputs, count, facts_holding, model_from_text, op_types
from tests.tolerances import FP32_REWRITE, LOWRANK_ERROR_FORMULA_RTOL, LOWRANK_EY_RTOL

M, C = 12, 8
ATTRS = "pads=[1,2,1,0], strides=[2,1], dilations=[1,2]"


def _conv_model(weight=(M, C, 3, 3), x="[2,8,11,10]", out="[2,12,6,8]", attrs=ATTRS):
    return model_from_text(
        OPSET + f"g (float{x} x) => (float{out} y) {{ y = Conv <{attrs}> (x, w, b) }}",
        w=weight, b=(np.shape(weight)[0] if isinstance(weight, np.ndarray) else weight[0],),
    )


def _ints(node, name):
    return list(node.attributes[name].as_ints()) if name in node.attributes else None


@pytest.mark.parametrize(("form", "convs", "spatial"), [("channel-svd", 2, 0), ("tucker2", 3, 1)])
def test_full_rank_equals_original_with_strides_pads_on_the_kxk_part(form: str, convs: int, spatial: int) -> None:
    model = _conv_model()
    before, facts = copy_model(model), facts_holding(model)
    result = FactorizeConvPass(rank=C * 9, form=form)(model, CompileContext())
    assert result.modified and result.stats["forms"] == {"Conv_0": form}
    assert op_types(model) == ["Conv"] * convs
    nodes = list(model.graph)
    kxk = nodes[spatial]
    assert _ints(kxk, "kernel_shape") == [3, 3] and _ints(kxk, "pads") == [1, 2, 1, 0]
    assert _ints(kxk, "strides") == [2, 1] and _ints(kxk, "dilations") == [1, 2]
    for node in nodes[:spatial] + nodes[spatial + 1 :]:
        assert _ints(node, "kernel_shape") == [1, 1] and _ints(node, "pads") is None and _ints(node, "strides") is None
    assert nodes[-1].inputs[2].name == "b" and nodes[-1].outputs[0].name == "y"  # bias and output kept
    assert_same_outputs(before, model, random_feeds(model), FP32_REWRITE)
    for fact in facts & FactorizeConvPass.preserves:
        assert FACT_CHECKS[fact](model) == [], fact


def test_channel_svd_rank_k_obeys_eckart_young() -> None:
    model = _conv_model()
    weight = constant_array(model.graph.initializers["w"]).astype(np.float64)
    rank = 4
    FactorizeConvPass(rank=rank, form="channel-svd")(model, CompileContext())
    first, last = (constant_array(n.inputs[1]).astype(np.float64) for n in model.graph)
    approx = last.reshape(M, rank) @ first.reshape(rank, -1)
    sigma = np.linalg.svd(weight.reshape(M, -1), compute_uv=False)
    expected = np.sqrt(np.sum(sigma[rank:] ** 2) / np.sum(sigma**2))
    measured = np.linalg.norm(approx - weight.reshape(M, -1)) / np.linalg.norm(weight)
    assert measured == pytest.approx(expected, rel=LOWRANK_EY_RTOL)


def test_tucker2_projection_identity_hosvd_bound_and_output_error_table() -> None:
    model = _conv_model()
    weight = constant_array(model.graph.initializers["w"]).astype(np.float64)
    r1, r2 = 3, 5
    plain = tucker2(weight)
    approx = plain.reconstruct(r1, r2)
    error2 = np.sum((weight - approx) ** 2)
    # Orthogonal projection: ||W - W'||^2 = ||W||^2 - ||core block||^2 ...
    assert error2 == pytest.approx(np.sum(weight**2) - np.sum(plain.core[:r2, :r1] ** 2), rel=LOWRANK_EY_RTOL)
    assert np.sqrt(error2 / np.sum(weight**2)) == pytest.approx(plain.errors[r2, r1], rel=LOWRANK_EY_RTOL)
    # ... and the HOSVD bound by the discarded singular values of the two unfoldings.
    assert error2 <= np.sum(plain.sigma_out[r2:] ** 2) + np.sum(plain.sigma_in[r1:] ** 2)

    # With calibration data the table holds the relative *output* error of every (r1, r2):
    # compare with running the factorized model (im2col Gram, strides/pads/dilations included).
    feeds = [random_feeds(model, seed=s) for s in range(2)]
    node = next(iter(model.graph))
    gram = input_grams(model, feeds, [GramRequest("c", node, C * 9)])["c"]
    table = tucker2(weight, gram).errors
    direct = relative_output_error(weight.reshape(M, -1), approx.reshape(M, -1), gram)  # tr(D G D^T), no cumsums
    assert table[r2, r1] == pytest.approx(direct, rel=LOWRANK_ERROR_FORMULA_RTOL)
    before = copy_model(model)
    result = FactorizeConvPass(rank=r2, form="tucker2")(model, CompileContext(calibration=feeds))
    assert result.stats["ranks"] == {"Conv_0": [r2, r2]}
    bias = constant_array(before.graph.initializers["b"])[None, :, None, None]
    num = den = 0.0
    for feed in feeds:  # the bias is not part of W x: subtract it from both outputs
        y = run_onnxruntime(before, feed)[0] - bias
        y_hat = run_onnxruntime(model, feed)[0] - bias
        num += float(np.sum((y_hat - y).astype(np.float64) ** 2))
        den += float(np.sum(y.astype(np.float64) ** 2))
    assert np.sqrt(num / den) == pytest.approx(table[r2, r2], rel=LOWRANK_ERROR_FORMULA_RTOL)
    assert f"rel. output error {table[r2, r2]:.2%}" in result.notes[0]


def _cpu_context(feeds) -> CompileContext:
    target = get_target("cpu")
    return CompileContext(target=target, cost_model=RooflineCostModel(target), calibration=[feeds])


def test_auto_factorizes_a_wide_low_rank_conv_and_leaves_a_tiny_one_dense() -> None:
    rng = np.random.default_rng(0)
    channels, true_rank = 64, 8
    # A 64x64x3x3 kernel whose channel modes have rank 8 (plus a little noise): both forms pay.
    core = rng.standard_normal((true_rank, true_rank, 3, 3))
    weight = np.einsum("ij...,mi,cj->mc...", core, rng.standard_normal((channels, true_rank)), rng.standard_normal((channels, true_rank)))
    weight = (weight + 1e-3 * rng.standard_normal(weight.shape)).astype(np.float32)
    big = _conv_model(weight, x="[1,64,16,16]", out="[1,64,16,16]", attrs="pads=[1,1,1,1]")
    before = copy_model(big)
    feeds = random_feeds(big)
    ctx = _cpu_context(feeds)
    result = FactorizeConvPass()(big, ctx)
    assert result.modified, result.notes
    assert "ms estimated" in result.notes[0] and "other form" in result.notes[0]
    assert all(r % ctx.target.channel_multiple == 0 for r in result.stats["ranks"]["Conv_0"])
    assert ctx.cost_model.estimate(big).seconds < ctx.cost_model.estimate(before).seconds
    y, y_hat = run_onnxruntime(before, feeds)[0], run_onnxruntime(big, feeds)[0]
    assert np.linalg.norm(y_hat - y) / np.linalg.norm(y - constant_array(before.graph.initializers["b"])[None, :, None, None]) <= FactorizeConvPass.max_error

    tiny = _conv_model((4, 2, 3, 3), x="[1,2,4,4]", out="[1,4,4,4]", attrs="pads=[1,1,1,1]")
    result = FactorizeConvPass(max_error=0.9)(tiny, _cpu_context(random_feeds(tiny)))
    assert not result.modified and count(tiny, "Conv") == 1
    assert "left dense: factorized estimate" in result.notes[0]


def test_grouped_conv_is_left_alone_with_a_reason() -> None:
    model = model_from_text(
        OPSET + "g (float[1,4,5,5] x) => (float[1,4,5,5] y) { y = Conv <group=2, pads=[1,1,1,1]> (x, w) }",
        w=(4, 2, 3, 3),
    )
    result = FactorizeConvPass(rank=1)(model, CompileContext())
    assert not result.modified and "group=2" in result.notes[0]
