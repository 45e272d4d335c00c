"""Roofline cost model: per-node work (MACs, bytes) and an estimated latency for a target.

Everything here is an *estimate* and says so: every :class:`Cost` and :class:`NodeCost` carries
``source="roofline"``; a cost built from a runner's timing carries ``source="measured"``.

Work of one node (target independent, :func:`node_work`)
--------------------------------------------------------
Shapes come from ``value.shape`` (run shape inference first); a node whose needed shapes are not
static gets ``known=False`` with a reason, and only the bytes that *are* known are counted.

MACs (multiply-accumulates, bias additions not counted; zero padding counted as MACs, the usual
convention, so a padded conv costs what its output size says):

- ``Conv`` / ``ConvInteger`` / ``QLinearConv``: weight ``W = [M, C/g, k1..kn]``, output
  ``Y = [N, M, o1..on]``::

      MACs = N * M * prod(o_i) * (C/g) * prod(k_i)

  Groups enter through ``C/g`` (the weight's second dim); strides, pads and dilations enter through
  the output spatial size ``o_i`` taken from the inferred output shape.
- ``ConvTranspose``: input ``X = [N, C, i1..in]``, weight ``[C, M/g, k1..kn]``:
  ``MACs = N * C * prod(i_i) * (M/g) * prod(k_i)``.
- ``Gemm``: ``Y = [M, N]``, ``K = A.shape[0] if transA else A.shape[1]``: ``MACs = M * N * K``.
- ``MatMul`` / ``MatMulInteger`` / ``QLinearMatMul`` (batched, numpy broadcasting, 1-D operands):
  ``MACs = prod(Y.shape) * K`` with ``K = A.shape[-1]``.

Arithmetic operations ``ops`` (what the compute roofline divides by the peak):

- MAC ops: ``ops = 2 * MACs`` (one multiply and one add).
- element-wise ops (Add, Relu, Sigmoid, QuantizeLinear, Cast, ...): ``ops = elements(Y)``.
- windowed pools (MaxPool, AveragePool, LpPool): ``ops = elements(Y) * prod(kernel_shape)``.
- global pools and reductions (GlobalAveragePool, ReduceMean, ...): ``ops = elements(X)``.
- normalizations: BatchNormalization (inference) 2 per element (scale, shift); Layer/Instance/Group
  normalization 5 per element (mean, variance, normalize, scale, shift).
- Softmax / LogSoftmax: 3 per element (exp, sum, divide).
- data movement (Transpose, Concat, Slice, Gather, Pad, Resize, ...): ``ops = 0``, bytes counted.
- views and compile-time ops (Reshape, Flatten, Squeeze, Unsqueeze, Identity, Shape, Constant,
  Dropout, Size): no kernel at run time; ``ops = bytes = 0`` and no kernel overhead.
- any other op (including control flow with subgraphs): ``known=False``; its input and output
  bytes are counted, its ops are 0. It never raises.

Bytes moved: every distinct input value (activations and weights) and every output value, each
``elements * dtype size`` (int4 counts half a byte, rounded up). ``params``: elements of the node's
constant inputs (initializers that are not graph inputs). ``precision``: from the data dtype of the
node (first input, else first output): float32 -> ``fp32``, float16 -> ``fp16``, bfloat16 ->
``bf16``, int8/uint8 -> ``int8``, int4/uint4 -> ``int4``, int32 -> ``int32``, ...

Time on a target (:class:`RooflineCostModel`)
---------------------------------------------
With the target's ``[roofline]`` table (``peak_gops`` per precision in 1e9 ops/s,
``memory_bandwidth_gbps`` in 1e9 bytes/s, ``kernel_overhead_us``)::

    compute_s  = ops / (peak_gops[precision] * 1e9)
    memory_s   = bytes / (memory_bandwidth_gbps * 1e9)
    seconds    = max(compute_s, memory_s) + kernel_overhead_us * 1e-6     (0 for view ops)

A precision missing from ``peak_gops`` uses the ``fp32`` peak (or the smallest peak when there is no
fp32 entry). The model total is the sum over nodes: no overlap between kernels, no fusion and no
cache reuse across nodes are modelled.

Calibration (:meth:`RooflineCostModel.calibrate`)
-------------------------------------------------
One scale factor ``s = measured / estimated`` (over the named nodes, or over the whole model for
the :data:`TOTAL` key). The calibrated model divides every peak and the bandwidth by ``s`` and
multiplies the overhead by ``s``, so *every* node estimate is multiplied by exactly ``s``: the
calibrated estimate of the measured set equals the measurement, and relative costs (which the passes
use to choose) are unchanged. Calibrating again composes the factors.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from compiler.errors import OptionError
from compiler.ir import DataType, Model, Node, Value, is_constant

__all__ = [
    "TOTAL",
    "Cost",
    "NodeWork",
    "NodeCost",
    "RooflineCostModel",
    "node_work",
    "model_work",
    "node_label",
    "precision_of",
    "unique_params",
    "summarize_by_op",
]

TOTAL = "__total__"
"""Key of :meth:`RooflineCostModel.calibrate`'s measurements that stands for the whole model."""

