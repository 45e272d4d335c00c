"""The one module that imports ``onnx_ir``: load, save and convert models at the edges.

Everything inside the compiler works on ``onnx_ir.Model``. Protobuf (``onnx.ModelProto``) is made
only to hand a model to ONNX Runtime, the ONNX checker or TVM's importer.

House rules (see DESIGN.md): values are identified by object, not by name; tensors are never mutated
in place; an initializer that is also a graph input is not a constant.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir import DataType, Model, Node, Value  # re-exported for passes

from compiler.errors import InputModelError

__all__ = [
    "ir",
    "DataType",
    "Model",
    "Node",
    "Value",
    "load_model",
    "save_model",
    "to_proto",
    "from_proto",
    "copy_model",
    "constant_array",
    "is_constant",
    "structural_fingerprint",
    "count_parameters",
    "file_sha256",
]


def _check_external_data_inside(proto: onnx.ModelProto, model_dir: Path, model_path: Path) -> None:
    """Refuse external-data locations that escape the model's folder (path traversal)."""
    root = model_dir.resolve()
    for tensor in onnx.external_data_helper._get_all_tensors(proto):  # noqa: SLF001 - stable helper
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), None)
        if location is None:
            raise InputModelError(f"{model_path}: initializer '{tensor.name}' has external data without a location")
        target = (root / location).resolve()
        if os.path.isabs(location) or root not in target.parents and target != root:
            raise InputModelError(
                f"{model_path}: initializer '{tensor.name}' points to external data '{location}' "
                "outside the model's folder; refusing to read it"
            )
        if not target.is_file():
            raise InputModelError(
                f"{model_path}: external data file '{location}' for initializer '{tensor.name}' not found"
            )


def load_model(path: str | os.PathLike) -> Model:
    """Read an ONNX file into an in-memory IR model, with external data resolved in its folder.

    Raises:
        InputModelError: the file is missing, is not an ONNX protobuf, is truncated, or refers to
            external data outside its own folder.
    """
    path = Path(path)
    if not path.exists():
        raise InputModelError(f"{path}: no such file")
    if not path.is_file():
        raise InputModelError(f"{path}: not a file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError or RuntimeWarning-ish errors
        raise InputModelError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    if not proto.graph.node and not proto.graph.output:
        raise InputModelError(f"{path}: not an ONNX model (empty or unparsable graph)")
    _check_external_data_inside(proto, path.parent, path)
    try:
        onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
    except Exception as exc:
        raise InputModelError(f"{path}: cannot read external data ({exc})") from None
    try:
        return ir.from_proto(proto)
    except Exception as exc:
        raise InputModelError(f"{path}: cannot convert to IR ({type(exc).__name__}: {exc})") from None


def save_model(model: Model, path: str | os.PathLike, external_data_threshold: int = 1 << 30) -> None:
    """Write ``model`` to ``path``. Models over 2 GiB would need external data; we keep one file
    below ``external_data_threshold`` bytes of weights so the artifact stays self-contained."""
    proto = to_proto(model)
    if proto.ByteSize() >= external_data_threshold:
        onnx.save_model(proto, str(path), save_as_external_data=True, location=Path(path).name + ".data")
    else:
        onnx.save_model(proto, str(path))


def to_proto(model: Model) -> onnx.ModelProto:
    return ir.to_proto(model)


def from_proto(proto: onnx.ModelProto) -> Model:
    return ir.from_proto(proto)


def copy_model(model: Model) -> Model:
    """A deep copy (through protobuf): passes mutate in place, the verifier needs the 'before'."""
    return ir.from_proto(ir.to_proto(model))


def is_constant(value: Value | None) -> bool:
    """True when ``value`` is a constant initializer (not also a graph input, which callers may feed)."""
    return (
        value is not None
        and value.const_value is not None
        and not value.is_graph_input()
    )


def constant_array(value: Value | None) -> np.ndarray | None:
    """The numpy array of a constant value, or None when the value is not a constant."""
    if not is_constant(value):
        return None
    return value.const_value.numpy()


def structural_fingerprint(model: Model) -> str:
    """A hash of the graph's structure and weights: equal fingerprints mean an unchanged model.

    Used to check that a pass's ``modified`` flag is exact.
    """
    return hashlib.sha256(to_proto(model).SerializeToString(deterministic=True)).hexdigest()


def count_parameters(model: Model) -> int:
    """Number of scalar weights held in initializers."""
    total = 0
    for value in model.graph.initializers.values():
        shape = value.shape if value.shape is not None else value.const_value.shape
        total += int(np.prod(shape.numpy() if hasattr(shape, "numpy") else tuple(shape), dtype=np.int64))
    return total


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
