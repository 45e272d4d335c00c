"""Roofline cost model: exact MAC/byte counts, the roofline max, unknown ops, calibration."""

from __future__ import annotations

import types

import numpy as np
import onnx
import pytest

from compiler.errors import OptionError
from compiler.ir import Model, from_proto
from targets import get_target
from targets.cost_model import TOTAL, Cost, RooflineCostModel, model_work, node_work

HEADER = '<ir_version: 8, opset_import: ["" : 17, "custom.domain" : 1]>\n'


def make_model(graph: str, initializers: dict[str, tuple[tuple[int, ...], type]] | None = None) -> Model:
    """Parse ONNX text, add seeded initializers, run ONNX shape inference, convert to IR."""
    proto = onnx.parser.parse_model(HEADER + graph)
    rng = np.random.default_rng(0)
    for name, (shape, dtype) in (initializers or {}).items():
        array = rng.integers(-3, 4, size=shape).astype(dtype)
        proto.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    return from_proto(proto)


def fake_target(fp32: float = 100.0, int8: float = 400.0, bandwidth: float = 10.0, overhead: float = 2.0):
    return types.SimpleNamespace(
        name="fake",
        roofline={"peak_gops": {"fp32": fp32, "int8": int8}, "memory_bandwidth_gbps": bandwidth,
                  "kernel_overhead_us": overhead},
    )


def only_node(model: Model):
    (work,) = model_work(model)
    return work


# -- MACs -----------------------------------------------------------------------------------------
def test_conv_grouped_strided_padded_macs_and_bytes():
    # X [2,8,15,15], W [16, 8/4, 3, 3], stride 2, pad 1 -> Y [2,16,8,8] (floor((15+2-3)/2)+1 = 8)
    model = make_model(
        "g (float[2,8,15,15] x) => (float[2,16,8,8] y) { y = Conv<group=4, strides=[2,2], pads=[1,1,1,1]>(x, w) }",
        {"w": ((16, 2, 3, 3), np.float32)},
    )
    work = only_node(model)
    assert work.output_shapes == ((2, 16, 8, 8),)
    assert work.macs == 2 * 16 * 8 * 8 * 2 * 3 * 3  # N*M*OH*OW*(C/g)*KH*KW = 36864
    assert work.ops == 2 * work.macs
    assert work.params == 16 * 2 * 3 * 3
    assert work.bytes == 4 * (2 * 8 * 15 * 15 + 16 * 2 * 3 * 3 + 2 * 16 * 8 * 8)
    assert work.precision == "fp32" and work.known


def test_conv_dilated_with_bias_counts_no_bias_macs():
    # dilation 2 makes the 3x3 kernel span 5: Y spatial = 10 - 5 + 1 = 6
    model = make_model(
        "g (float[1,3,10,10] x) => (float[1,4,6,6] y) { y = Conv<dilations=[2,2]>(x, w, b) }",
        {"w": ((4, 3, 3, 3), np.float32), "b": ((4,), np.float32)},
    )
    work = only_node(model)
    assert work.macs == 1 * 4 * 6 * 6 * 3 * 3 * 3
    assert work.params == 4 * 3 * 3 * 3 + 4


def test_depthwise_conv_macs():
    model = make_model(
        "g (float[1,32,16,16] x) => (float[1,32,16,16] y) { y = Conv<group=32, pads=[1,1,1,1]>(x, w) }",
        {"w": ((32, 1, 3, 3), np.float32)},
    )
    assert only_node(model).macs == 32 * 16 * 16 * 9


def test_conv_integer_is_int8_with_exact_macs_and_bytes():
    model = make_model(
        "g (uint8[1,4,6,6] x) => (int32[1,8,4,4] y) { y = ConvInteger(x, w) }",
        {"w": ((8, 4, 3, 3), np.int8)},
    )
    work = only_node(model)
    assert work.macs == 8 * 4 * 4 * 4 * 3 * 3
    assert work.precision == "int8"
    assert work.bytes == 1 * 4 * 6 * 6 + 1 * 8 * 4 * 3 * 3 + 4 * 8 * 4 * 4


def test_gemm_macs_with_transposes():
    model = make_model(
        "g (float[6,4] a) => (float[4,5] y) { y = Gemm<transA=1, transB=1>(a, b, c) }",
        {"b": ((5, 6), np.float32), "c": ((5,), np.float32)},
    )
    work = only_node(model)
    assert work.output_shapes == ((4, 5),)
    assert work.macs == 4 * 5 * 6


