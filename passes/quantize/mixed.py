"""``mixed-precision``: per-layer weight bits by an integer linear program (HAWQ-V3's ILP) against
the target's cost model, with an accuracy budget.

Formulation (``solve_ilp``; HiGHS through ``scipy.optimize.milp``)
------------------------------------------------------------------
Layers l = 1..L (the Conv/Gemm/MatMul layers ``quantize`` makes integer), choices c in C (weight
bits 8, 4, optionally float). Binary x[l, c] = 1 iff layer l takes choice c::

    minimise    sum_{l,c} S[l, c] x[l, c]                 S: sensitivity (``sensitivity``: output
                                                          perturbation, or ``hessian``), additive
    subject to  sum_c x[l, c] = 1                         for every layer (one choice)
                sum_{l,c} R_r[l, c] x[l, c] <= B_r        for every budget r in {size, bops, latency}
                x[l, c] = x[k, c]                          for every c and tied pair (l, k)
                x[l, c] = 0                                for a choice not allowed for l
                x binary

R_size = stored parameter bytes, R_bops = MACs * w_bits * a_bits, R_latency = the cost model's
roofline estimate of the layer's kernel + requantize epilogue (``sensitivity.layer_costs``).

Ties: the integer form of this repo only varies *weight* bits per layer; activations are 8 bits
everywhere, so residual Adds and Concats see the same activation format whatever their producers
chose and no tie is *required*. ``solve_ilp`` supports ties anyway (option ``tie=a+b:c+d``), for
targets whose kernels want equal widths across a group.

Accuracy budget (``max_drop``, points of top-1 agreement with fp32 on ``ctx.calibration``): the
chosen map is applied by running ``quantize`` on a copy; while the drop exceeds the budget the most
sensitive 4-bit layer is raised to 8 bits, and when none is left the most sensitive 8-bit layer
falls back to float (an island). Each fallback is a note; a fallback may break a size/latency budget
(accuracy wins, and the note says so).

Pareto front: the ILP is re-solved for a sweep of the primary budget (the first given of size,
latency, bops; size by default) from the cheapest assignment to uniform 8 bits, and the points
(size, bops, latency, total sensitivity) go into the stats next to the uniform int8 / int4 points.

Hand-off: the chosen bits are written to the model's metadata (``integer.BITS_MAP_KEY``), which the
following ``quantize`` pass reads (``export-qdq`` does not read it yet). The graph is not changed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

from compiler.context import CompileContext
from compiler.ir import Model, copy_model
from compiler.pass_base import Fact, Pass, PassResult, Tolerance, register_pass
from passes.quantize.integer import BITS_MAP_KEY, QuantizeIntegerPass
from passes.quantize.sensitivity import CHOICES, LayerInfo, find_layers, layer_costs, measure_sensitivity, parse_choice

__all__ = ["IlpInfeasible", "MixedPrecisionPass", "output_accuracy", "parse_budget", "solve_ilp", "top1_agreement"]

RESOURCES = ("size", "bops", "latency")
_UNITS = {
    "size": {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "": 1},
    "bops": {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12},
    "latency": {"s": 1, "ms": 1e-3, "us": 1e-6},
}


class IlpInfeasible(ValueError):
    """No assignment meets the budgets."""


def parse_budget(text: str, resource: str, uniform8: float) -> float:
    """A budget in the resource's unit (bytes, bit operations, seconds).

    ``0.7x`` is relative to uniform 8-bit weights; otherwise a number with a unit: size ``2MB``,
    ``512KiB``, ``1e6``; bops ``3.5G``, ``1e9``; latency ``0.3ms``, ``250us``, ``0.001s``.
    """
    raw = text.strip().lower()
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*([a-z]*)", raw)
    if not m:
        raise ValueError(f"option {resource}={text}: expected a number with a unit or a ratio like 0.7x")
    number, unit = float(m.group(1)), m.group(2)
    if unit == "x":
        return number * uniform8
    units = _UNITS[resource]
    if unit not in units:
        raise ValueError(f"option {resource}={text}: unit '{unit}' not one of {', '.join(u for u in units if u)} or x")
    return number * units[unit]


def solve_ilp(
    sensitivity: np.ndarray,
    costs: Mapping[str, np.ndarray],
    budgets: Mapping[str, float],
    ties: Sequence[Sequence[int]] = (),
    allowed: np.ndarray | None = None,
) -> np.ndarray:
    """The choice index per layer minimising total sensitivity within the budgets.

    Args:
        sensitivity: [L, C] objective coefficients.
        costs: resource name -> [L, C] cost; only those named in ``budgets`` constrain.
        budgets: resource name -> upper bound of the summed cost.
        ties: groups of layer indices that must take the same choice.
        allowed: [L, C] bool; False forbids a choice.

    Raises:
        IlpInfeasible: no assignment meets the budgets (the message names them).
    """
    from scipy.optimize import Bounds, LinearConstraint, milp

    sens = np.asarray(sensitivity, dtype=np.float64)
    n_layers, n_choices = sens.shape
    n = n_layers * n_choices
    scale = float(np.abs(sens).max()) or 1.0
    objective = (sens / scale).reshape(n)
    constraints = []
    one = np.zeros((n_layers, n))
    for l in range(n_layers):
        one[l, l * n_choices : (l + 1) * n_choices] = 1
    constraints.append(LinearConstraint(one, 1, 1))
    for name, bound in budgets.items():
        row = np.asarray(costs[name], dtype=np.float64).reshape(n)
        norm = float(np.abs(row).max()) or 1.0
        # a hair of slack so a budget equal to an assignment's cost (the sweep's end points) is feasible
        constraints.append(LinearConstraint(row[None, :] / norm, -np.inf, bound / norm * (1 + 1e-9) + 1e-12))
    tie_rows = []
    for group in ties:
        group = list(group)
        for other in group[1:]:
            for c in range(n_choices):
                row = np.zeros(n)
                row[group[0] * n_choices + c], row[other * n_choices + c] = 1, -1
                tie_rows.append(row)
    if tie_rows:
        constraints.append(LinearConstraint(np.array(tie_rows), 0, 0))
    upper = np.ones(n) if allowed is None else np.asarray(allowed, dtype=np.float64).reshape(n)
    result = milp(objective, integrality=np.ones(n), bounds=Bounds(np.zeros(n), upper), constraints=constraints,
                  options={"mip_rel_gap": 0.0})
    if result.status != 0 or result.x is None:
        limits = ", ".join(f"{k} <= {v:.6g}" for k, v in budgets.items())
        raise IlpInfeasible(f"no per-layer bit assignment meets the budgets ({limits}): {result.message}")
    return np.round(result.x).reshape(n_layers, n_choices).argmax(axis=1)


def output_accuracy(reference: Model, quantized: Model, calibration) -> dict[str, float]:
    """How the quantized model's first output compares with fp32's on ``calibration`` (ORT):
    ``top1_agreement`` (share of rows, argmax over the last axis, equal to fp32's) and ``sqnr_db``
    = 10 log10(sum y^2 / sum (y - y_q)^2) over every element (inf when equal)."""
    from compiler.quant_report import sqnr_db
    from compiler.verify import ort_session

    sessions = [ort_session(reference), ort_session(quantized)]
    names = {i.name for i in sessions[0].get_inputs()}
    agree = total = 0
    signal = noise = 0.0
    for feed in calibration:
        feed = {k: v for k, v in feed.items() if k in names}
        ref, got = (np.asarray(s.run(None, feed)[0], dtype=np.float64) for s in sessions)
        a, b = ref.argmax(axis=-1), got.argmax(axis=-1)
        agree += int((a == b).sum())
        total += a.size
        signal += float((ref * ref).sum())
        noise += float(((ref - got) ** 2).sum())
    return {"top1_agreement": agree / max(total, 1), "sqnr_db": sqnr_db(signal, noise)}


def top1_agreement(reference: Model, quantized: Model, calibration) -> float:
    """Share of calibration predictions (argmax of the first output's last axis) equal to fp32's."""
    return output_accuracy(reference, quantized, calibration)["top1_agreement"]


def _name_layers(model: Model) -> list[str]:
    """Give unnamed Conv/Gemm/MatMul nodes a unique name: the bit map is keyed by node name."""
    taken = {n.name for n in model.graph if n.name}
    notes = []
    for index, node in enumerate(model.graph):
        if node.name or node.op_type not in ("Conv", "Gemm", "MatMul") or node.domain not in ("", "ai.onnx"):
            continue
        name, k = f"{node.op_type.lower()}_{index}", 0
        while name in taken:
            k += 1
            name = f"{node.op_type.lower()}_{index}_{k}"
        node.name = name
        taken.add(name)
        notes.append(f"named the unnamed {node.op_type} node '{name}' (the bit map is keyed by node name)")
    return notes


def _fmt_bytes(b: float) -> str:
    return f"{b / 1e6:.3g} MB" if abs(b) >= 1e6 else f"{b / 1e3:.3g} KB" if abs(b) >= 1e3 else f"{b:.0f} B"


@register_pass
@dataclasses.dataclass(frozen=True)
class MixedPrecisionPass(Pass):
    """Choose each layer's weight bits (8, 4, or float) by an ILP; hand the map to ``quantize``.

    Options:
        size: model-layer size budget, ``2MB`` / ``300KiB`` / bytes / ``0.6x`` (of uniform int8).
        latency: estimated layer latency budget (``ctx.cost_model``), ``0.7x`` / ``0.3ms`` / ``250us``.
        bops: bit-operation budget, ``2G`` / ``1e9`` / ``0.6x``.
        max_drop: accuracy budget in points of top-1 agreement with fp32 on the calibration data;
            None (default) skips the check.
        choices: precisions the ILP may pick, ``8:4`` (default) or ``8:4:float``.
        metric: sensitivity metric, ``mse`` (of the outputs) or ``kl`` (of the first output's softmax).
        tie: groups of node names that must take the same bits, ``a+b:c+d``.
        sweep: points of the Pareto front (0 disables it).
        observer: the observer ``quantize`` uses for the ``max_drop`` check.
        sensitivity: the estimator, ``perturbation`` (output perturbation, ``metric``) or ``hessian``
            (Hutchinson Hessian trace x squared quantization error, ``passes.quantize.hessian``;
            falls back to perturbation with a note when the graph has an op torch cannot run).
        hessian_samples: Rademacher vectors per calibration batch for ``sensitivity=hessian``.
        hessian_batches: calibration batches (the first ones) the Hessian loss averages over.
        measure_front: quantize every Pareto point and the uniform int8/int4 maps on a copy and
            measure top-1 agreement and output SQNR against fp32 on the calibration data (one
            ``quantize`` + ORT run per point; off by default).

    Needs what ``quantize`` needs. Preserves every fact: only model metadata changes.
    """

    name = "mixed-precision"
    needs = frozenset({Fact.CONSTANTS_LIFTED, Fact.BN_FOLDED, Fact.SHAPES_INFERRED})
    preserves = frozenset(Fact)
    tolerance = Tolerance.EXACT

    size: str = ""
    latency: str = ""
    bops: str = ""
    max_drop: float | None = None
    choices: tuple[str, ...] = ("8", "4")
    metric: str = "mse"
    tie: tuple[str, ...] = ()
    sweep: int = 9
    observer: str = "minmax"
    sensitivity: str = "perturbation"
    hessian_samples: int = 16
    hessian_batches: int = 4
    measure_front: bool = False

    def run(self, model: Model, ctx: CompileContext) -> PassResult:
        choices = list(dict.fromkeys(parse_choice(c) for c in self.choices))
        if not choices:
            raise ValueError("option choices: give at least one of 8, 4, float")
        budget_text = {"size": self.size, "bops": self.bops, "latency": self.latency}
        if self.latency and ctx.cost_model is None:
            raise ValueError("option latency: needs a cost model (ctx.cost_model), none was given")
        model.graph.sort()
        notes = _name_layers(model)
        layers, skipped = find_layers(model)
        notes += skipped
        if not layers:
            return PassResult(model, False, {}, [*notes, "no quantizable Conv/Gemm/MatMul layers: nothing to choose"])
        if not ctx.calibration:
            raise ValueError("mixed-precision needs calibration data (ctx.calibration is empty; pass --calib)")
        index = {l.name: i for i, l in enumerate(layers)}
        ties = []
        for group in self.tie:
            names = [n for n in group.split("+") if n]
            unknown = [n for n in names if n not in index]
            if unknown:
                raise ValueError(f"option tie: '{unknown[0]}' is not a quantizable layer (layers: {', '.join(index)})")
            ties.append([index[n] for n in names])

        # -- tables ---------------------------------------------------------------------------------
        bits = [CHOICES[c] for c in choices if c != "float"] or [8]
        sens_table, method, traces = self._sensitivity(model, layers, ctx, sorted(set(bits) | {8, 4}, reverse=True), notes)
        all_choices = ["8", "4", "float"]
        cost_table = {l.name: {c: layer_costs(l, c, ctx.cost_model, ctx.target) for c in all_choices} for l in layers}
        S = np.array([[sens_table[l.name][c] for c in all_choices] for l in layers])
        R = {r: np.array([[cost_table[l.name][c][r] for c in all_choices] for l in layers]) for r in RESOURCES}
        allowed = np.array([[c in choices for c in all_choices] for _ in layers])

        def totals(assign: Sequence[int]) -> dict[str, float]:
            rows = range(len(layers))
            out = {r: float(sum(R[r][l, assign[l]] for l in rows)) for r in RESOURCES}
            out["sensitivity"] = float(sum(S[l, assign[l]] for l in rows))
            return out

        uniform = {f"int{b}": {"name": f"int{b}", **totals([all_choices.index(str(b))] * len(layers))} for b in (8, 4)}
        budgets = {r: parse_budget(t, r, uniform["int8"][r]) for r, t in budget_text.items() if t}
        assign = solve_ilp(S, R, budgets, ties, allowed)

        def describe(l: int, c: int, why: str = "") -> str:
            layer, name = layers[l], all_choices[c]
            ref = all_choices.index("8")
            d_size = R["size"][l, ref] - R["size"][l, c]
            d_lat = (R["latency"][l, ref] - R["latency"][l, c]) * 1e3
            width = "float" if name == "float" else f"{name} bits"
            text = f"{layer.label}: {width} (sensitivity {S[l, c]:.3g}"
            if name == "8":
                four = all_choices.index("4")
                d_lat4 = (R['latency'][l, ref] - R['latency'][l, four]) * 1e3
                text += (f"; 4 bits would cost {S[l, four] - S[l, c]:.3g} more sensitivity to save "
                         f"{_fmt_bytes(R['size'][l, ref] - R['size'][l, four])}"
                         + (f" and {'save' if d_lat4 >= 0 else 'add'} {abs(d_lat4):.3g} ms est." if ctx.cost_model else ""))
            else:
                text += (f"; {'saves' if d_size >= 0 else 'adds'} {_fmt_bytes(abs(d_size))}"
                         + (f", {'saves' if d_lat >= 0 else 'adds'} {abs(d_lat):.3g} ms est." if ctx.cost_model else "")
                         + " vs 8 bits")
            return text + ")" + why

        why = {}
        for l, c in enumerate(assign):
            why[layers[l].name] = describe(l, c)
            notes.append(why[layers[l].name])
        chosen = totals(assign)
        budget_words = ", ".join(f"{r} <= {self._show(r, v)}" for r, v in budgets.items()) or "no budget (least sensitivity)"
        notes.append(f"ILP over {len(layers)} layers x {choices} with {budget_words}: size {_fmt_bytes(chosen['size'])}, "
                     f"bops {chosen['bops']:.3g}"
                     + (f", latency {chosen['latency'] * 1e3:.4g} ms est." if ctx.cost_model else "")
                     + f", total sensitivity {chosen['sensitivity']:.3g}")

        # -- accuracy budget ------------------------------------------------------------------------
        fallbacks: list[str] = []
        agreement = None
        if self.max_drop is not None:
            assign = list(assign)
            best: tuple[float, list[int]] | None = None
            while True:
                agreement = self._agreement(model, layers, [all_choices[c] for c in assign], ctx)
                drop = (1 - agreement) * 100
                if best is None or agreement > best[0]:
                    best = (agreement, list(assign))
                if drop <= self.max_drop:
                    notes.append(f"top-1 agreement with fp32 on calibration {agreement:.4f} (drop {drop:.3g} points <= max_drop {self.max_drop})")
                    break
                four = [l for l, c in enumerate(assign) if all_choices[c] == "4"]
                eight = [l for l, c in enumerate(assign) if all_choices[c] == "8"]
                if four:
                    group = self._group(max(four, key=lambda l: S[l, all_choices.index("4")]), ties)
                    target = "8"
                elif eight:
                    group = self._group(max(eight, key=lambda l: S[l, all_choices.index("8")]), ties)
                    target = "float"
                else:
                    agreement, assign = best
                    notes.append(f"max_drop {self.max_drop} not met: drop {drop:.3g} points with every layer float "
                                 "(the activation quantization alone exceeds the budget); keeping the best map "
                                 f"seen, top-1 agreement {agreement:.4f} (drop {(1 - agreement) * 100:.3g} points)")
                    break
                for l in group:
                    assign[l] = all_choices.index(target)
                    message = (f"fallback: {layers[l].label} -> {'float' if target == 'float' else '8 bits'} "
                               f"(drop {drop:.3g} points > max_drop {self.max_drop}; most sensitive at "
                               f"{'8' if target == 'float' else '4'} bits, {S[l, all_choices.index('8' if target == 'float' else '4')]:.3g})")
                    fallbacks.append(message)
                    notes.append(message)
                    why[layers[l].name] = message + "; ILP choice was " + why[layers[l].name]
            after = totals(assign)
            over = [r for r, v in budgets.items() if after[r] > v * (1 + 1e-9)]
            if over:
                notes.append(f"fallbacks break the {', '.join(over)} budget: accuracy takes precedence")
            chosen = after

        # -- Pareto front ---------------------------------------------------------------------------
        primary, front = self._pareto(S, R, budgets, ties, allowed, all_choices, totals) if self.sweep > 0 else (None, [])
        if self.measure_front:
            for point in [*front, *uniform.values()]:
                picks = point.get("bits") or [point["name"].removeprefix("int")] * len(layers)
                point["accuracy"] = self._accuracy(model, layers, picks, ctx)
            chosen["accuracy"] = self._accuracy(model, layers, [all_choices[c] for c in assign], ctx)
            notes.append(f"measured {len(front) + 3} maps (Pareto points, uniform int8/int4, chosen) on {len(ctx.calibration)} "
                         "calibration batches: top-1 agreement and output SQNR vs fp32")

        bit_map = {layers[l].name: (all_choices[c] if all_choices[c] == "float" else int(all_choices[c])) for l, c in enumerate(assign)}
        text = json.dumps(bit_map, sort_keys=True)
        modified = model.metadata_props.get(BITS_MAP_KEY) != text
        model.metadata_props[BITS_MAP_KEY] = text
        stats = {
            "bits": bit_map,
            "budgets": budgets,
            "chosen": chosen,
            "uniform": uniform,
            "sensitivity": sens_table,
            "sensitivity_metric": self.metric if method == "perturbation" else "hessian-trace x quantization error (KL units)",
            "sensitivity_method": method,
            "hessian": traces,
            "costs": cost_table,
            "pareto": front,
            "pareto_resource": primary,
            "why": why,
            "layers": [{"name": l.name, "label": l.label, "op_type": l.op_type, "weights": l.weight_elems, "macs": l.macs}
                       for l in layers],
            "fallbacks": fallbacks,
            "latency_source": "roofline estimate" if ctx.cost_model is not None else "none (no cost model)",
        }
        if agreement is not None:
            stats["top1_agreement"] = agreement
        return PassResult(model, modified, stats, notes)

    # -- helpers ------------------------------------------------------------------------------------
    def _sensitivity(self, model: Model, layers: list[LayerInfo], ctx: CompileContext, bits: list[int],
                     notes: list[str]) -> tuple[dict, str, dict]:
        """(table, method used, Hessian traces or {}); a Hessian that cannot run falls back."""
        if self.sensitivity not in ("perturbation", "hessian"):
            raise ValueError(f"option sensitivity={self.sensitivity}: expected perturbation or hessian")
        if self.sensitivity == "hessian":
            from passes.quantize.hessian import HessianUnavailable, hessian_sensitivity

            if self.hessian_batches < 1:
                raise ValueError(f"option hessian_batches={self.hessian_batches}: must be >= 1")
            try:
                table, traces = hessian_sensitivity(model, layers, list(ctx.calibration)[: self.hessian_batches], bits,
                                                    self.hessian_samples)
            except HessianUnavailable as exc:
                notes.append(f"hessian sensitivity unavailable ({exc}): using output perturbation ({self.metric})")
            else:
                used = min(self.hessian_batches, len(ctx.calibration))
                notes.append(f"sensitivity: Hessian trace (Hutchinson, {self.hessian_samples} Rademacher vectors x {used} "
                             "calibration batches, loss = cross-entropy against the fp32 predictions) x squared quantization error")
                return table, "hessian", traces
        return measure_sensitivity(model, layers, ctx.calibration, bits, self.metric), "perturbation", {}

    @staticmethod
    def _show(resource: str, value: float) -> str:
        return _fmt_bytes(value) if resource == "size" else f"{value * 1e3:.4g} ms est." if resource == "latency" else f"{value:.4g}"

    @staticmethod
    def _group(l: int, ties: list[list[int]]) -> list[int]:
        for group in ties:
            if l in group:
                return group
        return [l]

    def _accuracy(self, model: Model, layers: list[LayerInfo], picks: list[str], ctx: CompileContext) -> dict[str, float]:
        """``output_accuracy`` of ``model`` quantized with ``picks`` (a copy; ``model`` is unchanged)."""
        quantized = copy_model(model)
        entries = tuple(f"{l.name}@{p}" for l, p in zip(layers, picks))
        QuantizeIntegerPass(observer=self.observer, bits_map=entries)(quantized, CompileContext(
            target=ctx.target, cost_model=ctx.cost_model, calibration=ctx.calibration, options=ctx.options))
        return output_accuracy(model, quantized, ctx.calibration)

    def _agreement(self, model: Model, layers: list[LayerInfo], picks: list[str], ctx: CompileContext) -> float:
        return self._accuracy(model, layers, picks, ctx)["top1_agreement"]

    def _pareto(self, S, R, budgets, ties, allowed, all_choices, totals) -> tuple[str, list[dict]]:
        """(the swept resource, the front sorted by it)."""
        primary = next((r for r in ("size", "latency", "bops") if r in budgets), "size")
        if primary == "latency" and not R["latency"].any():
            primary = "size"
        masked = np.where(allowed, R[primary], np.inf)
        low = float(masked.min(axis=1).sum())
        high = float(R[primary][:, all_choices.index("8")].sum()) if allowed[:, all_choices.index("8")].all() else float(np.where(allowed, R[primary], -np.inf).max(axis=1).sum())
        high = max(high, low)
        points: dict[tuple, dict] = {}
        for bound in np.linspace(low, high, self.sweep) if self.sweep > 1 else [high]:
            others = {r: v for r, v in budgets.items() if r != primary}
            try:
                assign = solve_ilp(S, R, {**others, primary: float(bound)}, ties, allowed)
            except IlpInfeasible:
                continue
            key = tuple(int(a) for a in assign)
            point = {"budget": {primary: float(bound)}, **totals(assign), "bits": [all_choices[a] for a in assign]}
            points.setdefault(key, point)
        return primary, sorted(points.values(), key=lambda p: p[primary])
