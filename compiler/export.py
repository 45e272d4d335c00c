"""Export a PyTorch module to an ONNX file that ``compile`` accepts, verified against PyTorch.

Users who start from PyTorch call :func:`export_torch` once and then hand the file to
``compile``/``compile_model``. The export is checked twice before the file appears at its path: the
ONNX checker (with shape inference) must accept it, and ONNX Runtime must reproduce the module's own
outputs on the example inputs within a tolerance policy of :mod:`compiler.verify`.

Exporter choice (torch 2.13)
----------------------------
``torch.onnx.export`` has two exporters. We use the torch.export-based one (``dynamo=True``):

* It is the maintained exporter and the default since torch 2.9; the TorchScript exporter
  (``dynamo=False``) warns on every call that it is legacy and will be removed.
* Its result is an ``ONNXProgram`` that we save ourselves as one self-contained file with weights
  inline (torch's own default, ``external_data=True``, writes a ``.data`` file even for tiny
  models), with initializers named after the module's state dict (``conv1.weight``), and it honours
  ``input_names``/``output_names`` exactly.
* Dynamic dims are declared through ``dynamic_shapes`` and come out as ``dim_param`` named as we ask
  ("batch"), on inputs and on the outputs that depend on them.
* ``optimize=False`` keeps the graph faithful to the module: BatchNormalization stays a node, so
  edgekiln's own canonicalize passes do the folding, verified and reported per pass. The TorchScript
  exporter in eval mode folds BatchNorm into the Conv by default, and with
  ``do_constant_folding=False`` keeps it but adds ``Identity`` nodes for de-duplicated weights.
* Either exporter drops Dropout in eval mode (it is the identity there).

Its costs: an export takes ~3 s (torch.export tracing plus decompositions) against ~0.2 s, and it
prints progress and harmless warnings, which we silence around the call.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from compiler.errors import OptionError, UnsupportedModelError, VerificationError

__all__ = ["export_torch", "VERIFY_POLICY"]

#: Tolerance policy the export is verified with (see compiler/verify.py). ONNX Runtime and PyTorch
#: use different convolution/GEMM kernels, i.e. a different float summation order; on the models we
#: export (the digits CNN, the tests' conv+linear) the differences are ~1e-7 relative, well inside
#: "fp32-rewrite" (1e-5), so the stricter float policy is used rather than "tvm-backend".
VERIFY_POLICY = "fp32-rewrite"

#: Protobuf cannot serialize a message over 2 GiB; models with 1 GiB of weights or more (the same
#: threshold as compiler.ir.save_model) get an external data file ``<name>.data`` beside the
#: ``.onnx``, the only case where two files are written.
_EXTERNAL_DATA_BYTES = 1 << 30

_MISSING_TORCH = "export_torch needs PyTorch: pip install 'edgekiln[models]'"


def export_torch(
    module: Any,
    example_inputs: Any,
    path: str | os.PathLike,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_batch: bool = False,
    opset: int | None = None,
    optimize: bool = False,
) -> Path:
    """Export ``module`` to ONNX at ``path``, check it, and verify it against PyTorch.

    Args:
        module: a ``torch.nn.Module``. It is switched to eval mode for the export (BatchNorm uses its
            running statistics, Dropout is the identity) and put back in its previous mode after.
        example_inputs: one tensor or a tuple/list of tensors, the positional arguments of
            ``module.forward``. They fix the static shapes and are the verification inputs.
        path: where the ``.onnx`` file goes. Written atomically: a temporary folder beside it, then
            a rename, so a failed export never leaves a partial or unverified file behind.
        input_names: graph input names, one per example input (default: the exporter's, which are
            the ``forward`` argument names).
        output_names: graph output names, one per output tensor (nested tuples/lists of outputs are
            flattened in order).
        dynamic_batch: make dim 0 of every input the symbolic dim ``"batch"``; outputs whose dim 0
            follows it get the same name.
        opset: ONNX opset (default: the exporter's, 20 in torch 2.13; it supports 18 and newer).
        optimize: run the exporter's ONNX optimizer (constant folding, BatchNorm folded into Conv).
            Off by default: ``compile`` canonicalizes the graph itself and reports each fold.

    Returns:
        The path of the written file.

    Raises:
        OptionError: PyTorch is not installed, or an argument is malformed (wrong number of names,
            an example input that is not a tensor).
        UnsupportedModelError: the exporter cannot convert the module, or the ONNX checker rejects
            the result.
        VerificationError: ONNX Runtime's outputs differ from PyTorch's beyond ``VERIFY_POLICY``.

    Example:
        >>> import torch
        >>> from compiler.export import export_torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 10))
        >>> x = torch.rand(1, 1, 8, 8)
        >>> export_torch(net, x, "net.onnx", input_names=["x"], output_names=["logits"])
        PosixPath('net.onnx')

        Then ``compile net.onnx --target cpu``.
    """
    try:
        import torch
    except ImportError:
        raise OptionError(_MISSING_TORCH) from None

    path = Path(path)
    if not isinstance(module, torch.nn.Module):
        raise OptionError(f"export_torch: expected a torch.nn.Module, got {type(module).__name__}")
    args = _as_tensor_tuple(torch, example_inputs)
    if input_names is not None and len(input_names) != len(args):
        raise OptionError(
            f"export_torch: {len(input_names)} input_names {list(input_names)} for {len(args)} example inputs"
        )
    if not path.parent.is_dir():
        raise OptionError(f"{path}: folder '{path.parent}' does not exist")

    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            expected = _flatten_outputs(torch, module(*args))
        if output_names is not None and len(output_names) != len(expected):
            raise OptionError(
                f"export_torch: {len(output_names)} output_names {list(output_names)} "
                f"for {len(expected)} module outputs"
            )
        program = _run_exporter(torch, module, args, input_names, output_names, dynamic_batch, opset, optimize)
    finally:
        module.train(was_training)

    feeds_names = [value.name for value in program.model.graph.inputs]
    if len(feeds_names) != len(args):
        # torch.export drops inputs the graph does not use; verification needs one feed per input.
        raise UnsupportedModelError(
            f"export_torch: the exported graph has {len(feeds_names)} inputs {feeds_names} for "
            f"{len(args)} example inputs (an unused forward argument is dropped by torch.export)"
        )
    feeds = {name: arg.detach().cpu().numpy() for name, arg in zip(feeds_names, args)}

    weight_bytes = sum(
        value.const_value.nbytes for value in program.model.graph.initializers.values() if value.const_value is not None
    )
    external = weight_bytes >= _EXTERNAL_DATA_BYTES

    # Save into a private folder beside the target under the final file name, so an external data
    # file (large models only) is referenced by its final name too; then move into place.
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tmp_path = tmp_dir / path.name
        program.save(tmp_path, external_data=external)
        _check(tmp_path)
        _verify(tmp_path, feeds, expected, external)
        data_file = tmp_dir / (path.name + ".data")
        if data_file.exists():
            os.replace(data_file, path.parent / data_file.name)
        os.replace(tmp_path, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return path


def _as_tensor_tuple(torch: Any, example_inputs: Any) -> tuple:
    args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    if not args:
        raise OptionError("export_torch: example_inputs is empty; give one tensor per forward argument")
    for index, arg in enumerate(args):
        if not isinstance(arg, torch.Tensor):
            raise OptionError(
                f"export_torch: example input {index} is a {type(arg).__name__}, not a torch.Tensor"
            )
    return args


def _flatten_outputs(torch: Any, outputs: Any) -> list[np.ndarray]:
    """The module's outputs as numpy arrays, flattened in the order the exporter emits them."""
    if isinstance(outputs, torch.Tensor):
        return [outputs.detach().cpu().numpy()]
    if isinstance(outputs, (tuple, list)):
        return [array for item in outputs for array in _flatten_outputs(torch, item)]
    raise OptionError(
        f"export_torch: the module returns a {type(outputs).__name__}; return a tensor or a tuple/list of tensors"
    )


