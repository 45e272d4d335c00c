"""Second-order sensitivity (passes/quantize/hessian.py) and the ONNX -> torch evaluator it runs on
(compiler/torch_eval.py): the evaluator equals ONNX Runtime, Hutchinson matches the exact Hessian
trace, the layer ranking agrees with measured output perturbation, and mixed-precision uses it
(or falls back with a note)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from compiler.accuracy import load_npz_feeds, split_batches  # noqa: E402
from compiler.context import CompileContext  # noqa: E402
from compiler.ir import constant_array, copy_model, load_model  # noqa: E402
from compiler.pipeline import Pipeline  # noqa: E402
from compiler.torch_eval import TorchGraph, TorchUnsupported  # noqa: E402
from compiler.verify import compare, run_onnxruntime  # noqa: E402
from passes.quantize.hessian import hessian_sensitivity, hutchinson_traces, label_free_loss  # noqa: E402
from passes.quantize.sensitivity import find_layers, measure_sensitivity  # noqa: E402
from targets.cost_model import RooflineCostModel  # noqa: E402
from targets.registry import get_target  # noqa: E402
from tests.helpers import OPSET, model_from_text  # noqa: E402
from tests.tolerances import FP32_REWRITE, HESSIAN_VS_PERTURBATION_MIN_SPEARMAN, HUTCHINSON_STANDARD_ERRORS  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def _canonical(model):
    Pipeline.parse("canonicalize").run(model, CompileContext())
    return model


@functools.lru_cache(maxsize=None)
def _zoo(name: str):
    from tests.data.make_models import model_path

    return _canonical(load_model(model_path(name)))


def _zoo_feeds(name: str, count: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    if name == "transformer":
        return [{"tokens": rng.integers(0, 256, (1, 32)).astype(np.int64)} for _ in range(count)]
    return [{"x": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)} for _ in range(count)]


@functools.lru_cache(maxsize=1)
def _digits():
    calib, _ = load_npz_feeds(EXAMPLES / "digits_cnn.calib.npz", ["x"])
    return _canonical(load_model(EXAMPLES / "digits_cnn.onnx")), split_batches(calib, 1)


# -- the evaluator ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2", "transformer"])
def test_torch_evaluator_equals_onnxruntime_on_the_zoo(name: str) -> None:
    model = _zoo(name)
    graph = TorchGraph(model)
    for feeds in _zoo_feeds(name):
        with torch.no_grad():
            ours = [t.numpy() for t in graph.run(feeds)]
        result = compare(ours, run_onnxruntime(model, feeds), FP32_REWRITE)
        assert result["passed"], result


def test_torch_evaluator_equals_onnxruntime_on_digits_and_small_ops() -> None:
    model, batches = _digits()
    graph = TorchGraph(model)
    for feeds in batches[:4]:
        with torch.no_grad():
            result = compare([t.numpy() for t in graph.run(feeds)], run_onnxruntime(model, feeds), FP32_REWRITE)
        assert result["passed"], result
    # AveragePool, Concat, Slice, Sigmoid, ReduceMean, Transpose, Unsqueeze, Clip with bounds
    small = model_from_text(OPSET + """
        g (float[2,4,6,6] x) => (float[2,8,1,1] y, float[4,2] z) {
            p = AveragePool <kernel_shape=[3,3], strides=[1,1], pads=[1,1,1,1]> (x)
            c = Concat <axis=1> (p, x)
            s = Slice (c, starts, ends, axes)
            k = Sigmoid (s)
            lo = Constant <value = float {-0.2}> ()
            hi = Constant <value = float {0.7}> ()
            q = Clip (k, lo, hi)
            y = ReduceMean <axes=[2,3], keepdims=1> (q)
            m = ReduceMean <axes=[2,3], keepdims=0> (x)
            z = Transpose <perm=[1,0]> (m)
        }""", starts=np.array([1], np.int64), ends=np.array([9], np.int64), axes=np.array([1], np.int64))
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 4, 6, 6)).astype(np.float32)}
    with torch.no_grad():
        result = compare([t.numpy() for t in TorchGraph(small).run(feeds)], run_onnxruntime(small, feeds), FP32_REWRITE)
    assert result["passed"], result


def test_torch_evaluator_names_an_unsupported_node() -> None:
    model = model_from_text(OPSET + """
        g (float[2,4] x) => (float[2,3] y) { h = Gemm <transB=1> (x, w, b)\n y = Softplus (h) }""", w=(3, 4), b=(3,))
    model.graph.node(1).name = "the_softplus"
    with pytest.raises(TorchUnsupported, match="Softplus 'the_softplus': op 'Softplus' is not supported"):
        TorchGraph(model)


# -- Hutchinson against the exact Hessian ------------------------------------------------------------
def _tiny_mlp():
    model = model_from_text(OPSET + """
        g (float[8,6] x) => (float[8,4] y) {
            h = Gemm <transB=1> (x, w1, b1)
            t = Tanh (h)
            y = Gemm <transB=1> (t, w2, b2)
        }""", seed=5, w1=(5, 6), b1=(5,), w2=(4, 5), b2=(4,))
    rng = np.random.default_rng(1)
    batches = [{"x": rng.standard_normal((8, 6)).astype(np.float32)} for _ in range(3)]
    return _canonical(model), batches


def _exact_hessian(model, name, batches) -> np.ndarray:
    graph = TorchGraph(model, dtype=torch.float64)
    values = {v.name: v for v in model.graph.initializers.values()}
    w0 = torch.tensor(constant_array(values[name]), dtype=torch.float64)

    def loss(w):
        total = 0.0
        for feeds in batches:
            with torch.no_grad():
                reference = graph.run(feeds)[0]
            total = total + label_free_loss(graph.run(feeds, {name: w})[0], reference)
        return total / len(batches)

    return torch.autograd.functional.hessian(loss, w0).reshape(w0.numel(), w0.numel()).numpy()


def test_hutchinson_matches_the_exact_trace_of_each_layer() -> None:
    model, batches = _tiny_mlp()
    names = ["w1", "w2"]
    samples = 400
    estimates = hutchinson_traces(model, names, batches, samples=samples, seed=3, dtype=torch.float64)
    for name in names:
        hessian = _exact_hessian(model, name, batches)
        assert np.allclose(hessian, hessian.T, atol=1e-12)
        assert np.linalg.eigvalsh(hessian).min() > -1e-10  # Gauss-Newton at the fp32 point: PSD
        exact = float(np.trace(hessian))
        # per-batch estimates are averaged: the variance of the mean over samples x batches uses
        # each batch's own Hessian; bound it by the averaged one's (Jensen) times the batch count
        per_batch = [_exact_hessian(model, name, [b]) for b in batches]
        variance = sum(2 * ((h * h).sum() - (np.diag(h) ** 2).sum()) for h in per_batch) / len(batches) ** 2 / samples
        error = abs(estimates[name] - exact)
        print(f"{name}: Hutchinson {estimates[name]:.6f} vs exact {exact:.6f} (standard error {np.sqrt(variance):.2e})")
        assert exact > 0 and error <= HUTCHINSON_STANDARD_ERRORS * np.sqrt(variance)


def test_label_free_loss_has_zero_gradient_at_the_fp32_weights() -> None:
    model, batches = _tiny_mlp()
    graph = TorchGraph(model, dtype=torch.float64)
    values = {v.name: v for v in model.graph.initializers.values()}
    w = torch.tensor(constant_array(values["w2"]), dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        reference = graph.run(batches[0])[0]
    (grad,) = torch.autograd.grad(label_free_loss(graph.run(batches[0], {"w2": w})[0], reference), w)
    assert float(grad.abs().max()) < 1e-12


def test_hessian_table_format_and_bits_order() -> None:
    model, batches = _digits()
    layers, _ = find_layers(model)
    table, traces = hessian_sensitivity(model, layers, batches[:4], samples=4)
    assert set(table) == {l.name for l in layers} == set(traces)
    for name, row in table.items():
        assert row["float"] == 0.0 and row["4"] > row["8"] >= 0.0, (name, row)  # 4 bits err more
        assert traces[name]["trace"] >= 0 and traces[name]["samples"] == 16


@pytest.mark.slow
def test_resnet18_hessian_ranking_agrees_with_measured_perturbation() -> None:
    from scipy.stats import spearmanr

    torch.set_num_threads(2)
    model = _zoo("resnet18")
    layers, _ = find_layers(model)
    feeds = _zoo_feeds("resnet18", 4, seed=1)
    hessian, _ = hessian_sensitivity(model, layers, feeds, bits=(4,), samples=2)
    measured = measure_sensitivity(model, layers, feeds, bits=(4,), metric="kl")
    rho = spearmanr([hessian[l.name]["4"] for l in layers], [measured[l.name]["4"] for l in layers]).correlation
    print(f"ResNet-18: Spearman(hessian, perturbation KL) at 4 bits = {rho:.3f} over {len(layers)} layers")
    assert rho >= HESSIAN_VS_PERTURBATION_MIN_SPEARMAN


# -- through the pass ----------------------------------------------------------------------------------
def _ctx(calibration):
    target = get_target("cpu")
    return CompileContext(target=target, cost_model=RooflineCostModel(target), calibration=calibration)


def test_mixed_precision_with_hessian_sensitivity() -> None:
    model, batches = _digits()
    _, records = Pipeline.parse("canonicalize,mixed-precision{size=0.75x,sensitivity=hessian,hessian_samples=4,sweep=3}").run(
        copy_model(model), _ctx(batches[:32]))
    record = records[-1]
    assert record.stats["sensitivity_method"] == "hessian"
    assert set(record.stats["hessian"]) == set(record.stats["bits"])
    assert any("Hessian trace (Hutchinson, 4 Rademacher vectors x 4 calibration batches" in n for n in record.notes)
    assert record.stats["chosen"]["size"] <= record.stats["budgets"]["size"]
    with pytest.raises(Exception, match="sensitivity=bogus"):
        Pipeline.parse("canonicalize,mixed-precision{sensitivity=bogus}").run(copy_model(model), _ctx(batches[:4]))


def test_unsupported_op_falls_back_to_perturbation_with_a_note() -> None:
    model = model_from_text(OPSET + """
        g (float[16,6] x) => (float[16,4] y) {
            h = Gemm <transB=1> (x, w1, b1)
            t = Softplus (h)
            y = Gemm <transB=1> (t, w2, b2)
        }""", w1=(5, 6), b1=(5,), w2=(4, 5), b2=(4,))
    for index, node in enumerate(n for n in model.graph if n.op_type == "Gemm"):
        node.name = f"fc{index}"
    rng = np.random.default_rng(0)
    batches = [{"x": rng.standard_normal((16, 6)).astype(np.float32)} for _ in range(4)]
    _, records = Pipeline.parse("canonicalize,mixed-precision{sensitivity=hessian,sweep=0}").run(model, _ctx(batches))
    record = records[-1]
    assert record.stats["sensitivity_method"] == "perturbation" and record.stats["hessian"] == {}
    assert any(n.startswith("hessian sensitivity unavailable (Softplus") and "using output perturbation" in n for n in record.notes)
