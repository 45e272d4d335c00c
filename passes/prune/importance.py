"""Channel importance: one score per unit of a :class:`~passes.prune.dependency.ChannelGroup`.

Per member, a criterion scores each channel; a unit's score is the sum over the channels it covers
in that member (a grouped-Conv unit covers a whole group, a Flatten unit ``H*W`` features). Members
are on different scales (a residual stream is fed by several Convs of different fan-in), so each
member's unit scores are divided by their mean before they are added; the group score is that sum
rescaled to mean 1 over the group's units, so scores of different groups are comparable (global
and latency modes rank units across groups):

    s_u = (1 / Z) * sum_m  x_{m,u} / mean_u'(x_{m,u'}),   Z such that mean_u(s_u) = 1

Criteria (``x_{m,c}`` for channel ``c`` of member ``m``):

- ``l1`` / ``l2``: the magnitude of the producer's filter of ``c`` (Conv ``W[c]``, Gemm/MatMul
  weight column) - ``sum |w|`` or ``sqrt(sum w^2)``; members produced by a source contribute.
- ``bn``: ``|gamma_c| / sqrt(var_c + eps)`` of a BatchNormalization in the group (network
  slimming). The pass runs on BN-folded graphs, where that scale has been multiplied into the Conv
  filter: ``W'_c = (gamma_c / sigma_c) W_c``, so ``||W'_c||_2 = |gamma_c / sigma_c| * ||W_c||_2`` -
  the BN scale times the unfolded filter norm. Groups without a BatchNormalization left therefore
  use the folded filter's L2 norm, and the caller notes it.
- ``activation``: the mean energy ``E[x_c^2]`` of channel ``c`` on the calibration data, over the
  batch and spatial positions, measured on the tensors the group's sinks read (what the next layers
  actually see, after ReLU/pooling); groups without a sink use their source outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from compiler.context import Feeds
from compiler.ir import Model, Node, Value, constant_array
from compiler.intermediates import intermediates
from passes.prune.dependency import ChannelGroup, Member, int_attr

__all__ = ["CRITERIA", "filter_rows", "group_scores", "activation_energy"]

CRITERIA = ("l1", "l2", "bn", "activation")


def filter_rows(node: Node) -> np.ndarray:
    """The producer's weights as ``[output channels, fan-in]`` rows (float64)."""
    weight = constant_array(node.inputs[1]).astype(np.float64)
    if node.op_type == "Conv":
        return weight.reshape(weight.shape[0], -1)
    if node.op_type == "Gemm" and int_attr(node, "transB", 0):
        return weight
    return weight.T  # Gemm B [K, N] and MatMul B [K, N]: column n is output n's filter


def _normalized(scores: np.ndarray) -> np.ndarray:
    mean = float(np.mean(scores))
    return scores / mean if mean > 0 else np.ones_like(scores)


def _per_unit(member: Member, per_channel: np.ndarray) -> np.ndarray:
    return np.array([float(per_channel[atoms].sum()) for atoms in member.units])


def _filter_scores(group: ChannelGroup, order: int) -> np.ndarray:
    total = np.zeros(group.size)
    producers = {id(node.outputs[0]): node for node in group.sources}
    for member in group.members:
        node = producers.get(id(member.value))
        if node is not None:
            total += _normalized(_per_unit(member, np.linalg.norm(filter_rows(node), ord=order, axis=1)))
    return total


def _bn_scores(group: ChannelGroup) -> np.ndarray | None:
    total, found = np.zeros(group.size), False
    for member in group.members:
        node = member.value.producer()
        if node is None or node.op_type != "BatchNormalization":
            continue
        gamma, var = (constant_array(node.inputs[i]).astype(np.float64) for i in (1, 4))
        attr = node.attributes.get("epsilon")
        eps = 1e-5 if attr is None else attr.as_float()  # the ONNX default epsilon
        total += _normalized(_per_unit(member, np.abs(gamma) / np.sqrt(var + eps)))
        found = True
    return total if found else None


def activation_values(group: ChannelGroup) -> list[Member]:
    """The members whose calibration energy scores the group (read by sinks, else source outputs)."""
    sink_inputs = {id(node.inputs[0]) for node in group.sinks}
    read = [m for m in group.members if id(m.value) in sink_inputs]
    if read:
        return read
    outputs = {id(node.outputs[0]) for node in group.sources}
    return [m for m in group.members if id(m.value) in outputs]


def activation_energy(model: Model, calibration: Sequence[Feeds], values: Sequence[tuple[Value, int]]) -> dict[Value, np.ndarray]:
    """Mean ``x_c^2`` per channel of each ``(value, channel axis)`` over all calibration batches."""
    by_name = {v.name: (v, axis) for v, axis in values}
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for arrays in intermediates(model, calibration, list(by_name)):
        for name, array in arrays.items():
            _, axis = by_name[name]
            x = np.moveaxis(np.asarray(array, dtype=np.float64), axis, 0)
            x = x.reshape(x.shape[0], -1)
            sums[name] = sums.get(name, 0.0) + (x * x).sum(axis=1)
            counts[name] = counts.get(name, 0) + x.shape[1]
    return {by_name[name][0]: sums[name] / max(counts[name], 1) for name in sums}


def group_scores(
    group: ChannelGroup, criterion: str, energy: dict[Value, np.ndarray] | None = None
) -> tuple[np.ndarray, str | None]:
    """Unit scores (mean 1) of ``group`` by ``criterion``, and a note when a fallback was used.

    ``energy`` (from :func:`activation_energy`) is required for ``activation``.
    """
    note = None
    if criterion == "l1":
        raw = _filter_scores(group, 1)
    elif criterion == "l2":
        raw = _filter_scores(group, 2)
    elif criterion == "bn":
        raw = _bn_scores(group)
        if raw is None:
            note = f"group {group.name}: no BatchNormalization left (folded), BN scale read from the folded filters' L2 norm"
            raw = _filter_scores(group, 2)
    elif criterion == "activation":
        if energy is None:
            raise ValueError("activation importance needs calibration energies")
        raw = np.zeros(group.size)
        for member in activation_values(group):
            raw += _normalized(_per_unit(member, energy[member.value]))
    else:
        raise ValueError(f"unknown importance criterion '{criterion}' (known: {', '.join(CRITERIA)})")
    return _normalized(raw), note
