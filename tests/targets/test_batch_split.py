"""targets.lowering.batch_split: running a batched model image by image inside one artifact.

The per-sample analysis and the cache model are tested on small ONNX graphs (no TVM build); the
wrapper is tested by building small models with ``--per-image on`` and comparing with ONNX Runtime
on the batched model (fp32) and bit for bit with the batched build (integer-only).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from compiler.errors import OptionError
from targets.lowering import batch_split
from targets.lowering.batch_split import NotPerSample, per_sample_axes, plan, predicted_saving
from tests.targets.test_lowering import make_model

MB = 1 << 20


def _axes(proto: onnx.ModelProto, batch: int = 4) -> dict:
    shapes = {value.name: [d.dim_value for d in value.type.tensor_type.shape.dim] for value in proto.graph.input}
    return per_sample_axes(proto, shapes, batch)[1]


CNN = """g (float[4, 3, 8, 8] x) => (float[4, 10] y) {
    c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
    r = Relu (c)
    p = GlobalAveragePool (r)
    f = Flatten (p)
    y = Gemm <transB = 1> (f, fw, fb)
}"""
CNN_WEIGHTS = {"w": ((16, 3, 3, 3), np.float32), "b": ((16,), np.float32), "fw": ((10, 16), np.float32),
               "fb": ((10,), np.float32)}


def test_cnn_is_per_sample_with_batch_on_axis_0():
    axes = _axes(make_model(CNN, CNN_WEIGHTS))
    assert axes["x"] == 0 and axes["r"] == 0 and axes["f"] == 0 and axes["y"] == 0
    assert axes["w"] is None and axes["fw"] is None


def test_attention_layout_moves_the_batch_axis_and_back():
    """The transformer's qkv path: reshape [B, T, 3, H, D], transpose (2, 0, 3, 1, 4) puts the batch
    on axis 1, split + squeeze along axis 0 bring it back; the scores matmul is batched on both."""
    proto = make_model(
        """g (float[4, 6, 24] x) => (float[4, 2, 6, 6] s) {
            q = Reshape (x, shape)
            t = Transpose <perm = [2, 0, 3, 1, 4]> (q)
            a, b, c = Split <axis = 0> (t, sizes)
            qa = Squeeze (a, zero)
            kb = Squeeze (b, zero)
            kt = Transpose <perm = [0, 1, 3, 2]> (kb)
            m = MatMul (qa, kt)
            s = Softmax <axis = -1> (m)
        }""",
        {"shape": np.array([4, 6, 3, 2, 4], np.int64), "sizes": np.array([1, 1, 1], np.int64),
         "zero": np.array([0], np.int64)},
    )
    axes = _axes(proto)
    assert axes["q"] == 0 and axes["t"] == 1 and axes["a"] == 1 and axes["qa"] == 0 and axes["s"] == 0


@pytest.mark.parametrize(
    "body, where",
    [
        ("y = ReduceMean <keepdims = 1, axes = [0]> (x)", "reduces over the batch axis"),
        ("y = Softmax <axis = 0> (x)", "along the batch axis"),
        ("r = Reshape (x, flat)\n y = Reshape (r, back)", "merges the batch axis"),
        ("t = Transpose <perm = [1, 0]> (x)\n y = MatMul (t, x)", "contracts the batch axis"),
        ("s = Shape (x)\n c = Cast <to = 1> (s)\n y = Mul (x, c)", "is not known to act image by image"),
        ("y = Add (x, per_image_bias)", "broadcasts 'per_image_bias' along the batch axis"),
    ],
)
def test_graphs_that_mix_images_are_refused_naming_the_node(body, where):
    proto = make_model(
        f"""g (float[4, 2] x) => (float[4, 2] y) {{
            {body}
        }}""",
        {"zero": np.array([0], np.int64), "flat": np.array([8], np.int64), "back": np.array([4, 2], np.int64),
         "per_image_bias": ((4, 2), np.float32)},
        check=False,
    )
    with pytest.raises(NotPerSample, match=where):
        _axes(proto)


def test_single_image_model_rewrites_baked_batch_shapes():
    """A Reshape to [4, 16] baked at export follows the batch: the batch-1 model reshapes to
    [1, 16], imports, and computes what the batched model does on that image."""
    from compiler.verify import run_onnxruntime

    proto = make_model(
        """g (float[4, 4, 2, 2] x) => (float[4, 16] y) {
            r = Relu (x)
            y = Reshape (r, shape)
        }""",
        {"shape": np.array([4, 16], np.int64)},
    )
    result = plan(proto, {"x": [4, 4, 2, 2]}, cache_bytes=None, mode="on")
    assert result.batch == 4 and result.shapes == {"x": [1, 4, 2, 2]}
    x = np.random.default_rng(0).standard_normal((4, 4, 2, 2)).astype(np.float32)
    batched = run_onnxruntime(proto, {"x": x})[0]
    single = np.concatenate([run_onnxruntime(result.model, {"x": x[i:i + 1]})[0] for i in range(4)])
    np.testing.assert_array_equal(single, batched)


def test_cache_model_splits_when_the_batch_overflows_the_cache_and_weights_fit():
    """Per-image activations 2 x 0.25 MB fit a 3 MB cache, the batch's 2 x 8 x 0.25 MB do not."""
    proto = make_model(
        """g (float[8, 16, 64, 64] x) => (float[8, 16, 64, 64] y) {
            c = Conv <pads = [1, 1, 1, 1]> (x, w)
            y = Relu (c)
        }""",
        {"w": ((16, 16, 3, 3), np.float32)},
    )
    graph, axes = per_sample_axes(proto, {"x": [8, 16, 64, 64]}, 8)
    estimate = predicted_saving(graph, axes, 8, cache_bytes=3 * MB)
    per_image = 16 * 64 * 64 * 4
    assert estimate["largest_activation_bytes"] == per_image
    assert estimate["batched_activation_bytes"] == 2 * 2 * 8 * per_image  # x (conv input) and y (output)
    assert estimate["per_image_activation_bytes"] == 0 and estimate["weight_reread_bytes"] == 0
    assert plan(proto, {"x": [8, 16, 64, 64]}, 3 * MB).batch == 8
    # With a cache that holds the whole batch there is nothing to save: the batch stays.
    kept = plan(proto, {"x": [8, 16, 64, 64]}, 64 * MB)
    assert kept.batch is None and "no saving" in kept.note


