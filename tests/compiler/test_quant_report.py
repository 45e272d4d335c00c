"""``compiler.quant_report``: per-layer SQNR of a quantized compile and final-output agreement."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import targets
from compiler.accuracy import load_npz_feeds, split_batches
from compiler.context import CompileContext
from compiler.ir import copy_model, load_model
from compiler.pipeline import Pipeline
from compiler.quant_report import QUANT_MAP_KEY, layer_sqnr, output_agreement, quant_map, sqnr_db

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "digits_cnn.onnx"
CALIB = REPO / "examples" / "digits_cnn.calib.npz"


@pytest.fixture(scope="module")
def feeds():
    arrays, _ = load_npz_feeds(CALIB, ["x"])
    return split_batches(arrays, 1)  # the example has a static batch of 1


def _compile(spec: str, feeds):
    """(float model after canonicalize, quantized model) for ``canonicalize,<spec>``."""
    model = load_model(EXAMPLE)
    ctx = CompileContext(target=targets.get_target("cpu"), calibration=feeds)
    snapshot = {}

    def after(p, record, m):
        if p.name != "quantize":
            snapshot["float"] = copy_model(m)

    Pipeline.parse(f"canonicalize,{spec}").run(model, ctx, after_pass=after)
    return snapshot["float"], model


@pytest.fixture(scope="module")
def int8(feeds):
    return _compile("quantize", feeds)


@pytest.fixture(scope="module")
def int4(feeds):
    return _compile("quantize{bits=4}", feeds)


def test_quantize_records_the_tensor_map(int8):
    original, quantized = int8
    record = json.loads(quantized.metadata_props[QUANT_MAP_KEY])
    produced = {v.name for n in quantized.graph for v in n.outputs}
    originals = {v.name for v in original.graph.inputs} | {v.name for n in original.graph for v in n.outputs}
    assert record and set(record) <= originals
    for qname, scale, zero_point in record.values():
        assert qname in produced and scale > 0 and 0 <= zero_point <= 255
    assert quant_map(quantized).keys() == record.keys()


def test_every_conv_and_gemm_layer_has_a_good_finite_sqnr(int8, feeds):
    rows = layer_sqnr(*int8, feeds)
    assert [r["sqnr_db"] for r in rows] == sorted(r["sqnr_db"] for r in rows)  # worst first
    layers = {n.name for n in int8[0].graph if n.op_type in ("Conv", "Gemm")}
    scored = {r["node"]: r for r in rows if r["op_type"] in ("Conv", "Gemm")}
    assert layers and set(scored) == layers
    for row in scored.values():
        assert math.isfinite(row["sqnr_db"]) and row["sqnr_db"] > 20, row
    assert all({"node", "op_type", "sqnr_db"} <= set(r) for r in rows)


def test_four_bit_weights_lower_the_sqnr(int8, int4, feeds):
    good = {r["tensor"]: r["sqnr_db"] for r in layer_sqnr(*int8, feeds)}
    bad = {r["tensor"]: r["sqnr_db"] for r in layer_sqnr(*int4, feeds)}
    assert good.keys() == bad.keys()
    assert any(bad[t] < good[t] - 3 for t in good)


def test_output_agreement(int8, int4, feeds):
    for models in (int8, int4):
        result = output_agreement(*models, feeds)
        assert 0.0 <= result["top1_agreement"] <= 1.0
        assert -1.0 <= result["cosine"] <= 1.0 + 1e-9 and result["max_abs"] >= 0
    good = output_agreement(*int8, feeds)
    assert good["top1_agreement"] >= 0.95 and good["cosine"] > 0.99
    same = output_agreement(int8[0], int8[0], feeds[:5])
    assert same["top1_agreement"] == 1.0 and same["max_abs"] == 0.0


def test_unquantized_model_and_sqnr_edges(int8, feeds):
    with pytest.raises(ValueError, match=QUANT_MAP_KEY):
        layer_sqnr(int8[0], int8[0], feeds)
    with pytest.raises(ValueError):
        layer_sqnr(*int8, [])
    assert sqnr_db(4.0, 0.0) == math.inf
    assert sqnr_db(100.0, 1.0) == pytest.approx(20.0)
