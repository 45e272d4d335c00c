"""``compile --prune/--lowrank``: the compression passes join the default pipeline in order and
their decisions reach the report; bad values are one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from compiler import compile_model
from compiler.api import default_pipeline
from compiler.cli import main
from compiler.pipeline import Pipeline

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "digits_cnn.onnx"


def test_default_pipeline_orders_prune_lowrank_quantize():
    spec = default_pipeline(None, quantize="int8", prune=0.3, lowrank="auto")
    names = [p.name for p in Pipeline.parse(spec)]
    assert names.index("prune-channels") < names.index("factorize-conv") < names.index("quantize")
    assert "prune-channels{ratio=0.3,mode=latency}" in spec


def test_prune_and_lowrank_decisions_are_reported(tmp_path):
    result = compile_model(EXAMPLE, output=tmp_path / "c", prune=0.3, lowrank="auto", lower=False)
    passes = {p["name"]: p for p in result.report["passes"]}
    assert any("channels" in note for note in passes["prune-channels"]["notes"])
    assert passes["factorize-conv"]["notes"] and passes["factorize-gemm"]["notes"]
    accuracy = result.report["summary"]["accuracy"]
    assert accuracy["optimized_onnxruntime"]["samples"] == accuracy["original_onnxruntime"]["samples"]


@pytest.mark.parametrize(("option", "value", "needle"), [("--prune", "1.5", "between 0 and 1"), ("--lowrank", "lots", "'auto' or an energy")])
def test_bad_compression_options(tmp_path, capsys, option, value, needle):
    code = main([str(EXAMPLE), option, value, "-o", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0]
    assert not (tmp_path / "o").exists()


def test_estimate_only_prints_table_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([str(EXAMPLE), "--estimate-only", "--quantize", "int8"]) == 0
    out = capsys.readouterr().out
    assert "ConvInteger" in out and "total (estimate" in out
    assert not list(tmp_path.iterdir())