def test_batched_and_broadcast_matmul_macs():
    model = make_model(
        """g (float[3,2,4,5] a, float[2,1,4,5] c, float[3,5,6] d) => (float[3,2,4,7] y, float[2,3,4,6] z) {
            y = MatMul(a, b)
            z = MatMul(c, d)
        }""",
        {"b": ((5, 7), np.float32)},
    )
    batched, broadcast = model_work(model)
    assert batched.macs == 3 * 2 * 4 * 7 * 5
    assert broadcast.output_shapes == ((2, 3, 4, 6),)
    assert broadcast.macs == 2 * 3 * 4 * 6 * 5


def test_matmul_integer_is_int8():
    model = make_model("g (int8[2,8,16] a, int8[16,4] b) => (int32[2,8,4] y) { y = MatMulInteger(a, b) }")
    work = only_node(model)
    assert (work.macs, work.precision) == (2 * 8 * 4 * 16, "int8")


def test_elementwise_pool_norm_softmax_ops():
    model = make_model(
        """g (float[1,4,8,8] x) => (float[1,4,4,4] p, float[1,4,1,1] q, float[1,4,8,8] s, float[1,4,8,8] n) {
            r = Relu(x)
            p = MaxPool<kernel_shape=[3,3], strides=[2,2], pads=[1,1,1,1]>(r)
            q = GlobalAveragePool(r)
            s = Softmax<axis=1>(r)
            n = BatchNormalization(r, sc, bi, mu, va)
        }""",
        {k: ((4,), np.float32) for k in ("sc", "bi", "mu", "va")},
    )
    relu, pool, gap, softmax, bn = model_work(model)
    elements = 4 * 8 * 8
    assert (relu.macs, relu.ops) == (0, elements)
    assert pool.ops == 4 * 4 * 4 * 9
    assert gap.ops == elements
    assert softmax.ops == 3 * elements
    assert bn.ops == 2 * elements and bn.params == 16
    assert all(w.known for w in (relu, pool, gap, softmax, bn))


def test_views_cost_nothing():
    model = make_model("g (float[2,3,4] x) => (float[2,12] y) { y = Flatten(x) }")
    (cost,) = RooflineCostModel(fake_target()).estimate_nodes(model)
    assert (cost.bytes, cost.seconds, cost.bound, cost.known) == (0, 0.0, "none", True)


# -- roofline ---------------------------------------------------------------------------------------
CONV_TEXT = "g (float[1,16,32,32] x) => (float[1,16,32,32] y) { y = Conv<pads=[1,1,1,1]>(x, w) }"
CONV_INIT = {"w": ((16, 16, 3, 3), np.float32)}


def test_roofline_compute_bound_when_peak_is_low():
    model = make_model(CONV_TEXT, CONV_INIT)
    cost_model = RooflineCostModel(fake_target(fp32=0.001, bandwidth=1000.0, overhead=3.0))
    (cost,) = cost_model.estimate_nodes(model)
    compute = cost.ops / (0.001 * 1e9)
    memory = cost.bytes / (1000.0 * 1e9)
    assert compute > memory
    assert cost.bound == "compute"
    assert cost.seconds == compute + 3.0 * 1e-6
    assert cost.source == "roofline"


def test_roofline_memory_bound_when_bandwidth_is_low():
    model = make_model(CONV_TEXT, CONV_INIT)
    cost_model = RooflineCostModel(fake_target(fp32=1e6, bandwidth=0.001, overhead=0.0))
    (cost,) = cost_model.estimate_nodes(model)
    memory = cost.bytes / (0.001 * 1e9)
    assert cost.bound == "memory"
    assert cost.seconds == memory
    assert cost.memory_seconds > cost.compute_seconds


def test_peak_is_chosen_by_precision():
    model = make_model("g (int8[64,64] a, int8[64,64] b) => (int32[64,64] y) { y = MatMulInteger(a, b) }")
    (cost,) = RooflineCostModel(fake_target(fp32=1.0, int8=4.0, bandwidth=1e6, overhead=0.0)).estimate_nodes(model)
    assert cost.compute_seconds == 2 * 64**3 / (4.0 * 1e9)


def test_estimate_sums_nodes_and_counts_shared_weights_once():
    model = make_model(
        """g (float[2,8] a) => (float[2,8] y) {
            h = MatMul(a, w)
            y = MatMul(h, w)
        }""",
        {"w": ((8, 8), np.float32)},
    )
    cost_model = RooflineCostModel(fake_target())
    nodes = cost_model.estimate_nodes(model)
    total = cost_model.estimate(model)
    assert isinstance(total, Cost) and total.source == "roofline"
    assert total.macs == 2 * (2 * 8 * 8)
    assert total.params == 64
    assert total.seconds == sum(n.seconds for n in nodes)
    assert total.bytes == sum(n.bytes for n in nodes)
    assert Cost.measured(1e-3, total).source == "measured"