def test_cache_model_keeps_the_batch_when_weights_would_be_read_per_image():
    proto = make_model(
        """g (float[8, 1024] x) => (float[8, 1024] y) {
            y = MatMul (x, w)
        }""",
        {"w": ((1024, 1024), np.float32)},
    )
    graph, axes = per_sample_axes(proto, {"x": [8, 1024]}, 8)
    estimate = predicted_saving(graph, axes, 8, cache_bytes=1 * MB)
    assert estimate["weight_reread_bytes"] == 7 * 1024 * 1024 * 4 and estimate["saving_bytes"] < 0
    assert plan(proto, {"x": [8, 1024]}, 1 * MB).batch is None


def test_plan_options():
    proto = make_model(CNN, CNN_WEIGHTS)
    shapes = {"x": [4, 3, 8, 8]}
    assert plan(proto, shapes, 1, "off").batch is None
    assert plan(proto, {"x": [1, 3, 8, 8]}, 1, "auto").batch is None  # nothing to split
    unknown = plan(proto, shapes, None, "auto")
    assert unknown.batch is None and "cache size is unknown" in unknown.note
    with pytest.raises(OptionError, match="--per-image sometimes"):
        plan(proto, shapes, 1, "sometimes")
    with pytest.raises(OptionError, match="no common batch size above 1"):
        plan(proto, {"x": [1, 3, 8, 8]}, 1, "on")
    mixing = make_model(
        """g (float[4, 2] x) => (float[1, 2] y) {
            y = ReduceMax <keepdims = 1, axes = [0]> (x)
        }""",
        {"zero": np.array([0], np.int64)},
    )
    with pytest.raises(OptionError, match="node 'y' \\(ReduceMax\\) reduces over the batch axis"):
        plan(mixing, {"x": [4, 2]}, 1, "on")
    kept = plan(mixing, {"x": [4, 2]}, 1, "auto")
    assert kept.batch is None and "not proven to act image by image" in kept.note


