"""Calibrate the roofline cost model from per-layer latencies measured on a device.

Measure (:func:`measure_layers`): the model is lowered for the target and run by the Relax VM with
an instrument callback (TVM 0.27 has no VM profiler any more) that times every kernel call with
``perf_counter``; the median over ``repeats`` runs is kept per call (and for the whole model,
timed on a second, uninstrumented VM in rounds alternating with the instrumented runs). That works
where the library runs in this process. A board is measured through the TVM RPC runner
(targets/lowering/rpc.py): the instrument callback cannot run there, so every kernel is timed
alone by the board's ``time_evaluator`` (median of ``repeats``) with arguments of its signature,
from a library of the kernels alone, in the order ``main`` calls them
(targets/lowering/kernels.py), and the whole model by ``time_evaluator`` on ``main``. A kernel
timed alone finds its weights in cache more often than inside the model, so board records fit
isolated-kernel times (the way MetaSchedule's RPC runner measures).

Map kernels to ONNX nodes (:func:`group_nodes`, approximate): TVM fuses an operator with the
element-wise operators that consume its output, and drops the ONNX names. So the ONNX nodes (in
topological order) are grouped the way FuseOps groups them: an anchor (Conv/Gemm/MatMul, a pool
or reduction) opens a group; an element-wise node joins the group of a producer whose output it
alone consumes (Relu after Conv, a residual Add after the block's last Conv); views (Reshape,
Flatten...) open no kernel. Kernels and groups are then paired in order within each family
(``conv``, ``dense``, ``pool``, ``eltwise``), the family of a kernel coming from its fused name
(``fused_conv2d_add_relu`` -> conv). Kernels that match nothing (layout copies, weight packing) are
left out and counted. A group's roofline prediction is the sum of its nodes' roofline estimates.

Features of a group (:func:`group_features`, roofline units in seconds on the target): ``compute``
= the group's ops / peak, ``activation`` = bytes of the activations that cross the group's boundary
(inputs read from other groups plus the last node's outputs; intermediates of a fused kernel stay
in registers and are not counted) / bandwidth, ``weight`` = bytes of its constant inputs / bandwidth,
and ``overhead`` = 1e-6 (so its coefficient is in microseconds per kernel).

Fit (:func:`fit_coefficients`, the model used by the record): per family ``f``::

    t ~= a_f * compute + b_f * activation + w_f * weight + c_f * 1us

with non-negative coefficients, by non-negative least squares on *relative* residuals
(``(t_pred - t) / t``, so a 30 us kernel counts as much as a 1.5 ms one). The coefficients are the
pooled fit over all families plus a ridge pull of each family's coefficients toward the pooled ones
(``prior_weight`` rows, scaled by the pooled values): a family with many layers follows its own
data, a family with one or two layers stays near the pooled model, and a family never measured
uses the pooled coefficients. Relative residuals bias the sum low, so all coefficients are then
multiplied by one factor that makes the summed prediction equal the summed measurement of the
training layers. Each coefficient reads as an inverse efficiency (``a = 2`` means half the peak;
``c`` is the per-kernel overhead).

The older fit (:func:`fit_factors`) is kept as a summary and a fallback for records without
coefficients: one efficiency factor per family, ``measured ~= factor * roofline``, by least squares
in log space (the geometric-mean ratio). With one factor per family it can only rescale a family,
so it cannot reorder e.g. ResNet-18's equal-MAC 3x3 convolutions whose times differ by weight size.

The record (:class:`Calibration`, schema 2: coefficients plus factors; schema-1 records, factors
only, still load) is saved as JSON under
``$XDG_CACHE_HOME/edgekiln/cost-calibration/<target>.json`` (``~/.cache`` by default) and loaded by
:func:`targets.cost_model.estimate_table`. Estimates stay labelled as estimates.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import nnls

from compiler.errors import OptionError
from compiler.ir import Model, Node, is_constant
from targets.cost_model import RooflineCostModel, _nbytes, model_work, node_label
from targets.registry import Target, get_target

FAMILIES = ("conv_kxk", "conv_1x1", "conv_depthwise", "dense", "pool", "eltwise")
_CONV = {"Conv", "ConvInteger", "QLinearConv", "ConvTranspose"}
_DENSE = {"Gemm", "MatMul", "MatMulInteger", "QLinearMatMul"}
_POOL = {"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum",
         "ReduceMax", "Softmax", "LogSoftmax", "LayerNormalization"}
_VIEWS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Size", "Constant", "Dropout"}
SCHEMA = 2
_READABLE_SCHEMAS = (1, 2)
FEATURES = ("compute", "activation", "weight", "overhead")
_OVERHEAD_UNIT_S = 1e-6


def op_family(node: Node) -> str:
    """The efficiency family of ``node`` (see the module docstring); views are ``"view"``."""
    op = node.op_type
    if op in _CONV:
        weight = node.inputs[1] if len(node.inputs) > 1 else None
        group = node.attributes.get("group")
        groups = group.as_int() if group is not None else 1
        shape = weight.shape if weight is not None else None
        if groups > 1 and shape is not None and len(shape) > 1 and shape[1] == 1:
            return "conv_depthwise"
        if shape is not None and len(shape) > 2 and all(d == 1 for d in list(shape)[2:]):
            return "conv_1x1"
        return "conv_kxk"
    if op in _DENSE:
        return "dense"
    if op in _POOL:
        return "pool"
    if op in _VIEWS:
        return "view"
    return "eltwise"


def _coarse(family: str) -> str:
    return "conv" if family.startswith("conv") else family


def kernel_family(name: str) -> str:
    """Coarse family of a fused TVM kernel from its name (``fused_conv2d_add_relu`` -> conv)."""
    tokens = name.lower()
    if "conv" in tokens:
        return "conv"
    if "matmul" in tokens or "dense" in tokens:
        return "dense"
    if any(t in tokens for t in ("pool", "mean", "sum", "softmax", "max", "layer_norm")) and "maximum" not in tokens:
        return "pool"
    return "eltwise"


# ------------------------------------------------------------------------------------------------
# Calibration record
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Calibration:
    """A fitted record for one target (an estimate model, fitted on measurements).

    ``coefficients[family]`` (and ``pooled`` for other families): ``[a, b, w, c]`` of
    ``t ~= a*compute + b*activation + w*weight + c*1us`` over a fused group's :data:`FEATURES`;
    empty for records from the older fit. ``factors``/``default``: the per-family
    ``measured / roofline`` ratios (geometric mean), used when there are no coefficients.
    """

    target: str
    factors: dict[str, float]
    default: float
    fitted_on: list[str] = dataclasses.field(default_factory=list)
    layers: int = 0
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    coefficients: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    pooled: list[float] = dataclasses.field(default_factory=list)

    def factor_for(self, node: Node) -> float:
        return self.factors.get(op_family(node), self.default)

    @property
    def has_coefficients(self) -> bool:
        return bool(self.pooled)

    def coefficients_for(self, family: str) -> list[float]:
        return self.coefficients.get(family, self.pooled)

    def predict(self, family: str, features: Sequence[float], roofline_s: float = 0.0) -> float:
        """Seconds of one fused group: the coefficient model, or ``factor * roofline_s`` without one."""
        if not self.has_coefficients:
            return self.factors.get(family, self.default) * roofline_s
        return float(np.dot(self.coefficients_for(family), features))

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Calibration:
        if data.get("schema") not in _READABLE_SCHEMAS:
            raise ValueError(f"calibration schema {data.get('schema')} not in {_READABLE_SCHEMAS}")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


def calibration_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgekiln" / "cost-calibration"


def calibration_path(target: Target | str) -> Path:
    name = target if isinstance(target, str) else target.name
    return calibration_dir() / f"{name}.json"


def save_calibration(calibration: Calibration, path: Path | None = None) -> Path:
    """Write the record (atomically) and return its path."""
    path = Path(path) if path is not None else calibration_path(calibration.target)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(calibration.to_json(), indent=1, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def load_calibration(target: Target | str, path: Path | None = None) -> Calibration | None:
    """The saved record for ``target``, or None when there is none or it is unreadable (stale
    schema, damaged file): an uncalibrated estimate is better than a failed compile."""
    path = Path(path) if path is not None else calibration_path(target)
    try:
        calibration = Calibration.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    name = target if isinstance(target, str) else target.name
    return calibration if calibration.target == name else None


# ------------------------------------------------------------------------------------------------
# Grouping ONNX nodes like FuseOps, and pairing groups with measured kernels
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class LayerGroup:
    """ONNX nodes that TVM runs as one kernel; ``family`` is the anchor's (or ``eltwise``)."""

    nodes: list[str]
    family: str
    predicted_s: float = 0.0
    features: tuple[float, ...] = ()


