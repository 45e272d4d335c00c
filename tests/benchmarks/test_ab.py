"""benchmarks/ab.py: variants compiled from source trees, outputs compared, paired timing."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import ab
from benchmarks.timing import interleaved_samples

REPO = Path(__file__).resolve().parents[2]


def test_parse_variants_and_env():
    variants = ab.parse_variants(["base=.", "wide=."], ["wide:EK_X=1", "wide:EK_Y=a=b"])
    assert list(variants) == ["base", "wide"]
    assert variants["base"][1] == {} and variants["wide"][1] == {"EK_X": "1", "EK_Y": "a=b"}


@pytest.mark.parametrize(
    "specs,envs,message",
    [(["base"], [], "expected NAME=TREE"), (["base=/nonexistent"], [], "not an edgekiln source tree"),
     (["a=.", "a=."], [], "already taken"), (["onnxruntime=."], [], "already taken"),
     (["a=."], ["b:K=1"], "no variant named 'b'"), (["a=."], ["a:K"], "expected NAME:KEY=VALUE")],
)
def test_bad_specs_are_one_line_errors(specs, envs, message):
    with pytest.raises(ab.ABError, match=message):
        ab.parse_variants(specs, envs)


def test_paired_ratio_is_per_round():
    """Round i of every variant is divided by round i of the reference: a slow phase of the
    machine that doubles both does not move the ratio."""
    samples = {"onnxruntime": [1.0, 2.0, 1.0, 2.0, 1.0], "x": [1.5, 3.0, 1.5, 3.0, 1.5]}
    stats = ab.summarize(samples, "onnxruntime")
    assert stats["x"]["paired_ratio"] == pytest.approx(1.5)
    assert stats["onnxruntime"]["paired_ratio"] == pytest.approx(1.0)
    assert stats["x"]["median_ms"] == pytest.approx(1.5)


def test_paired_rounds_times_every_callable_each_round():
    calls = {"a": 0, "b": 0}

    def make(name):
        def fn():
            calls[name] += 1
        return fn

    samples = interleaved_samples({"a": make("a"), "b": make("b")}, runs=4, warmup=1, block=1)
    assert [len(v) for v in samples.values()] == [4, 4]
    assert calls == {"a": 1 + 2 * 4, "b": 1 + 2 * 4}  # warm-up, then an untimed + a timed call per round


@pytest.mark.tvm
def test_ab_on_digits_compiles_both_trees_and_compares_outputs(capsys):
    pytest.importorskip("tvm")
    # fp32 keeps it short: the int8 path's calibration file and ORT quantize_static are the latency
    # suite's helpers (test_latency_smoke)
    code = ab.main(["digits", f"one={REPO}", f"two={REPO}", "--env", "two:EDGEKILN_AB_TEST=1", "--runs", "5"])
    assert code == 0
    out = capsys.readouterr().out
    assert "reference: onnxruntime fp32" in out
    rows = [line for line in out.splitlines() if line.startswith(("one ", "two "))]
    assert len(rows) == 2 and all(line.endswith("identical") for line in rows)


def test_cli_rejects_a_missing_tree(capsys):
    assert ab.main(["digits", "x=/nonexistent"]) == 2
    assert "not an edgekiln source tree" in capsys.readouterr().err
