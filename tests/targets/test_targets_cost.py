"""Per-target cost: estimate_table rows, the FINN-R fpga estimate, calibration fit/save/load."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest

from compiler.ir import from_proto
from targets import calibrate_cost as cc
from targets import fpga_cost, get_target
from targets.cost_model import RooflineCostModel, estimate_table
from tests.compiler.test_reference import integer_cnn_model


def float_model():
    proto = onnx.parser.parse_model(
        '<ir_version: 8, opset_import: ["" : 17]>\n'
        "g (float[1,8,16,16] x) => (float[1,16,16,16] y) {\n"
        "  a = Conv <pads = [1,1,1,1]> (x, W1)\n  b = Relu (a)\n"
        "  c = Conv <group = 8, pads = [1,1,1,1]> (b, W2)\n  y = Conv (c, W3)\n}"
    )
    rng = np.random.default_rng(0)
    for name, shape in (("W1", (8, 8, 3, 3)), ("W2", (8, 1, 3, 3)), ("W3", (16, 8, 1, 1))):
        proto.graph.initializer.append(onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name))
    return from_proto(onnx.shape_inference.infer_shapes(proto))


def integer_model(weight_scale: int = 1):
    proto = integer_cnn_model()
    if weight_scale != 1:  # shrink the offset-binary weight codes into the int4 range [-7, 7]
        for init in proto.graph.initializer:
            array = onnx.numpy_helper.to_array(init)
            if array.dtype == np.uint8 and array.ndim >= 2:
                codes = (array.astype(np.int16) - 128) // weight_scale
                init.CopyFrom(onnx.numpy_helper.from_array((codes + 128).astype(np.uint8), init.name))
    return from_proto(onnx.shape_inference.infer_shapes(proto))


@pytest.mark.parametrize("name", ["cpu", "rpi4", "jetson-orin-nano", "jetson-agx-orin", "gpu"])
def test_estimate_table_rows_match_the_roofline(name, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no saved calibration
    model, target = float_model(), get_target(name)
    rows = estimate_table(model, target)
    costs = RooflineCostModel(target).estimate_nodes(model)
    assert [r["node"] for r in rows] == ["Conv_0", "Relu_1", "Conv_2", "Conv_3"]
    for row, cost in zip(rows, costs):
        assert row["est_us"] == pytest.approx(cost.seconds * 1e6) and row["macs"] == cost.macs
        assert row["source"].startswith("estimate")
    assert rows[0]["macs"] == 16 * 16 * 8 * 8 * 9


def test_faster_boards_estimate_less():
    model = float_model()
    total = {n: sum(r["est_us"] for r in estimate_table(model, get_target(n), calibrated=False))
             for n in ("rpi4", "jetson-orin-nano", "jetson-agx-orin", "gpu")}
    assert total["rpi4"] > total["jetson-orin-nano"] > total["jetson-agx-orin"] > total["gpu"]


def test_fpga_estimate_uses_weight_bits_and_fits_the_budget():
    target = get_target("fpga")
    int8 = fpga_cost.estimate(integer_model(), target)
    int4 = fpga_cost.estimate(integer_model(weight_scale=32), target)  # |w| <= 127 // 32 + 1 -> 3 bits
    macs8 = [layer for layer in int8.layers if layer.mac_units]
    macs4 = [layer for layer in int4.layers if layer.mac_units]
    assert [layer.op_type for layer in macs8] == ["ConvInteger", "MatMulInteger"]
    assert all(layer.weight_bits == 8 and layer.activation_bits == 8 and layer.dsps > 0 for layer in macs8)
    assert all(layer.weight_bits <= 4 for layer in macs4)
    # w4 x a8 = 32 >= dsp_min_bit_product: still a DSP; raise the threshold and it becomes LUTs.
    lut_target = dataclasses.replace(target, spec={**target.spec, "fpga": {**target.spec["fpga"], "dsp_min_bit_product": 64}})
    in_luts = [layer for layer in fpga_cost.estimate(integer_model(weight_scale=32), lut_target).layers if layer.mac_units]
    assert all(layer.dsps == 0 and layer.luts > layer.mac_units * 4 * 8 for layer in in_luts)
    for est in (int8, int4):
        assert est.luts <= est.lut_budget and est.dsps <= est.dsp_budget
        assert est.latency_cycles >= est.interval_cycles > 0
        for layer in est.layers:
            if layer.mac_units:
                assert layer.cycles == -(-layer.macs // layer.mac_units)
    rows = estimate_table(integer_model(), target)
    assert {"luts", "dsps", "cycles", "mac_units", "w_bits"} <= set(rows[0])
    assert sum(r["cycles"] for r in rows) == int8.latency_cycles


def test_spearman_and_log_space_fit():
    assert cc.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert cc.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert cc.spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(0.8660254)
    samples = [cc.LayerSample("k", ["n"], "conv_kxk", p, 2.0 * p) for p in (1e-3, 2e-3, 4e-3)]
    samples += [cc.LayerSample("e", ["m"], "eltwise", p, 0.5 * p) for p in (1e-4, 3e-4)]
    factors, default = cc.fit_factors(samples)
    assert factors == pytest.approx({"conv_kxk": 2.0, "eltwise": 0.5})
    assert cc.score(samples, factors, default)["total_error"] == pytest.approx(0.0, abs=1e-12)
    assert cc.score(samples)["total_error"] < 0


def test_calibration_record_round_trip_and_table_use(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    target = get_target("cpu")
    record = cc.Calibration("cpu", {"conv_kxk": 3.0, "conv_depthwise": 5.0}, 2.0, ["m"], 3, {"tvm": "x"})
    path = cc.save_calibration(record)
    assert path == tmp_path / "edgekiln" / "cost-calibration" / "cpu.json"
    assert cc.load_calibration(target) == record
    model = float_model()
    raw = estimate_table(model, target, calibrated=False)
    cal = estimate_table(model, target)
    assert [r["efficiency"] for r in cal] == [3.0, 2.0, 5.0, 2.0]  # kxk, eltwise (default), depthwise, 1x1 (default)
    for a, b in zip(raw, cal):
        assert b["est_us"] == pytest.approx(a["est_us"] * b["efficiency"]) and "calibrated" in b["source"]
    path.write_text("{not json")
    assert cc.load_calibration(target) is None  # a damaged record is ignored, not fatal


def test_grouping_follows_fusion():
    model = float_model()
    groups = cc.group_nodes(model, RooflineCostModel(get_target("cpu")))
    assert [g.nodes for g in groups] == [["Conv_0", "Relu_1"], ["Conv_2"], ["Conv_3"]]  # Relu fused into the first Conv
    assert [g.family for g in groups] == ["conv_kxk", "conv_depthwise", "conv_1x1"]
    kernels = [("fused_conv2d_add_relu", 3e-3), ("transpose_pack", 1e-4), ("fused_group_conv2d", 1e-3), ("fused_conv2d1", 2e-3)]
    samples, unpaired = cc.pair_kernels(groups, kernels)
    assert [s.nodes for s in samples] == [["Conv_0", "Relu_1"], ["Conv_2"], ["Conv_3"]] and unpaired == 1


@pytest.mark.tvm
def test_measure_layers_pairs_every_conv(tmp_path):
    pytest.importorskip("tvm")
    samples, info = cc.collect_samples(float_model(), "cpu", repeats=2)
    assert info["paired"] == 3 and all(s.measured_s > 0 for s in samples)
    assert [s.family for s in samples] == ["conv_kxk", "conv_depthwise", "conv_1x1"]


def _synthetic_samples(truth, seed=0, noise=0.0):
    """Samples whose times follow ``truth[family] . features`` (optionally times lognormal noise)."""
    rng = np.random.default_rng(seed)
    samples = []
    for family, coeffs in truth.items():
        for i in range(12):
            features = (rng.uniform(1e-5, 2e-3), rng.uniform(1e-5, 5e-4), rng.uniform(0, 5e-4), 1e-6)
            seconds = float(np.dot(coeffs, features)) * float(np.exp(rng.normal(0, noise)))
            samples.append(cc.LayerSample(f"k{i}", [f"{family}_{i}"], family, 1e-3, seconds, features))
    return samples


def test_coefficient_fit_recovers_synthetic_coefficients():
    truth = {"conv_kxk": [1.5, 2.0, 1.2, 20.0], "conv_1x1": [0.8, 3.0, 0.5, 5.0], "pool": [0.0, 1.2, 0.0, 8.0]}
    samples = _synthetic_samples(truth)
    coefficients, pooled = cc.fit_coefficients(samples, prior_weight=0.0)  # exact data: independent fits are exact
    for family, coeffs in truth.items():
        assert coefficients[family] == pytest.approx(coeffs, rel=1e-6, abs=1e-6)
    assert all(c >= 0 for c in pooled)
    # with the pull toward the pooled model and 5% noise: still close, and ranks follow the data
    noisy = _synthetic_samples(truth, seed=1, noise=0.05)
    coefficients, pooled = cc.fit_coefficients(noisy, prior_weight=0.1)
    for family, coeffs in truth.items():
        assert coefficients[family][0] == pytest.approx(coeffs[0], rel=0.15, abs=0.1)  # compute
        assert coefficients[family][1] == pytest.approx(coeffs[1], rel=0.25, abs=0.25)  # activation
    record = cc.Calibration("cpu", {}, 1.0, coefficients=coefficients, pooled=pooled)
    result = cc.score(noisy, calibration=record)
    assert result["spearman"] > 0.95 and abs(result["total_error"]) < 1e-9  # match_total: sums agree
    # a family never measured uses the pooled coefficients
    assert record.predict("dense", (1e-3, 0, 0, 1e-6)) == pytest.approx(pooled[0] * 1e-3 + pooled[3] * 1e-6)
    with pytest.raises(Exception, match="features"):
        cc.fit_coefficients([cc.LayerSample("k", ["n"], "conv_kxk", 1e-3, 1e-3)])


def test_coefficient_record_round_trip_and_fused_table(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    target = get_target("cpu")
    coefficients = {"conv_kxk": [2.0, 1.0, 1.0, 10.0], "conv_depthwise": [1.0, 3.0, 1.0, 5.0]}
    record = cc.Calibration("cpu", {"conv_kxk": 3.0}, 2.0, ["m"], 3, {"tvm": "x"}, coefficients, [1.0, 1.0, 1.0, 7.0])
    path = cc.save_calibration(record)
    loaded = cc.load_calibration(target)
    assert loaded == record and loaded.has_coefficients
    assert '"schema": 2' in path.read_text()
    model = float_model()
    groups = cc.group_nodes(model, RooflineCostModel(target))
    rows = estimate_table(model, target)
    assert [r["node"] for r in rows] == ["Conv_0", "Relu_1", "Conv_2", "Conv_3"]
    assert rows[1]["est_us"] == 0.0 and rows[1]["fused_into"] == "Conv_0"  # the Relu runs inside the conv kernel
    for row, group in zip([rows[0], rows[2], rows[3]], groups):
        expected = float(np.dot(record.coefficients_for(group.family), group.features)) * 1e6
        assert row["est_us"] == pytest.approx(expected) and "calibrated" in row["source"]
        assert row["efficiency"] == pytest.approx(expected / (group.predicted_s * 1e6))
    assert rows[3]["est_us"] == pytest.approx(float(np.dot([1.0, 1.0, 1.0, 7.0], groups[2].features)) * 1e6)  # 1x1: pooled
    # group features: Conv_0+Relu_1 reads x and writes b (the intermediate a is not traffic), weights W1
    bandwidth = target.roofline["memory_bandwidth_gbps"] * 1e9
    compute, activation, weight, overhead = groups[0].features
    assert activation == pytest.approx((8 * 16 * 16 * 4 * 2) / bandwidth)
    assert weight == pytest.approx(8 * 8 * 9 * 4 / bandwidth) and overhead == 1e-6
    assert compute > 0
    # without calibration the table is the plain roofline
    raw = estimate_table(model, target, calibrated=False)
    assert all("efficiency" not in r and r["source"] == "estimate (roofline)" for r in raw)
    # a schema-1 record (factors only) still loads and scales per node
    old = record.to_json() | {"schema": 1}
    del old["coefficients"], old["pooled"]
    path.write_text(__import__("json").dumps(old))
    assert not cc.load_calibration(target).has_coefficients
    assert [r["efficiency"] for r in estimate_table(model, target)] == [3.0, 2.0, 2.0, 2.0]