SOURCE_ESTIMATE = "roofline"
SOURCE_MEASURED = "measured"

_CONV_LIKE = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}  # op -> index of the weight input
_MATMUL_LIKE = {"MatMul", "MatMulInteger", "QLinearMatMul"}
_ELEMENTWISE = frozenset(
    """Abs Acos Acosh Add And Asin Asinh Atan Atanh BitShift BitwiseAnd BitwiseNot BitwiseOr
    BitwiseXor Cast CastLike Ceil Celu Clip Cos Cosh DequantizeLinear Div Elu Equal Erf Exp Floor
    Gelu Greater GreaterOrEqual HardSigmoid HardSwish IsInf IsNaN LeakyRelu Less LessOrEqual Log Max
    Mean Min Mish Mod Mul Neg Not Or PRelu Pow QuantizeLinear Reciprocal Relu Round Selu Shrink
    Sigmoid Sign Sin Sinh Softplus Softsign Sqrt Sub Sum Tan Tanh ThresholdedRelu Where Xor""".split()
)
_WINDOW_POOLS = frozenset({"MaxPool", "AveragePool", "LpPool"})
_INPUT_REDUCTIONS = frozenset(
    """GlobalAveragePool GlobalMaxPool GlobalLpPool ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp
    ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare ArgMax ArgMin""".split()
)
_NORM_OPS_PER_ELEMENT = {
    "BatchNormalization": 2,
    "LayerNormalization": 5,
    "InstanceNormalization": 5,
    "GroupNormalization": 5,
    "Softmax": 3,
    "LogSoftmax": 3,
}
_DATA_MOVEMENT = frozenset(
    """Concat DepthToSpace Expand Gather GatherElements GatherND Pad Resize ScatterElements ScatterND
    Slice SpaceToDepth Split Tile Transpose""".split()
)
_VIEWS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Size", "Constant", "Dropout"})

_PRECISION = {
    DataType.FLOAT: "fp32",
    DataType.DOUBLE: "fp64",
    DataType.FLOAT16: "fp16",
    DataType.BFLOAT16: "bf16",
    DataType.INT8: "int8",
    DataType.UINT8: "int8",
    DataType.INT4: "int4",
    DataType.UINT4: "int4",
    DataType.INT16: "int16",
    DataType.UINT16: "int16",
    DataType.INT32: "int32",
    DataType.UINT32: "int32",
    DataType.INT64: "int64",
    DataType.UINT64: "int64",
    DataType.BOOL: "bool",
}


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Cost:
    """Cost of a whole model. ``source`` is ``"roofline"`` (an estimate) or ``"measured"``."""

    seconds: float
    macs: int
    params: int
    bytes: int
    source: str = SOURCE_ESTIMATE

    @property
    def ms(self) -> float:
        return self.seconds * 1e3

    @classmethod
    def measured(cls, seconds: float, like: Cost | None = None) -> Cost:
        """A cost whose time comes from a runner; work counts are copied from ``like`` if given."""
        return cls(
            seconds=float(seconds),
            macs=like.macs if like else 0,
            params=like.params if like else 0,
            bytes=like.bytes if like else 0,
            source=SOURCE_MEASURED,
        )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class NodeWork:
    """Target-independent work of one node (see the module docstring for every formula).

    ``output_shapes`` has one entry per output: a list of dims (int, or str for a symbolic dim), or
    None when the output has no shape. ``known`` is False when the op has no formula here or a
    shape it needs is not static; ``reason`` then says which.
    """

    name: str
    op_type: str
    output_shapes: tuple[tuple[int | str, ...] | None, ...]
    macs: int
    ops: int
    params: int
    bytes: int
    precision: str
    known: bool
    reason: str = ""
    launches_kernel: bool = True

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["output_shapes"] = [list(s) if s is not None else None for s in self.output_shapes]
        return out


