"""export_torch: ONNX Runtime reproduces the torch module; names, dynamic batch, single file, errors."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest

from compiler.errors import OptionError, VerificationError
from compiler.verify import compare, run_onnxruntime
from tests.tolerances import FP32_REWRITE

torch = pytest.importorskip("torch")

from compiler.export import export_torch  # noqa: E402  (after the skip: the module is torch-free, the tests are not)


class ConvLinear(torch.nn.Module):
    """Conv + BatchNorm + ReLU + Dropout + Linear: the layers whose eval-mode export matters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 4, kernel_size=3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.drop = torch.nn.Dropout(0.5)
        self.fc = torch.nn.Linear(4 * 5 * 5, 3)

    def forward(self, x):
        return self.fc(self.drop(torch.relu(self.bn(self.conv(x)))).flatten(1))


def _module() -> ConvLinear:
    torch.manual_seed(0)
    module = ConvLinear()
    # Non-trivial running statistics, so a wrong BatchNorm mode would change the outputs.
    with torch.no_grad():
        module.bn.running_mean.uniform_(-0.5, 0.5)
        module.bn.running_var.uniform_(0.5, 2.0)
    return module


def _torch_outputs(module, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        return [module(torch.from_numpy(x)).numpy()]


@pytest.fixture(scope="module")
def static_export(tmp_path_factory):
    module = _module()
    module.train()  # export_torch must switch to eval for the export and restore this after
    x = torch.rand(1, 2, 5, 5, generator=torch.Generator().manual_seed(1))
    path = export_torch(module, (x,), tmp_path_factory.mktemp("static") / "m.onnx",
                        input_names=["image"], output_names=["scores"])
    restored_to_training = module.training  # read now: later tests switch the module to eval
    module.eval()
    return module, x, path, restored_to_training


@pytest.fixture(scope="module")
def dynamic_export(tmp_path_factory):
    module = _module().eval()
    x = torch.rand(1, 2, 5, 5, generator=torch.Generator().manual_seed(2))
    path = export_torch(module, x, tmp_path_factory.mktemp("dynamic") / "m.onnx",
                        input_names=["image"], output_names=["scores"], dynamic_batch=True)
    return module, path


def test_onnxruntime_matches_torch_on_example_and_other_inputs(static_export):
    module, x, path, _ = static_export
    proto = onnx.load(str(path))
    other = np.random.default_rng(3).standard_normal((1, 2, 5, 5)).astype(np.float32)
    for sample in (x.numpy(), other):
        result = compare(run_onnxruntime(proto, {"image": sample}), _torch_outputs(module, sample), FP32_REWRITE)
        assert result["passed"], result


def test_names_static_shape_and_single_file(static_export):
    _, _, path, _ = static_export
    proto = onnx.load(str(path), load_external_data=False)
    assert [v.name for v in proto.graph.input] == ["image"]
    assert [v.name for v in proto.graph.output] == ["scores"]
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [1, 2, 5, 5]
    # Weights inline, one file, no leftover temporary folder beside it.
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in proto.graph.initializer)
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.onnx"]
    onnx.checker.check_model(proto, full_check=True)


def test_exports_eval_mode_and_restores_training_mode(static_export):
    _, _, path, restored_to_training = static_export
    assert restored_to_training  # export_torch put the module back in the mode it had
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert "BatchNormalization" in ops  # inference-mode BN (1 output), kept for the canonicalize passes
    assert "Dropout" not in ops


def test_dynamic_batch_runs_at_batch_1_and_3(dynamic_export):
    module, path = dynamic_export
    proto = onnx.load(str(path))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert proto.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    rng = np.random.default_rng(4)
    for batch in (1, 3):
        x = rng.random((batch, 2, 5, 5), dtype=np.float32)
        actual = run_onnxruntime(proto, {"image": x})
        assert actual[0].shape == (batch, 3)
        result = compare(actual, _torch_outputs(module, x), FP32_REWRITE)
        assert result["passed"], (batch, result)


def test_missing_torch_is_a_clear_option_error(monkeypatch, tmp_path):
    # A None entry in sys.modules makes `import torch` raise ImportError, as if it were not installed.
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(OptionError, match=r"pip install 'edgekiln\[models\]'"):
        export_torch(object(), (), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_name_count_mismatch_is_an_option_error(tmp_path):
    module = _module().eval()
    x = torch.rand(1, 2, 5, 5)
    with pytest.raises(OptionError, match="2 input_names"):
        export_torch(module, (x,), tmp_path / "m.onnx", input_names=["a", "b"])
    with pytest.raises(OptionError, match="2 output_names"):
        export_torch(module, (x,), tmp_path / "m.onnx", output_names=["a", "b"])
    with pytest.raises(OptionError, match="not a torch.Tensor"):
        export_torch(module, (x.numpy(),), tmp_path / "m.onnx")


def test_failed_verification_leaves_no_file(monkeypatch, tmp_path):
    import compiler.verify

    real = compiler.verify.run_onnxruntime
    # ORT outputs shifted by 1: the verification must reject them and nothing may reach the path.
    monkeypatch.setattr(compiler.verify, "run_onnxruntime", lambda model, feeds: [o + 1.0 for o in real(model, feeds)])
    with pytest.raises(VerificationError, match="fp32-rewrite"):
        export_torch(_module().eval(), torch.rand(1, 2, 5, 5), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []
