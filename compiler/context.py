"""``CompileContext``: everything a pass may consult besides the model itself.

Passes get the target (capabilities and policy), the cost model, calibration data and options only
through this object. There is no other global state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

Feeds = dict[str, np.ndarray]


@dataclasses.dataclass
class CompileContext:
    """Per-compilation state handed to every pass.

    Attributes:
        target: the ``targets.Target`` being compiled for (None only in unit tests of pure passes).
        cost_model: the target's cost model (``targets.cost_model``), or None when not needed.
        calibration: representative input feeds (name -> array), each a batch; may be empty.
        options: free-form compile options (e.g. ``{"seed": 0}``) that passes may read.
        input_shapes: the fixed input shapes chosen for this compilation.
    """

    target: Any = None
    cost_model: Any = None
    calibration: Sequence[Feeds] = ()
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    input_shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)

    @property
    def seed(self) -> int:
        return int(self.options.get("seed", 0))