@dataclasses.dataclass(frozen=True)
class NodeCost(NodeWork):
    """:class:`NodeWork` plus the roofline time terms, in seconds.

    ``bound`` is ``"compute"`` or ``"memory"`` (whichever term is larger; ``"none"`` for views).
    """

    compute_seconds: float = 0.0
    memory_seconds: float = 0.0
    overhead_seconds: float = 0.0
    seconds: float = 0.0
    source: str = SOURCE_ESTIMATE

    @property
    def bound(self) -> str:
        if not self.launches_kernel:
            return "none"
        return "compute" if self.compute_seconds >= self.memory_seconds else "memory"


# ------------------------------------------------------------------------------------------------
# Shapes and sizes
# ------------------------------------------------------------------------------------------------
class _UnknownShape(Exception):
    """A shape needed by a formula is missing or symbolic (message: the value's name)."""


def _dims(value: Value | None) -> tuple[int | str, ...] | None:
    if value is None:
        return None
    shape = value.shape
    if shape is None and value.const_value is not None:
        return tuple(int(d) for d in value.const_value.shape)
    if shape is None:
        return None
    return tuple(d if isinstance(d, int) else str(d) for d in shape)


def _static(value: Value | None) -> tuple[int, ...]:
    """Static dims of ``value`` or raise :class:`_UnknownShape`."""
    dims = _dims(value)
    if dims is None or not all(isinstance(d, int) and d >= 0 for d in dims):
        raise _UnknownShape(value.name if value is not None else "<missing input>")
    return dims  # type: ignore[return-value]


def _elements(value: Value | None) -> int:
    return math.prod(_static(value))


def _nbytes(value: Value) -> int | None:
    """Bytes of ``value`` at its dtype size, or None when its shape or dtype is unknown."""
    try:
        count = _elements(value)
    except _UnknownShape:
        return None
    dtype = value.dtype
    if dtype is None and value.const_value is not None:
        dtype = value.const_value.dtype
    if dtype is None or dtype in (DataType.UNDEFINED, DataType.STRING):
        return None
    return math.ceil(count * dtype.itemsize)


def precision_of(node: Node) -> str:
    """The precision a node computes in, from its data dtype (first input, else first output)."""
    for value in [*node.inputs[:1], *node.outputs[:1]]:
        if value is not None and value.dtype is not None:
            return _PRECISION.get(value.dtype, str(value.dtype.name).lower())
    return "unknown"


def node_label(node: Node, index: int) -> str:
    """The node's name, or ``<op_type>_<index in graph>`` for an unnamed node (stable per graph)."""
    return node.name or f"{node.op_type}_{index}"


# ------------------------------------------------------------------------------------------------
# Work formulas
# ------------------------------------------------------------------------------------------------
def _input(node: Node, index: int) -> Value | None:
    return node.inputs[index] if index < len(node.inputs) else None


def _conv_macs(node: Node, weight_index: int) -> int:
    weight = _static(_input(node, weight_index))
    out = _static(node.outputs[0])
    if len(weight) < 2 or len(out) != len(weight):
        raise ValueError(f"weight rank {len(weight)} does not match output rank {len(out)}")
    n, m, spatial = out[0], out[1], out[2:]
    return n * m * math.prod(spatial) * weight[1] * math.prod(weight[2:])


def _conv_transpose_macs(node: Node) -> int:
    x = _static(_input(node, 0))
    weight = _static(_input(node, 1))
    return math.prod(x) * weight[1] * math.prod(weight[2:])


def _gemm_macs(node: Node) -> int:
    a = _static(_input(node, 0))
    out = _static(node.outputs[0])
    trans_a = node.attributes.get("transA")
    k = a[0] if trans_a is not None and trans_a.as_int() else a[1]
    return math.prod(out) * k


def _matmul_macs(node: Node) -> int:
    a = _static(_input(node, 0))
    out = _static(node.outputs[0])
    return math.prod(out) * a[-1]


def _pool_ops(node: Node) -> int:
    kernel = node.attributes.get("kernel_shape")
    if kernel is None:
        raise ValueError("pool without kernel_shape")
    return _elements(node.outputs[0]) * math.prod(kernel.as_ints())