def test_cpu_target_spec_builds_a_cost_model():
    cost_model = RooflineCostModel(get_target("cpu"))
    assert cost_model.peak_gops["int8"] > cost_model.peak_gops["fp32"] > 0


def test_bad_roofline_table_is_an_option_error():
    with pytest.raises(OptionError, match="peak_gops"):
        RooflineCostModel(types.SimpleNamespace(name="t", roofline={"memory_bandwidth_gbps": 1.0}))
    with pytest.raises(OptionError, match="> 0"):
        RooflineCostModel(fake_target(bandwidth=0.0))


# -- unknown ops and shapes -------------------------------------------------------------------------
def test_unknown_op_is_flagged_and_its_bytes_counted():
    model = make_model(
        """g (float[1,4,8,8] x) => (float[1,4,8,8] y) {
            t = custom.domain.Mystery(x)
            y = Relu(x)
        }"""
    )
    mystery = node_work(model.graph.node(0), 0)
    assert not mystery.known
    assert "Mystery" in mystery.reason
    assert mystery.bytes == 4 * 4 * 8 * 8  # input only: the output's shape is unknown
    assert mystery.macs == 0
    (cost, relu) = RooflineCostModel(fake_target()).estimate_nodes(model)
    assert cost.seconds > 0 and not cost.known
    assert relu.known


def test_unknown_standard_op_and_symbolic_shapes_are_flagged():
    model = make_model(
        """g (float[N,16] a, float[4,4] s) => (float[N,8] y, float[4,4] e) {
            y = MatMul(a, w)
            e = Einsum<equation="ij,jk->ik">(s, s)
        }""",
        {"w": ((16, 8), np.float32)},
    )
    matmul, einsum = model_work(model)
    assert not matmul.known and "unknown" in matmul.reason
    assert matmul.macs == 0
    assert matmul.bytes == 4 * 16 * 8  # only the static weight
    assert not einsum.known and "Einsum" in einsum.reason
    assert einsum.bytes == 4 * 16 * 2


# -- calibration ------------------------------------------------------------------------------------
def two_layer_model() -> Model:
    return make_model(
        """g (float[1,16,32,32] x) => (float[1,16,32,32] y) {
            c = Conv<pads=[1,1,1,1]>(x, w)
            y = Relu(c)
        }""",
        CONV_INIT,
    )


def test_calibrate_total_scales_every_estimate():
    model = two_layer_model()
    base = RooflineCostModel(fake_target())
    estimate = base.estimate(model).seconds
    calibrated = base.calibrate({TOTAL: 3 * estimate}, model)
    assert calibrated.scale == pytest.approx(3.0)
    assert calibrated.estimate(model).seconds == pytest.approx(3 * estimate)
    for before, after in zip(base.estimate_nodes(model), calibrated.estimate_nodes(model)):
        assert after.seconds == pytest.approx(3 * before.seconds)
        assert after.bound == before.bound
    assert calibrated.peak_gops["fp32"] == pytest.approx(base.peak_gops["fp32"] / 3)
    assert base.estimate(model).seconds == estimate  # the original is unchanged


def test_calibrate_by_node_label_and_compose():
    model = two_layer_model()
    base = RooflineCostModel(fake_target())
    conv = base.estimate_nodes(model)[0]
    assert conv.name == "Conv_0"  # unnamed nodes are labelled <op_type>_<index>
    half = base.calibrate({"Conv_0": conv.seconds / 2}, model)
    assert half.estimate_nodes(model)[0].seconds == pytest.approx(conv.seconds / 2)
    quarter = half.calibrate({"Conv_0": conv.seconds / 4}, model)
    assert quarter.scale == pytest.approx(0.25)


def test_calibrate_rejects_bad_measurements():
    model = two_layer_model()
    base = RooflineCostModel(fake_target())
    with pytest.raises(OptionError, match="no node labelled 'nope'"):
        base.calibrate({"nope": 1e-3}, model)
    with pytest.raises(OptionError, match="> 0"):
        base.calibrate({TOTAL: 0.0}, model)
    with pytest.raises(OptionError, match="no measurements"):
        base.calibrate({}, model)