def test_api_names_the_same_modes_without_importing_tvm():
    from compiler.api import PER_IMAGE_MODES

    assert PER_IMAGE_MODES == batch_split.MODES


def test_host_cache_size_is_read_from_sysfs():
    size = batch_split.host_cache_bytes()
    assert size is None or size >= 256 * 1024


# --- builds --------------------------------------------------------------------------------------


@pytest.mark.tvm
def test_per_image_build_equals_onnxruntime_on_the_batch(tmp_path):
    """Two outputs, a baked Reshape and a Gemm: ``main`` takes the batch of 4, calls the batch-1
    network per image, and returns both outputs with the batch, as ONNX Runtime computes them."""
    pytest.importorskip("tvm")
    from compiler.verify import compare, run_onnxruntime
    from targets import get_target
    from targets.lowering import load_library, lower_model
    from tests.tolerances import TVM_BACKEND

    proto = make_model(
        """g (float[4, 3, 8, 8] x) => (float[4, 10] y, float[4, 16, 8, 8] r) {
            c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
            r = Relu (c)
            p = GlobalAveragePool (r)
            f = Reshape (p, shape)
            y = Gemm <transB = 1> (f, fw, fb)
        }""",
        {**CNN_WEIGHTS, "shape": np.array([4, 16], np.int64)},
    )
    result = lower_model(proto, get_target("cpu"), {}, tmp_path, per_image="on")
    assert any("runs image by image" in note for note in result.notes), result.notes
    assert result.per_image_batch == 4
    assert not result.unscheduled
    assert sum(1 for name in result.scheduled if name.startswith("strided_slice")) >= 4
    library = load_library(tmp_path / result.library_file, result.input_names)
    x = np.random.default_rng(1).standard_normal((4, 3, 8, 8)).astype(np.float32)
    actual = library.run({"x": x})
    expected = run_onnxruntime(proto, {"x": x})
    assert [a.shape for a in actual] == [(4, 10), (4, 16, 8, 8)]
    check = compare(actual, expected, TVM_BACKEND)
    assert check["passed"], check


@pytest.mark.tvm
def test_per_image_on_is_refused_for_per_kernel_measurement(tmp_path):
    pytest.importorskip("tvm")
    from targets import get_target
    from targets.lowering import lower_model

    with pytest.raises(OptionError, match="per-kernel measurement"):
        lower_model(make_model(CNN, CNN_WEIGHTS), get_target("cpu"), {}, tmp_path, kernel_library=True, per_image="on")


@pytest.mark.tvm
def test_integer_only_per_image_artifact_is_bit_exact(tmp_path):
    """``compile --quantize int8 --per-image on`` at batch 4: the artifact's outputs equal the
    reference interpreter's and ONNX Runtime's on the integer graph bit for bit (the compile's own
    check), so the split changes no integer."""
    pytest.importorskip("tvm")
    from compiler import compile_model

    path = tmp_path / "cnn.onnx"
    onnx.save(make_model(CNN, CNN_WEIGHTS), path)
    rng = np.random.default_rng(0)
    calibration = [{"x": rng.standard_normal((4, 3, 8, 8)).astype(np.float32)} for _ in range(2)]
    result = compile_model(path, output=tmp_path / "out", quantize="int8", calibration=calibration,
                           measure=False, verify=False, per_image="on", progress=False)
    assert any("runs image by image" in note for note in result.report["lowering"]["notes"])
    assert result.report["lowering"]["per_image_batch"] == 4
    exact = result.report["summary"]["verification"]["integer_bit_exact"]
    assert exact["passed"] is True, exact


@pytest.mark.tvm
def test_cli_per_image_on_without_a_batch_is_a_one_line_error(tmp_path, capsys):
    from compiler.cli import main

    path = tmp_path / "one.onnx"
    onnx.save(make_model(CNN.replace("[4, ", "[1, "), CNN_WEIGHTS), path)
    out = tmp_path / "out"
    assert main([str(path), "--per-image", "on", "-o", str(out), "--quiet", "--no-measure"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --per-image on: the inputs have no common batch size above 1"], err
    assert not out.exists()