def _work_terms(node: Node) -> tuple[int, int, bool]:
    """(MACs, ops, known) of a node; raises _UnknownShape/ValueError/IndexError on bad input."""
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        return 0, 0, False
    if op in _CONV_LIKE:
        macs = _conv_macs(node, _CONV_LIKE[op])
    elif op == "ConvTranspose":
        macs = _conv_transpose_macs(node)
    elif op == "Gemm":
        macs = _gemm_macs(node)
    elif op in _MATMUL_LIKE:
        macs = _matmul_macs(node)
    elif op in _ELEMENTWISE:
        return 0, _elements(node.outputs[0]), True
    elif op in _WINDOW_POOLS:
        return 0, _pool_ops(node), True
    elif op in _INPUT_REDUCTIONS:
        return 0, _elements(_input(node, 0)), True
    elif op in _NORM_OPS_PER_ELEMENT:
        return 0, _NORM_OPS_PER_ELEMENT[op] * _elements(node.outputs[0]), True
    elif op in _DATA_MOVEMENT or op in _VIEWS:
        return 0, 0, True
    else:
        return 0, 0, False
    return macs, 2 * macs, True


def node_work(node: Node, index: int = 0) -> NodeWork:
    """Work of one node (MACs, ops, params, bytes, precision). Never raises on odd nodes.

    ``index`` is the node's position in its graph, used only to name an unnamed node.
    """
    name = node_label(node, index)
    output_shapes = tuple(_dims(v) for v in node.outputs)
    precision = precision_of(node)
    if node.op_type in _VIEWS and node.domain in ("", "ai.onnx"):
        return NodeWork(name, node.op_type, output_shapes, 0, 0, 0, 0, precision, True, "", False)

    reasons: list[str] = []
    seen: set[int] = set()
    total_bytes = params = 0
    for value in [*node.inputs, *node.outputs]:
        if value is None or id(value) in seen:
            continue
        seen.add(id(value))
        size = _nbytes(value)
        if size is None:
            reasons.append(f"shape or dtype of '{value.name}' unknown")
            continue
        total_bytes += size
        if is_constant(value):
            params += _elements(value)

    try:
        macs, ops, known = _work_terms(node)
        if not known:
            domain = f"{node.domain}::" if node.domain not in ("", "ai.onnx") else ""
            reasons.insert(0, f"no cost formula for op '{domain}{node.op_type}'")
    except _UnknownShape as exc:
        macs, ops, known = 0, 0, False
        reasons.insert(0, f"shape of '{exc}' unknown, work not counted")
    except (ValueError, IndexError, TypeError) as exc:
        macs, ops, known = 0, 0, False
        reasons.insert(0, f"cannot count work: {exc}")
    if reasons:
        known = False
    return NodeWork(name, node.op_type, output_shapes, macs, ops, params, total_bytes, precision, known,
                    "; ".join(dict.fromkeys(reasons)))


def model_work(model: Model) -> list[NodeWork]:
    """:func:`node_work` of every top-level node of ``model``, in graph order."""
    return [node_work(node, index) for index, node in enumerate(model.graph)]


def unique_params(model: Model) -> int:
    """Elements of the distinct constant values read by the model's nodes (shared weights once)."""
    seen: dict[int, int] = {}
    for node in model.graph:
        for value in node.inputs:
            if value is not None and id(value) not in seen and is_constant(value):
                try:
                    seen[id(value)] = _elements(value)
                except _UnknownShape:
                    seen[id(value)] = 0
    return sum(seen.values())