@dataclasses.dataclass
class LayerSample:
    """One measured kernel paired with its ONNX node group (``features``: see :data:`FEATURES`)."""

    kernel: str
    nodes: list[str]
    family: str
    predicted_s: float
    measured_s: float
    features: tuple[float, ...] = ()


def group_nodes(model: Model, cost_model: RooflineCostModel) -> list[LayerGroup]:
    """ONNX nodes (topological order) grouped the way TVM's FuseOps fuses them (approximate)."""
    consumers: dict[int, int] = {}
    for node in model.graph:
        for value in node.inputs:
            if value is not None:
                consumers[id(value)] = consumers.get(id(value), 0) + 1
    graph_outputs = {id(v) for v in model.graph.outputs}
    estimates = {c.name: c.seconds for c in cost_model.estimate_nodes(model)}
    groups: list[LayerGroup] = []
    group_of: dict[int, LayerGroup] = {}  # id(value) -> group that produced it
    for index, node in enumerate(model.graph):
        label = node_label(node, index)
        family = op_family(node)
        if family == "view":
            for out in node.outputs:  # a view passes its input's group through (no kernel)
                source = node.inputs[0] if node.inputs else None
                if source is not None and id(source) in group_of:
                    group_of[id(out)] = group_of[id(source)]
            continue
        target_group = None
        if family == "eltwise":
            for value in node.inputs:
                if value is None or is_constant(value) or id(value) not in group_of:
                    continue
                producer = group_of[id(value)]
                if consumers.get(id(value), 0) == 1 and id(value) not in graph_outputs and producer.family != "pool":
                    target_group = producer
                    break
        if target_group is None:
            target_group = LayerGroup([], family)
            groups.append(target_group)
        target_group.nodes.append(label)
        target_group.predicted_s += estimates.get(label, 0.0)
        for out in node.outputs:
            group_of[id(out)] = target_group
    group_features(model, groups, cost_model)
    return groups


