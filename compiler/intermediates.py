"""Intermediate tensors of a model on calibration data, through ONNX Runtime.

The one implementation behind every pass that needs activations (quantization observers, pruning
importance and reconstruction, low-rank input statistics). The model is not touched: a protobuf
copy gets the requested values as extra graph outputs, typed by element type only so the batch size
of the calibration feeds never conflicts with inferred shapes, and one session serves every batch.
A requested name that is a graph input is read from the feed (ORT cannot fetch an input as an
output); one that is an initializer-backed input the feed leaves out gets its default value.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import onnx

from compiler.context import Feeds
from compiler.errors import OptionError
from compiler.ir import Model, to_proto
from compiler.verify import ort_session

__all__ = ["intermediates"]


def intermediates(
    model: Model,
    calibration: Sequence[Feeds],
    names: Sequence[str],
    error: type[Exception] = OptionError,
) -> Iterator[dict[str, np.ndarray]]:
    """Yield ``{name: array}`` for the values ``names`` on every calibration batch, in order.

    Raises:
        ``error`` (OptionError by default), one line naming the batch: a calibration batch lacks an
        input of the model, or ONNX Runtime cannot run it.
    """
    wanted = list(dict.fromkeys(names))
    proto = to_proto(model)
    graph_inputs = {i.name for i in proto.graph.input}
    present = {o.name for o in proto.graph.output}
    dtypes = {v.name: v.dtype for node in model.graph for v in node.outputs if v.name}
    for name in wanted:
        if name in present or name in graph_inputs or name not in dtypes:
            continue
        elem = dtypes[name].value if dtypes[name] is not None else onnx.TensorProto.FLOAT
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
    session = ort_session(proto)
    inputs = [i.name for i in session.get_inputs()]
    outputs = {o.name for o in session.get_outputs()}
    fetched = [n for n in wanted if n in outputs]
    defaults = {v.name: v.const_value.numpy() for v in model.graph.inputs if v.const_value is not None}
    for index, feed in enumerate(calibration):
        missing = [n for n in inputs if n not in feed and n not in defaults]
        if missing:
            raise error(f"calibration batch {index} has no array for input '{missing[0]}'")
        try:
            arrays = dict(zip(fetched, session.run(fetched, {n: feed[n] for n in inputs if n in feed}))) if fetched else {}
        except Exception as exc:  # ORT shape/type errors: one line naming the batch
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise error(f"calibration batch {index} does not run: {first}") from None
        for name in wanted:
            if name not in arrays:
                if name in feed:
                    arrays[name] = np.asarray(feed[name])
                elif name in defaults:
                    arrays[name] = defaults[name]
        yield arrays
