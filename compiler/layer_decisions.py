"""One row per layer a compression pass looked at: what it did, what the cost model expected, why.

The structured passes (``prune-channels``, ``factorize-conv``, ``factorize-gemm``) put a list of
:class:`LayerDecision` rows, as JSON, under ``stats["layers"]`` of their pass record. The report
(:mod:`compiler.report_compression`) renders them as one table, and ``compile --profile-layers``
fills the measured columns from TVM's per-kernel timings of the model before and after
compression (:mod:`compiler.layer_profile`).

Invariants of a row:

* ``status`` is ``pruned`` / ``factorized`` (the layer changed) or ``kept`` / ``dense`` /
  ``ineligible`` (left alone); a row left alone always has a non-empty ``reason``.
* ``estimated_ms_before`` / ``estimated_ms_after`` are the target cost model's roofline estimate of
  the nodes in ``nodes`` (before) and ``nodes_after`` (after) -- for a channel group, every node
  that reads or writes one of its tensors, so the consumers' savings count too. They are None when
  the pass ran without a cost model.
* ``nodes`` / ``nodes_after`` are node labels (the node's name, else ``<op>_<index>``, as
  :func:`targets.cost_model.node_label`), which is how measured kernels are matched to rows.
* ``measured_ms_before`` / ``measured_ms_after`` are None until a profile fills them: the summed
  median time of the TVM kernels that run those nodes (a kernel fused across two rows counts in
  both, so rows do not add up to the model).
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["LayerDecision", "CHANGED", "LEFT_ALONE"]

CHANGED = ("pruned", "factorized")
LEFT_ALONE = ("kept", "dense", "ineligible")


@dataclasses.dataclass
class LayerDecision:
    """What a compression pass decided for one layer (or channel group); see the module docstring."""

    layer: str
    op: str
    status: str
    before: str
    after: str
    reason: str | None = None
    estimated_ms_before: float | None = None
    estimated_ms_after: float | None = None
    error: float | None = None
    error_kind: str | None = None  # what ``error`` measures, e.g. "relative output error (held-out)"
    nodes: list[str] = dataclasses.field(default_factory=list)
    nodes_after: list[str] = dataclasses.field(default_factory=list)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    measured_ms_before: float | None = None
    measured_ms_after: float | None = None

    def __post_init__(self) -> None:
        if self.status not in CHANGED + LEFT_ALONE:
            raise ValueError(f"layer decision status '{self.status}' is not one of {', '.join(CHANGED + LEFT_ALONE)}")
        if self.status in LEFT_ALONE and not self.reason:
            raise ValueError(f"layer '{self.layer}' is left alone ({self.status}) without a reason")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