def group_features(model: Model, groups: Sequence[LayerGroup], cost_model: RooflineCostModel) -> None:
    """Fill every group's :data:`FEATURES` (seconds at the target's roofline; see the module doc)."""
    nodes = {node_label(node, i): node for i, node in enumerate(model.graph)}
    work = {w.name: w for w in model_work(model)}
    bandwidth = cost_model.memory_bandwidth_gbps * 1e9
    for group in groups:
        members = [nodes[label] for label in group.nodes]
        produced = {id(v) for node in members for v in node.outputs if v is not None}
        seen: set[int] = set()
        activation = weight = 0
        for node in members:
            for value in node.inputs:
                if value is None or id(value) in produced or id(value) in seen:
                    continue
                seen.add(id(value))
                size = _nbytes(value) or 0
                if is_constant(value):
                    weight += size
                else:
                    activation += size
        activation += sum(_nbytes(v) or 0 for v in members[-1].outputs if v is not None)
        compute = sum(work[label].ops / cost_model.peak_ops_per_second(work[label].precision) for label in group.nodes)
        group.features = (compute, activation / bandwidth, weight / bandwidth, _OVERHEAD_UNIT_S)


def pair_kernels(groups: Sequence[LayerGroup], kernels: Sequence[tuple[str, float]]) -> tuple[list[LayerSample], int]:
    """Pair kernels (name, seconds; execution order) with groups, in order within each coarse
    family. Returns the samples and the number of kernels left unpaired."""
    by_family: dict[str, list[LayerGroup]] = {}
    for group in groups:
        by_family.setdefault(_coarse(group.family), []).append(group)
    cursor = {family: 0 for family in by_family}
    samples, unpaired = [], 0
    for name, seconds in kernels:
        family = kernel_family(name)
        queue = by_family.get(family, [])
        if cursor.get(family, 0) >= len(queue):
            unpaired += 1
            continue
        group = queue[cursor[family]]
        cursor[family] += 1
        if group.predicted_s > 0:
            samples.append(LayerSample(name, group.nodes, group.family, group.predicted_s, seconds, group.features))
    return samples, unpaired


# ------------------------------------------------------------------------------------------------
# Measuring on the host
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Measurement:
    """Per-kernel medians (execution order) and the whole-model median, in seconds."""

    kernels: list[tuple[str, float]]
    total_s: float
    lowering_s: float
    #: kernel name -> the schedule rule that scheduled it (the lowering report's ``scheduled``)
    rules: dict[str, str] = dataclasses.field(default_factory=dict)


