"""Frontend: read an ONNX file, validate it, inline local functions and fix the input shapes.

Canonicalization proper (lifting constants, folding, BN folding, DCE, sorting) is done by the passes
in ``passes/canonicalize`` so that each appears in the pipeline and the report; the frontend only
establishes what every pass may assume: a checked, function-free graph with static input shapes and
inferred value shapes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import onnx

from compiler.errors import InputModelError, OptionError
from compiler.ir import Model, from_proto, ir, load_model, to_proto
from compiler.pass_base import Fact

#: Facts that hold for every model the frontend returns.
FRONTEND_FACTS = frozenset({Fact.SHAPES_INFERRED})


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """Parse ``NAME=1,3,224,224`` (the ``--input-shape`` syntax). Raises OptionError."""
    if "=" not in text:
        raise OptionError(f"--input-shape '{text}': expected NAME=D0,D1,... (e.g. x=1,3,224,224)")
    name, dims_text = text.rsplit("=", 1)
    try:
        dims = tuple(int(d) for d in dims_text.replace("x", ",").split(",") if d.strip())
    except ValueError:
        raise OptionError(f"--input-shape '{text}': dimensions must be integers") from None
    if not name or not dims or any(d <= 0 for d in dims):
        raise OptionError(f"--input-shape '{text}': expected a name and positive dimensions")
    return name, dims


def _check(proto: onnx.ModelProto, where: str) -> None:
    try:
        onnx.checker.check_model(proto, full_check=False)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputModelError(f"{where}: invalid ONNX graph: {first}") from None


def fix_input_shapes(model: Model, input_shapes: Mapping[str, Sequence[int]], where: str) -> dict[str, tuple[int, ...]]:
    """Give every graph input a static shape, from ``input_shapes`` where its dims are symbolic.

    Returns the chosen shape of every (non-initializer) input. Raises OptionError when a symbolic dim
    is not given, a name is unknown, or a given shape contradicts a static one.
    """
    inputs = {v.name: v for v in model.graph.inputs if not v.is_initializer()}
    for name in input_shapes:
        if name not in inputs:
            raise OptionError(f"--input-shape names '{name}', which is not an input of {where} (inputs: {', '.join(inputs)})")
    chosen: dict[str, tuple[int, ...]] = {}
    for name, value in inputs.items():
        dims = list(value.shape) if value.shape is not None else None
        given = tuple(int(d) for d in input_shapes[name]) if name in input_shapes else None
        if dims is None and given is None:
            raise OptionError(f"input '{name}' of {where} has unknown rank; give its shape with --input-shape {name}=D0,D1,...")
        if given is None:
            symbolic = [d for d in dims if not isinstance(d, int)]
            if symbolic:
                shown = ",".join(str(d) if isinstance(d, int) else str(d.value or "?") for d in dims)
                example = ",".join(str(d) if isinstance(d, int) else "1" for d in dims)
                raise OptionError(
                    f"input '{name}' of {where} has symbolic dims [{shown}]; fix them with --input-shape {name}={example}"
                )
            chosen[name] = tuple(int(d) for d in dims)
            continue
        if dims is not None:
            if len(dims) != len(given):
                raise OptionError(f"--input-shape {name}: rank {len(given)} given, the model's input has rank {len(dims)}")
            for axis, (d, g) in enumerate(zip(dims, given)):
                if isinstance(d, int) and d != g:
                    raise OptionError(f"--input-shape {name}: dim {axis} is {d} in the model, {g} given")
        value.shape = ir.Shape(list(given))
        chosen[name] = given
    return chosen


def infer_shapes(model: Model, where: str) -> Model:
    """Run ONNX shape inference (strict) and return a new IR model with value shapes filled."""
    proto = to_proto(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:  # InferenceError, ValidationError
        first = str(exc).strip().splitlines()[0]
        raise InputModelError(f"{where}: shape inference failed: {first}") from None
    return from_proto(inferred)


def load_and_prepare(
    path: str | os.PathLike, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> tuple[Model, dict[str, tuple[int, ...]]]:
    """Load ``path``, check it, inline model-local functions, fix input shapes and infer shapes.

    Returns the model and the static shape of each input.
    """
    where = str(path)
    model = load_model(path)
    proto = to_proto(model)
    _check(proto, where)
    if model.functions:
        ir.passes.common.InlinePass()(model)
    shapes = fix_input_shapes(model, input_shapes or {}, where)
    model = infer_shapes(model, where)
    return model, shapes