# ------------------------------------------------------------------------------------------------
# The roofline model
# ------------------------------------------------------------------------------------------------
class RooflineCostModel:
    """Roofline latency estimates for one target (see the module docstring for the math).

    Args:
        target: a ``targets.Target`` (anything with ``name`` and a ``roofline`` dict).
        roofline: overrides ``target.roofline`` (used by :meth:`calibrate`).
        scale: the calibration factor already folded into ``roofline`` (1.0 when uncalibrated).

    Raises:
        OptionError: the roofline table lacks a number or has a non-positive one.
    """

    def __init__(self, target: Any, roofline: Mapping[str, Any] | None = None, scale: float = 1.0):
        self.target = target
        table = dict(target.roofline if roofline is None else roofline)
        where = f"target '{getattr(target, 'name', target)}' [roofline]"
        peaks = table.get("peak_gops")
        if not isinstance(peaks, Mapping) or not peaks:
            raise OptionError(f"{where}: needs peak_gops = {{ fp32 = ..., ... }}")
        self.peak_gops: dict[str, float] = {str(k): float(v) for k, v in peaks.items()}
        try:
            self.memory_bandwidth_gbps = float(table["memory_bandwidth_gbps"])
            self.kernel_overhead_us = float(table.get("kernel_overhead_us", 0.0))
        except KeyError as exc:
            raise OptionError(f"{where}: missing {exc}") from None
        if min(self.peak_gops.values()) <= 0 or self.memory_bandwidth_gbps <= 0 or self.kernel_overhead_us < 0:
            raise OptionError(f"{where}: peaks and bandwidth must be > 0 and the overhead >= 0")
        self.scale = float(scale)

    def __repr__(self) -> str:
        return (
            f"RooflineCostModel(target={getattr(self.target, 'name', self.target)!r}, peak_gops={self.peak_gops}, "
            f"memory_bandwidth_gbps={self.memory_bandwidth_gbps}, kernel_overhead_us={self.kernel_overhead_us}, "
            f"scale={self.scale})"
        )

    def to_json(self) -> dict[str, Any]:
        """The numbers in use, for the report."""
        return {
            "kind": "roofline",
            "peak_gops": dict(sorted(self.peak_gops.items())),
            "memory_bandwidth_gbps": self.memory_bandwidth_gbps,
            "kernel_overhead_us": self.kernel_overhead_us,
            "calibration_scale": self.scale,
        }

    def peak_ops_per_second(self, precision: str) -> float:
        """Peak for ``precision``; the fp32 peak (else the smallest) when the target lists none."""
        gops = self.peak_gops.get(precision, self.peak_gops.get("fp32", min(self.peak_gops.values())))
        return gops * 1e9

    def time_node(self, work: NodeWork) -> NodeCost:
        """Roofline time of one node's work."""
        fields = {f.name: getattr(work, f.name) for f in dataclasses.fields(NodeWork)}
        if not work.launches_kernel:
            return NodeCost(**fields)
        compute = work.ops / self.peak_ops_per_second(work.precision)
        memory = work.bytes / (self.memory_bandwidth_gbps * 1e9)
        overhead = self.kernel_overhead_us * 1e-6
        return NodeCost(
            **fields,
            compute_seconds=compute,
            memory_seconds=memory,
            overhead_seconds=overhead,
            seconds=max(compute, memory) + overhead,
        )

    def estimate_nodes(self, model: Model) -> list[NodeCost]:
        """Per-node estimates for every top-level node of ``model``, in graph order."""
        return [self.time_node(work) for work in model_work(model)]

    def estimate(self, model: Model) -> Cost:
        """Whole-model estimate: the sum of node times, MACs and bytes; params counted once each."""
        nodes = self.estimate_nodes(model)
        return Cost(
            seconds=sum(n.seconds for n in nodes),
            macs=sum(n.macs for n in nodes),
            params=unique_params(model),
            bytes=sum(n.bytes for n in nodes),
            source=SOURCE_ESTIMATE,
        )

    def calibrate(self, measurements: Mapping[str, float], model: Model) -> RooflineCostModel:
        """A new model whose estimates are scaled to match ``measurements`` (this one is unchanged).

        Args:
            measurements: measured seconds per node label (:func:`node_label`), or ``{TOTAL: s}`` for
                the whole model. With several node labels the factor is the ratio of their sums.
            model: the model the measurements were taken on (its estimates give the denominator).

        Raises:
            OptionError: no measurements, a non-positive time, a label not in the model, or an
                estimated time of zero for the measured set (nothing to scale).
        """
        if not measurements:
            raise OptionError("calibrate: no measurements given")
        if any(not (float(s) > 0 and math.isfinite(float(s))) for s in measurements.values()):
            raise OptionError("calibrate: measured times must be finite and > 0 seconds")
        nodes = {n.name: n.seconds for n in self.estimate_nodes(model)}
        if TOTAL in measurements:
            if len(measurements) != 1:
                raise OptionError(f"calibrate: give either '{TOTAL}' or node labels, not both")
            measured, estimated = float(measurements[TOTAL]), sum(nodes.values())
        else:
            missing = sorted(set(measurements) - set(nodes))
            if missing:
                raise OptionError(f"calibrate: no node labelled {', '.join(repr(m) for m in missing)} in the model")
            measured = sum(float(s) for s in measurements.values())
            estimated = sum(nodes[name] for name in measurements)
        if estimated <= 0:
            raise OptionError("calibrate: the measured nodes have an estimated time of 0 (views only)")
        factor = measured / estimated
        return RooflineCostModel(
            self.target,
            roofline={
                "peak_gops": {k: v / factor for k, v in self.peak_gops.items()},
                "memory_bandwidth_gbps": self.memory_bandwidth_gbps / factor,
                "kernel_overhead_us": self.kernel_overhead_us * factor,
            },
            scale=self.scale * factor,
        )


