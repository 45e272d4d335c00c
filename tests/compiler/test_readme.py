"""The README's examples work as written: the user-pass module and the Python snippet."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import onnx
import pytest

from compiler.cli import main

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def _code_block(starting_with: str) -> str:
    for block in re.findall(r"```python\n(.*?)```", README, flags=re.S):
        if block.startswith(starting_with):
            return block
    raise AssertionError(f"README has no python block starting with {starting_with!r}")


def test_readme_user_pass_runs_through_the_cli_plugin_option(tmp_path, monkeypatch):
    (tmp_path / "my_passes.py").write_text(_code_block("# my_passes.py"))
    monkeypatch.syspath_prepend(str(tmp_path))
    command = re.search(r'compile model\.onnx --plugin my_passes --passes "([^"]+)"', README)
    assert command, "README lost its --plugin example"
    out = tmp_path / "out"
    code = main([str(REPO / "examples" / "digits_cnn.onnx"), "--plugin", "my_passes", "--passes", command.group(1),
                 "-o", str(out), "--no-lower", "--quiet"])
    assert code == 0
    names = [n.name for n in onnx.load(str(out / "model.opt.onnx")).graph.node]
    assert names and all(name.startswith("edge/") for name in names)
    assert "prefix-node-names{prefix=edge/}" in (out / "pipeline.txt").read_text()
    sys.modules.pop("my_passes", None)


@pytest.mark.tvm
def test_readme_python_snippet_runs(tmp_path, monkeypatch):
    out = tmp_path / "digits_cnn-cpu"
    assert main([str(REPO / "examples" / "digits_cnn.onnx"), "-o", str(out), "--quiet", "--no-measure"]) == 0
    monkeypatch.chdir(REPO)
    snippet = _code_block("import numpy as np\nfrom compiler import load_artifact").replace('"digits_cnn-cpu"', repr(str(out)))
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)  # noqa: S102 - the README is ours
    assert scope["logits"].shape == (1, 10)
