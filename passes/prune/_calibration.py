"""Intermediate tensors on calibration data, through ONNX Runtime (private to the prune package).

The model is not touched: a protobuf copy gets the requested values as extra graph outputs (typed
by element type only, so the batch size of the calibration feeds never conflicts with inferred
shapes), and one session serves every batch.
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


def intermediates(model: Model, calibration: Sequence[Feeds], names: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
    """Yield ``{name: array}`` for the values ``names`` on every calibration batch, in order.

    Raises:
        OptionError: a calibration batch lacks an input of the model or does not run.
    """
    proto = to_proto(model)
    present = {o.name for o in proto.graph.output}
    dtypes = {v.name: v.dtype for node in model.graph for v in node.outputs if v.name}
    for name in dict.fromkeys(names):
        if name in present:
            continue
        elem = dtypes[name].value if dtypes.get(name) is not None else onnx.TensorProto.FLOAT
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
    session = ort_session(proto)
    inputs = [i.name for i in session.get_inputs()]
    wanted = list(dict.fromkeys(names))
    for index, feed in enumerate(calibration):
        missing = [n for n in inputs if n not in feed and not _has_default(model, n)]
        if missing:
            raise OptionError(f"calibration batch {index} has no array for input '{missing[0]}'")
        try:
            arrays = session.run(wanted, {n: feed[n] for n in inputs if n in feed})
        except Exception as exc:  # ORT shape/type errors: one line naming the batch
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OptionError(f"calibration batch {index} does not run: {first}") from None
        yield dict(zip(wanted, arrays))


def _has_default(model: Model, name: str) -> bool:
    return any(v.name == name and v.const_value is not None for v in model.graph.inputs)