def prepare_model(path: str | os.PathLike, target: Target) -> Model:
    """Load ``path`` and run the ``canonicalize`` passes (BatchNorm folding etc.), as compile does."""
    from compiler.context import CompileContext
    from compiler.frontend import FRONTEND_FACTS, load_and_prepare
    from compiler.pipeline import Pipeline

    model, _ = load_and_prepare(path)
    model, _ = Pipeline.parse("canonicalize").run(model, CompileContext(target=target), initial_facts=FRONTEND_FACTS)
    return model


def measure_layers(model: Model, target: Target | str = "cpu", repeats: int = 10, seed: int = 0,
                   rounds: int = 3, rpc=None, between_rounds: Callable[[int], None] | None = None) -> Measurement:
    """Lower ``model`` for ``target`` and time every kernel call: the median of ``repeats`` runs per
    kernel and for the whole model. Here (``rpc`` None; the target must run on this machine) in
    ``rounds`` alternating rounds, ``between_rounds(count)`` called after each round of ``count``
    runs (another measurement to interleave with, e.g. ONNX Runtime's in
    benchmarks/layer_profile.py); on a board when ``rpc`` is a ``targets.lowering.rpc.RpcDevice``.

    Raises OptionError for a target whose artifacts do not run on this machine and no ``rpc``.
    """
    if rpc is not None:
        return _measure_layers_rpc(model, get_target(target), repeats, seed, rpc)
    return measure_layers_interleaved([model], target, repeats, seed, rounds, between_rounds)[0]


def measure_layers_interleaved(models: Sequence[Model], target: Target | str = "cpu", repeats: int = 10,
                               seed: int = 0, rounds: int = 3,
                               between_rounds: Callable[[int], None] | None = None) -> list[Measurement]:
    """:func:`measure_layers` of several models on this machine, their runs interleaved round by
    round (and with ``between_rounds(count)`` after each round), so a burst of load from other
    processes lands on all of them and their ratios hold."""
    target = get_target(target)
    if not target.runs_locally:
        raise OptionError(f"target '{target.name}' does not run here; measure it on the board through TVM RPC")
    with tempfile.TemporaryDirectory() as tmp:
        timers = [_LocalTimer(model, target, seed, Path(tmp) / str(i)) for i, model in enumerate(models)]
    rounds = max(1, min(rounds, repeats))
    for round_index in range(rounds):
        count = repeats // rounds + (1 if round_index < repeats % rounds else 0)
        for timer in timers:
            timer.round(count)
        if between_rounds is not None:
            between_rounds(count)
    return [timer.result() for timer in timers]


class _LocalTimer:
    """One model lowered and loaded here, with a plain VM (whole-model times) and an instrumented
    VM (per-kernel times); :meth:`round` adds ``count`` runs of each."""

    def __init__(self, model: Model, target: Target, seed: int, workdir: Path):
        import tvm
        from tvm import relax

        from compiler.ir import to_proto
        from compiler.verify import random_feeds
        from targets.lowering import lower_model

        workdir.mkdir(parents=True)
        feeds = random_feeds(model, None, seed=seed)
        start = time.perf_counter()
        result = lower_model(to_proto(model), target, {}, workdir)
        self.lowering_s = time.perf_counter() - start
        self.rules = dict(result.scheduled)
        module = tvm.runtime.load_module(str(workdir / result.library_file))  # stays loaded after the dir goes
        self.vm = relax.VirtualMachine(module, tvm.cpu())
        self.timed_vm = relax.VirtualMachine(module, tvm.cpu())
        self.args = [tvm.runtime.tensor(np.ascontiguousarray(feeds[name]), tvm.cpu()) for name in result.input_names]
        self.runs: list[list[tuple[str, float]]] = []
        self.totals: list[float] = []
        state: dict[str, float] = {}

        def instrument(func, symbol, before_run, ret_value, *call_args):  # noqa: ARG001 - VM signature
            now = time.perf_counter()
            if before_run:
                state["start"] = now
            elif not str(symbol).startswith("vm.builtin"):
                self.runs[-1].append((str(symbol), now - state["start"]))
            return 0  # VMInstrumentReturnKind.kNoOp

        self.timed_vm.set_instrument(instrument)
        self.vm["main"](*self.args)  # warm-up: first-call allocation and page faults are not layer time
        self.runs.append([])
        self.timed_vm["main"](*self.args)  # warm-up of the instrumented VM, not kept
        self.runs.clear()

    def round(self, count: int) -> None:
        """``count`` whole-model runs, then ``count`` instrumented ones (so both see the same load)."""
        self.vm["main"](*self.args)  # untimed: the previous model's worker threads go idle first
        for _ in range(count):
            start = time.perf_counter()
            self.vm["main"](*self.args)
            self.totals.append(time.perf_counter() - start)
        for _ in range(count):
            self.runs.append([])
            self.timed_vm["main"](*self.args)

    def result(self) -> Measurement:
        names = [name for name, _ in self.runs[0]]
        medians = [(name, statistics.median(run[i][1] for run in self.runs)) for i, name in enumerate(names)]
        return Measurement(medians, statistics.median(self.totals), self.lowering_s, self.rules)


