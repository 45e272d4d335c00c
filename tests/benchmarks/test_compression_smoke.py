"""Smoke test of ``python -m benchmarks.compression`` on the digits example (small and fast)."""

from __future__ import annotations

import json

from benchmarks import compression


def test_digits_compression_benchmark_writes_json(tmp_path, capsys):
    assert compression.main(["--models", "digits", "--runs", "2", "--results-dir", str(tmp_path)]) == 0
    files = list(tmp_path.glob("compression-*.json"))
    assert len(files) == 1
    record = json.loads(files[0].read_text())
    assert record["runs"] == 2 and record["machine"]["cpu"]
    (result,) = record["results"]
    assert result["model"] == "digits"
    assert set(result["variants"]) == set(compression.VARIANTS)
    for name, entry in result["variants"].items():
        assert entry["status"] == "ok", (name, entry.get("error"))
        assert entry["latency"]["median_ms"] > 0 and entry["latency"]["runs"] >= 2
        assert entry["ratio_to_baseline"] > 0
        assert set(entry["estimated_ms"]) == {"before", "after"}
        assert 0.0 <= entry["proxy"]["top1_agreement"] <= 1.0
        assert -1.0 <= entry["proxy"]["cosine_mean"] <= 1.0 + 1e-9
        assert 0.0 <= entry["eval_top1"]["artifact_tvm"] <= 1.0
        if name != "baseline":
            assert entry["layers"] and entry["profile"]["before"]["model_ms"] > 0
            changed = [r for r in entry["layers"] if r["status"] in ("pruned", "factorized")]
            assert all(r["measured_ms_before"] is not None for r in changed)
    base = result["variants"]["baseline"]
    assert base["ratio_to_baseline"] == 1.0
    assert base["proxy"]["top1_agreement"] == 1.0
    assert "digits" in capsys.readouterr().out