def summarize_by_op(costs: Sequence[NodeCost]) -> dict[str, float]:
    """Estimated seconds summed per op type (sorted by op type)."""
    out: dict[str, float] = {}
    for cost in costs:
        out[cost.op_type] = out.get(cost.op_type, 0.0) + cost.seconds
    return dict(sorted(out.items()))


# ------------------------------------------------------------------------------------------------
# Per-layer table (compile --estimate-only)
# ------------------------------------------------------------------------------------------------
def estimate_table(model: Model, target: Any, calibrated: bool = True) -> list[dict[str, Any]]:
    """One row per top-level node of ``model``: the estimate on ``target``, ready to print.

    Keys: ``node``, ``op``, ``precision``, ``macs``, ``bytes``, ``compute_us``, ``memory_us``,
    ``est_us``, ``bound``, ``source``. Without a calibration record (or ``calibrated=False``) the
    rows are exactly :class:`RooflineCostModel`'s. With a record saved by targets/calibrate_cost.py
    (``source`` then says ``calibrated``) a row gets ``efficiency`` (calibrated / roofline time):

    - a record with fitted coefficients predicts per fused kernel: the nodes are grouped the way
      TVM fuses them (:func:`targets.calibrate_cost.group_nodes`), the group's time
      ``a*compute + b*activation + w*weight + c`` goes on its first node, and the nodes fused into
      it get ``est_us = 0`` and ``fused_into`` (the first node's name);
    - an older record (factors only) multiplies each node's roofline time by its family's factor.

    Targets with an ``[fpga]`` table add the FINN-R columns ``w_bits``, ``a_bits``, ``mac_units``,
    ``luts``, ``dsps``, ``cycles`` and take ``est_us`` from the cycles at the design clock
    (``source = "finn-r"``). Every number is an estimate.
    """
    rows: list[dict[str, Any]] = []
    fpga = None
    if "fpga" in getattr(target, "spec", {}):
        from targets import fpga_cost

        fpga = fpga_cost.estimate(model, target)
    efficiency = None
    calibrate_cost = None
    if calibrated and fpga is None:
        from targets import calibrate_cost

        efficiency = calibrate_cost.load_calibration(target)
    roofline = RooflineCostModel(target)
    grouped: dict[str, tuple[float, float, str]] = {}  # node -> (calibrated s, roofline s, first node)
    if efficiency is not None and efficiency.has_coefficients and calibrate_cost is not None:
        for group in calibrate_cost.group_nodes(model, roofline):
            seconds = max(efficiency.predict(group.family, group.features, group.predicted_s), 0.0)
            for position, name in enumerate(group.nodes):
                grouped[name] = (seconds if position == 0 else 0.0, group.predicted_s, group.nodes[0])
    nodes = list(model.graph)
    for index, cost in enumerate(roofline.estimate_nodes(model)):
        row: dict[str, Any] = {
            "node": cost.name,
            "op": cost.op_type,
            "precision": cost.precision,
            "macs": cost.macs,
            "bytes": cost.bytes,
            "compute_us": cost.compute_seconds * 1e6,
            "memory_us": cost.memory_seconds * 1e6,
            "est_us": cost.seconds * 1e6,
            "bound": cost.bound,
            "source": "estimate (roofline)",
        }
        if efficiency is not None and cost.launches_kernel:
            if cost.name in grouped:
                seconds, group_roofline, first = grouped[cost.name]
                row["est_us"] = seconds * 1e6
                row["efficiency"] = seconds / group_roofline if group_roofline > 0 and first == cost.name else 0.0
                if first != cost.name:
                    row["fused_into"] = first
            elif not efficiency.has_coefficients:
                factor = efficiency.factor_for(nodes[index])
                row["efficiency"] = factor
                row["est_us"] = cost.seconds * 1e6 * factor
            row["source"] = "estimate (roofline, calibrated)"
        if fpga is not None:
            layer = fpga.layers[index]
            row.update(
                w_bits=layer.weight_bits, a_bits=layer.activation_bits, mac_units=layer.mac_units,
                luts=layer.luts, dsps=layer.dsps, cycles=layer.cycles,
                est_us=layer.cycles / fpga.clock_mhz, source="estimate (finn-r)",
            )
        rows.append(row)
    return rows