def _measure_layers_rpc(model: Model, target: Target, repeats: int, seed: int, rpc) -> Measurement:
    """:func:`measure_layers` on a board through TVM RPC (see the module docstring)."""
    from compiler.ir import to_proto
    from compiler.verify import random_feeds
    from targets.lowering import lower_model
    from targets.lowering.rpc import RemoteLibrary

    feeds = random_feeds(model, None, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = lower_model(to_proto(model), target, {}, Path(tmp), kernel_library=True)
        lowering_s = time.perf_counter() - start
        board = RemoteLibrary(rpc, Path(tmp) / result.library_file, result.input_names)
        total = board.time(feeds, repeat=repeats)
        kernels = board.time_kernels(Path(tmp) / result.kernel_library_file, result.kernels, repeats, seed)
        board.close()
    return Measurement(kernels, total["median_ms"] / 1e3, lowering_s)


# ------------------------------------------------------------------------------------------------
# Fitting and scoring
# ------------------------------------------------------------------------------------------------
def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); nan for fewer than 3 pairs."""
    if len(a) != len(b):
        raise ValueError("spearman: sequences differ in length")
    if len(a) < 3:
        return float("nan")

    def ranks(values: Sequence[float]) -> np.ndarray:
        array = np.asarray(values, dtype=float)
        order = np.argsort(array, kind="mergesort")
        out = np.empty(len(array))
        out[order] = np.arange(len(array), dtype=float)
        for value in np.unique(array):  # ties share their mean rank
            mask = array == value
            if mask.sum() > 1:
                out[mask] = out[mask].mean()
        return out

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def fit_factors(samples: Iterable[LayerSample]) -> tuple[dict[str, float], float]:
    """Per-family factors by least squares in log space, and the overall default factor."""
    logs: dict[str, list[float]] = {}
    everything: list[float] = []
    for sample in samples:
        ratio = math.log(sample.measured_s / sample.predicted_s)
        logs.setdefault(sample.family, []).append(ratio)
        everything.append(ratio)
    if not everything:
        raise OptionError("calibration: no kernel could be paired with an ONNX node")
    factors = {family: math.exp(sum(v) / len(v)) for family, v in sorted(logs.items())}
    return factors, math.exp(sum(everything) / len(everything))


def fit_coefficients(
    samples: Sequence[LayerSample], prior_weight: float = 1.0, match_total: bool = True
) -> tuple[dict[str, list[float]], list[float]]:
    """Per-family ``[a, b, w, c]`` and the pooled coefficients (see the module docstring).

    Non-negative least squares on relative residuals; each family's coefficients are pulled toward
    the pooled ones with weight ``prior_weight`` (0: independent fits); with ``match_total`` all
    coefficients are scaled so the summed prediction equals the summed measurement.

    Raises:
        OptionError: no samples, or a sample without features or with a non-positive time.
    """
    samples = list(samples)
    if not samples:
        raise OptionError("calibration: no kernel could be paired with an ONNX node")
    if any(len(s.features) != len(FEATURES) or not s.measured_s > 0 for s in samples):
        raise OptionError(f"calibration: every sample needs {len(FEATURES)} features and a measured time > 0")
    x = np.array([s.features for s in samples], dtype=float)
    y = np.array([s.measured_s for s in samples], dtype=float)
    # Relative residuals: divide each row by its measurement. Columns are scaled to unit norm for
    # the solver's conditioning (compute ~1e-3 s, overhead 1e-6) and scaled back after.
    a = x / y[:, None]
    norms = np.linalg.norm(a, axis=0)
    norms[norms == 0] = 1.0
    pooled = nnls(a / norms, np.ones(len(y)))[0] / norms
    families = sorted({s.family for s in samples})
    coefficients: dict[str, np.ndarray] = {}
    for family in families:
        rows = np.array([s.family == family for s in samples])
        if prior_weight > 0:
            # prior rows: prior_weight * (theta_k / pooled_k - 1) = 0 for every used feature k
            used = pooled > 0
            prior = np.zeros((int(used.sum()), len(FEATURES)))
            prior[np.arange(int(used.sum())), np.flatnonzero(used)] = prior_weight / pooled[used]
            lhs = np.vstack([a[rows], prior])
            rhs = np.concatenate([np.ones(int(rows.sum())), np.full(int(used.sum()), prior_weight)])
        else:
            lhs, rhs = a[rows], np.ones(int(rows.sum()))
        col = np.linalg.norm(lhs, axis=0)
        col[col == 0] = 1.0
        coefficients[family] = nnls(lhs / col, rhs)[0] / col
    if match_total:
        predicted = sum(float(coefficients[s.family] @ f) for s, f in zip(samples, x))
        scale = float(y.sum()) / predicted if predicted > 0 else 1.0
        pooled = pooled * scale
        coefficients = {k: v * scale for k, v in coefficients.items()}
    return {k: [float(c) for c in v] for k, v in coefficients.items()}, [float(c) for c in pooled]


def predictions(samples: Sequence[LayerSample], calibration: Calibration | None = None,
                factors: dict[str, float] | None = None, default: float = 1.0) -> list[float]:
    """Predicted seconds per sample: the roofline, or scaled by ``factors``, or ``calibration``'s model."""
    if calibration is not None:
        return [calibration.predict(s.family, s.features, s.predicted_s) for s in samples]
    if factors is not None:
        return [s.predicted_s * factors.get(s.family, default) for s in samples]
    return [s.predicted_s for s in samples]


