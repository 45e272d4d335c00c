"""Bad input: each case exits non-zero with one clear line naming the problem and leaves no output.

These run ``compiler.cli.main`` in-process (the same code the ``compile`` console script runs).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.cli import main

GOOD_TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,4] x) => (float[1,4] y) {
   y = Relu (x)
}
"""


def _write(path: Path, text: str) -> Path:
    path.write_bytes(onnx.parser.parse_model(text).SerializeToString())
    return path


def _run(tmp_path: Path, capsys, *args: str) -> tuple[int, str]:
    out = tmp_path / "out"
    code = main([*args, "-o", str(out), "--quiet", "--no-measure"])
    err = capsys.readouterr().err.strip()
    assert not out.exists(), "a failed compile must leave no output directory"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")], "temporary folder left behind"
    return code, err


def _assert_one_line(err: str, *needles: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one error line, got: {err!r}"
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


def test_missing_file(tmp_path, capsys):
    code, err = _run(tmp_path, capsys, str(tmp_path / "nope.onnx"))
    assert code == 2
    _assert_one_line(err, "nope.onnx", "no such file")


def test_not_onnx(tmp_path, capsys):
    path = tmp_path / "notes.onnx"
    path.write_text("this is not a protobuf\n" * 10)
    code, err = _run(tmp_path, capsys, str(path))
    assert code == 2
    _assert_one_line(err, "notes.onnx", "ONNX")


def test_truncated_protobuf(tmp_path, capsys):
    good = onnx.parser.parse_model(GOOD_TEXT)
    good.graph.initializer.append(numpy_helper.from_array(np.ones((64, 64), np.float32), "w"))
    data = good.SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    code, err = _run(tmp_path, capsys, str(path))
    assert code == 2
    _assert_one_line(err, "cut.onnx")


def test_invalid_graph(tmp_path, capsys):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    node = helper.make_node("Add", ["x", "undefined_value"], ["y"], name="add0")
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "bad.onnx"
    path.write_bytes(model.SerializeToString())
    code, err = _run(tmp_path, capsys, str(path))
    assert code == 2
    _assert_one_line(err, "bad.onnx", "invalid ONNX graph", "undefined_value")


def test_unknown_target(tmp_path, capsys):
    path = _write(tmp_path / "m.onnx", GOOD_TEXT)
    code, err = _run(tmp_path, capsys, str(path), "--target", "toaster")
    assert code == 2
    _assert_one_line(err, "unknown target 'toaster'", "cpu")


def test_external_data_outside_model_folder(tmp_path, capsys):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones(4, np.float32).tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    model = onnx.parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,4] x) => (float[1,4] y) <float[4] w> { y = Add (x, w) }
        """
    )
    # The text form declares `w` without data; protobuf's append copies, so re-fetch the element.
    model.graph.initializer.append(numpy_helper.from_array(np.ones(4, np.float32), "w"))
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", os.path.join("..", "secret.bin")), ("offset", "0"), ("length", "16")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    path = folder / "m.onnx"
    path.write_bytes(model.SerializeToString())
    code, err = _run(tmp_path, capsys, str(path))
    assert code == 2
    _assert_one_line(err, "m.onnx", "outside the model's folder")


def test_dynamic_dims_without_input_shape(tmp_path, capsys):
    path = _write(
        tmp_path / "dyn.onnx",
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N,4] x) => (float[N,4] y) { y = Relu (x) }
        """,
    )
    code, err = _run(tmp_path, capsys, str(path))
    assert code == 2
    _assert_one_line(err, "input 'x'", "symbolic", "--input-shape x=1,4")


@pytest.mark.parametrize(
    ("option", "needle"),
    [
        ("y=1,4", "not an input"),
        ("x=1,5", "dim 1 is 4"),
        ("x=1", "rank 1"),
        ("x", "NAME=D0,D1"),
        ("x=a,b", "integers"),
    ],
)
def test_bad_input_shape_option(tmp_path, capsys, option, needle):
    path = _write(tmp_path / "m.onnx", GOOD_TEXT)
    code, err = _run(tmp_path, capsys, str(path), "--input-shape", option)
    assert code == 2
    _assert_one_line(err, needle)


def test_unknown_pass(tmp_path, capsys):
    path = _write(tmp_path / "m.onnx", GOOD_TEXT)
    code, err = _run(tmp_path, capsys, str(path), "--passes", "canonicalize,frobnicate")
    assert code == 2
    _assert_one_line(err, "unknown pass 'frobnicate'")


def test_existing_output_needs_force(tmp_path, capsys):
    path = _write(tmp_path / "m.onnx", GOOD_TEXT)
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    code = main([str(path), "-o", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    _assert_one_line(err, "already exists", "--force")
    assert (out / "keep.txt").read_text() == "user data"


def test_missing_calibration_file(tmp_path, capsys):
    path = _write(tmp_path / "m.onnx", GOOD_TEXT)
    code, err = _run(tmp_path, capsys, str(path), "--calib", str(tmp_path / "nothere.npz"))
    assert code == 2
    _assert_one_line(err, "nothere.npz")


def test_calibration_missing_input(tmp_path, capsys):
    path = _write(tmp_path / "m.onnx", GOOD_TEXT)
    calib = tmp_path / "c.npz"
    np.savez(calib, wrong=np.zeros((3, 4), np.float32))
    code, err = _run(tmp_path, capsys, str(path), "--calib", str(calib))
    assert code == 2
    _assert_one_line(err, "c.npz", "'x'")


@pytest.mark.tvm
def test_unsupported_operator(tmp_path, capsys):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    node = helper.make_node("FrobnicateOp", ["x"], ["y"], name="frob0", domain="com.example")
    model = helper.make_model(
        helper.make_graph([node], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
    )
    path = tmp_path / "custom.onnx"
    path.write_bytes(model.SerializeToString())
    code, err = _run(tmp_path, capsys, str(path), "--no-verify")
    assert code == 2
    _assert_one_line(err, "FrobnicateOp", "frob0")


def test_help_mentions_examples(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "compile examples/digits_cnn.onnx --target cpu" in capsys.readouterr().out


def test_no_model_is_a_usage_error(capsys):
    assert main([]) == 2
    assert "give a model" in capsys.readouterr().err


def test_sensitivity_without_a_mixed_precision_budget(tmp_path, capsys):
    path = _write(tmp_path / "m.onnx", GOOD_TEXT)
    code, err = _run(tmp_path, capsys, str(path), "--quantize", "int8", "--sensitivity", "hessian")
    assert code == 2
    _assert_one_line(err, "--sensitivity", "--budget or --max-drop")
