"""The per-pass numeric check names the first pass whose outputs diverge, and writes nothing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from compiler import compile_model
from compiler.cli import main
from compiler.errors import VerificationError
from compiler.ir import ir
from compiler.pass_base import Pass, PassResult, Tolerance, register_pass

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "digits_cnn.onnx"


@register_pass
@dataclasses.dataclass(frozen=True)
class PerturbWeightsPass(Pass):
    """Scales the first 4-D initializer by ``factor`` while claiming to be a float-exact rewrite."""

    name = "test-perturb-weights"
    factor: float = 1.01
    tolerance = Tolerance.FP32_REWRITE

    def run(self, model, ctx):
        for value in model.graph.initializers.values():
            array = value.const_value.numpy()
            if array.ndim == 4:
                value.const_value = ir.tensor((array * self.factor).astype(array.dtype), name=value.name)
                return PassResult(model, modified=self.factor != 1.0)
        return PassResult(model, modified=False)


def test_diverging_pass_is_named_and_nothing_is_written(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(VerificationError, match=r"pass 'test-perturb-weights' changed the model's outputs beyond the fp32-rewrite tolerance.*passes before it: infer-shapes"):
        compile_model(EXAMPLE, output=out, passes="canonicalize,test-perturb-weights", lower=False)
    assert not out.exists()


def test_exact_rewrite_passes_the_check_and_is_recorded(tmp_path):
    result = compile_model(EXAMPLE, output=tmp_path / "ok", passes="canonicalize,test-perturb-weights{factor=1.0}", lower=False)
    checks = {p["name"]: p["check"] for p in result.report["passes"]}
    assert checks["fold-batchnorm"]["passed"] and checks["fold-batchnorm"]["policy"] == "fp32-rewrite"
    assert checks["test-perturb-weights"]["skipped"] == "model not modified"


def test_no_verify_skips_per_pass_checks(tmp_path):
    result = compile_model(EXAMPLE, output=tmp_path / "nv", passes="canonicalize,test-perturb-weights", lower=False, verify=False)
    assert all(p["check"] is None for p in result.report["passes"])
    assert result.report["summary"]["verification"]["per_pass"] is False


def test_cli_exit_code_for_verification_failure(tmp_path, capsys):
    code = main([str(EXAMPLE), "-o", str(tmp_path / "o"), "--passes", "canonicalize,test-perturb-weights", "--no-lower", "--quiet"])
    assert code == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "test-perturb-weights" in err[0]
    assert not any(p.name.startswith(".o.") for p in tmp_path.iterdir())
    assert not (tmp_path / "o").exists()