def score(samples: Sequence[LayerSample], factors: dict[str, float] | None = None, default: float = 1.0,
          calibration: Calibration | None = None) -> dict[str, float]:
    """Spearman and summed-time error of predictions: the roofline (nothing given), per-family
    ``factors``, or a fitted ``calibration`` record (its coefficient model when it has one)."""
    predicted = predictions(samples, calibration, factors, default)
    measured = [s.measured_s for s in samples]
    total_p, total_m = sum(predicted), sum(measured)
    return {
        "spearman": spearman(predicted, measured),
        "predicted_ms": total_p * 1e3,
        "measured_ms": total_m * 1e3,
        "total_error": (total_p - total_m) / total_m if total_m else float("nan"),
    }


def collect_samples(model: Model, target: Target | str = "cpu", repeats: int = 10,
                    rpc=None) -> tuple[list[LayerSample], dict[str, Any]]:
    """Measure ``model`` on ``target`` (here, or on the board behind ``rpc``, a
    ``targets.lowering.rpc.RpcDevice``) and pair kernels with node groups; info on the pairing."""
    target = get_target(target)
    return _pair_measurement(model, target, measure_layers(model, target, repeats, rpc=rpc))


def collect_samples_interleaved(models: Sequence[Model], target: Target | str = "cpu", repeats: int = 10,
                                rounds: int = 5) -> list[tuple[list[LayerSample], dict[str, Any]]]:
    """:func:`collect_samples` of several models on this machine, timed interleaved
    (:func:`measure_layers_interleaved`): for before/after comparisons."""
    target = get_target(target)
    measurements = measure_layers_interleaved(models, target, repeats, rounds=rounds)
    return [_pair_measurement(model, target, m) for model, m in zip(models, measurements)]


def _pair_measurement(model: Model, target: Target, measurement: Measurement) -> tuple[list[LayerSample], dict[str, Any]]:
    groups = group_nodes(model, RooflineCostModel(target))
    samples, unpaired = pair_kernels(groups, measurement.kernels)
    info = {
        "kernels": len(measurement.kernels),
        "paired": len(samples),
        "unpaired_kernels": unpaired,
        "groups": len(groups),
        "measured_model_ms": measurement.total_s * 1e3,
        "kernel_sum_ms": sum(s for _, s in measurement.kernels) * 1e3,
        "lowering_s": measurement.lowering_s,
    }
    return samples, info


def calibrate(samples_by_model: dict[str, list[LayerSample]], target: Target | str = "cpu",
              prior_weight: float = 1.0) -> Calibration:
    """Fit one record from the samples of several models (all pooled): the coefficient model
    (:func:`fit_coefficients`) and, as a summary/fallback, the per-family factors."""
    from targets.lowering import versions

    target = get_target(target)
    pooled = [s for samples in samples_by_model.values() for s in samples]
    factors, default = fit_factors(pooled)
    coefficients, pooled_coefficients = fit_coefficients(pooled, prior_weight)
    return Calibration(target.name, factors, default, sorted(samples_by_model), len(pooled), versions(),
                       coefficients, pooled_coefficients)
