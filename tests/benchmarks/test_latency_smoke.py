"""Smoke tests of the latency and quantization-accuracy suites on the digits example: the int8
variants (``--quantize int8`` and ``int8-w7``) compile, run and report (small and fast)."""

from __future__ import annotations

import pytest

pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm


def test_latency_suite_measures_both_int8_variants():
    from benchmarks import latency

    variants = ("onnxruntime_fp32", "ours_int8", "ours_int8_w7")
    result = latency.bench_model("digits", batch=1, runs=3, threads=1, variants=variants)
    assert list(result["variants"]) == list(variants)
    for name, entry in result["variants"].items():
        assert entry["status"] == "ok", (name, entry.get("reason"))
        assert entry["median_ms"] > 0 and entry["ratio_to_onnxruntime_fp32"] > 0
    for name in variants[1:]:
        entry = result["variants"][name]
        assert entry["compile_s"] > 0 and entry["unscheduled"] == []
        assert entry["cosine_vs_fp32"] > 0.99  # the quantized artifact still computes the model


def test_accuracy_suite_seven_bit_weights_stay_close_to_eight():
    from benchmarks import quant_accuracy

    result = quant_accuracy.bench_model("digits", 32, 64, ["ours_int8", "ours_int8_w7"])
    eight, seven = result["variants"]["ours_int8"], result["variants"]["ours_int8_w7"]
    assert eight["status"] == seven["status"] == "ok"
    # one bit less of weight precision costs a few dB, never the model
    assert eight["sqnr_db"] - 6.0 < seven["sqnr_db"] < eight["sqnr_db"] + 1.0
    assert seven["top1_agreement"] >= 0.95