def _run_exporter(torch, module, args, input_names, output_names, dynamic_batch, opset, optimize):
    dynamic_shapes = tuple({0: "batch"} for _ in args) if dynamic_batch else None
    # The exporter prints progress to stdout, logs a warning per missing optional torchvision op
    # and triggers deprecation warnings inside torch; none of it is actionable for our user, and
    # real failures arrive as exceptions.
    exporter_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    old_level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                args,
                None,
                dynamo=True,
                verbose=False,
                input_names=list(input_names) if input_names is not None else None,
                output_names=list(output_names) if output_names is not None else None,
                opset_version=opset,
                dynamic_shapes=dynamic_shapes,
                optimize=optimize,
            )
    except torch.onnx.OnnxExporterError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedModelError(f"export_torch: PyTorch's ONNX exporter failed: {first}") from exc
    finally:
        exporter_log.setLevel(old_level)
    return program


def _check(path: Path) -> None:
    import onnx

    try:
        # By path, so models with external data are checked too; full_check runs strict shape
        # inference, which catches inconsistent shapes the exporter may have written.
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise UnsupportedModelError(f"export_torch: the exported model fails the ONNX checker: {first}") from exc


def _verify(path: Path, feeds: dict[str, np.ndarray], expected: list[np.ndarray], external: bool) -> None:
    from compiler.verify import compare

    try:
        actual = _run_ort(path, feeds, external)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types, no common base
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedModelError(f"export_torch: ONNX Runtime cannot run the exported model: {first}") from exc
    result = compare(actual, expected, VERIFY_POLICY)
    if not result["passed"]:
        detail = result.get("reason") or f"max_abs={result['max_abs']:.3g}, max_rel={result['max_rel']:.3g}"
        raise VerificationError(
            f"export_torch: ONNX Runtime differs from PyTorch on the example inputs "
            f"({VERIFY_POLICY} policy: {detail})"
        )


def _run_ort(path: Path, feeds: dict[str, np.ndarray], external: bool) -> list[np.ndarray]:
    import onnx

    from compiler.verify import run_onnxruntime

    if external:
        # A >2 GiB model cannot pass through a serialized ModelProto; give ORT the path instead,
        # with the same settings as compiler.verify.ort_session (optimizations off).
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feeds)
    return run_onnxruntime(onnx.load(str(path)), feeds)
