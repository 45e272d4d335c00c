"""``prune-channels``: structured channel pruning of Conv/Gemm/MatMul layers, chosen per group.

Pipeline of the pass: dependency analysis (``dependency.py``) -> importance per unit
(``importance.py``) -> kept counts per group (``selection.py``, with ``latency.py`` for the cost
model) -> channel removal (``surgery.py``) -> optional least-squares repair of the consumers
(``reconstruct.py``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from compiler.context import CompileContext
from compiler.errors import OptionError
from compiler.layer_decisions import LayerDecision
from compiler.ir import Model, Value, copy_model, count_parameters
from compiler.pass_base import CANONICAL_FACTS, Fact, Pass, PassResult, Tolerance, register_pass
from passes.prune import importance as importance_mod
from passes.prune import selection
from passes.prune.dependency import ChannelGroup, analyze
from passes.prune.dependency import node_label as consumer_label  # the label Refit.node carries
from passes.prune.latency import group_time_table, touching_nodes
from passes.prune.reconstruct import reconstruct as refit_consumers
from passes.prune.surgery import remove_channels
from targets.cost_model import node_label

__all__ = ["PruneChannelsPass", "PrunePlan"]

_MS = 1e3  # seconds -> milliseconds in notes


@dataclasses.dataclass
class PrunePlan:
    """What the pass will remove. ``kept[i]`` are the kept unit indices of ``groups[i]``;
    ``decisions[i]`` is the report row of ``groups[i]`` (every group, eligible or not)."""

    groups: list[ChannelGroup]
    kept: dict[int, np.ndarray]
    saved_seconds: dict[int, float]
    notes: list[str]
    decisions: list[LayerDecision] = dataclasses.field(default_factory=list)

    @property
    def removed(self) -> dict[Value, np.ndarray]:
        """Channel indices each member tensor loses (only non-empty entries)."""
        out: dict[Value, np.ndarray] = {}
        for i, keep in self.kept.items():
            group = self.groups[i]
            gone = sorted(set(range(group.size)) - set(int(u) for u in keep))
            for value, indices in group.removal(gone).items():
                # A Concat/Split tensor belongs to several groups: its removals add up.
                if len(indices):
                    out[value] = np.union1d(out.get(value, indices), indices)
        return out

    @property
    def axes(self) -> dict[Value, int]:
        return {m.value: m.axis for g in self.groups for m in g.members}

    def removed_by_name(self) -> dict[str, tuple[int, np.ndarray]]:
        """``{tensor name: (channel axis, removed indices)}``, to apply the choice to a copy."""
        axes = self.axes
        return {v.name: (axes[v], idx) for v, idx in self.removed.items()}


@register_pass
@dataclasses.dataclass(frozen=True)
class PruneChannelsPass(Pass):
    """Remove the least important channels of coupled Conv/Gemm/MatMul layer groups.

    Options:
        ratio: fraction to remove - of each group's channels (``uniform``), of all eligible
            channels (``global``), or of the model's estimated time (``latency``).
        mode: ``uniform`` | ``global`` | ``latency`` (see ``selection.py``; latency needs
            ``ctx.cost_model``).
        importance: ``l1`` | ``l2`` | ``bn`` | ``activation`` (see ``importance.py``; activation
            needs ``ctx.calibration``).
        reconstruct: re-fit the consumers of pruned channels by ridge least squares on
            ``ctx.calibration`` (``reconstruct.py``); skipped with a note when there is no data.
        min_channels: never keep fewer channels in a group.

    Needs: CONSTANTS_LIFTED (weights are initializers), BN_FOLDED, SHAPES_INFERRED (Flatten/Reshape/
    Concat/Split mappings and the cost model read shapes). BN_FOLDED is required because a folded
    graph has one set of per-channel parameters per layer (the Conv's), which is what the latency
    tables and reconstruction model; a BatchNormalization the folder had to leave is still handled
    (sliced as a pass-through) and is what ``importance=bn`` reads (else the folded filter norm,
    which equals |gamma / sigma| times the unfolded filter norm - see ``importance.py``).
    Preserves: every canonical fact; shapes of pruned tensors are updated in place.

    Invariant: for the removed channel set S (whole units of eligible groups), the pruned model
    equals the original model with the input weights of S zeroed in every consumer (Conv W[:, S],
    Gemm/MatMul rows of S's features): nothing else reads those channels. Kept channel counts are
    multiples of ``ctx.target.channel_multiple`` (or the whole group). Graph inputs/outputs and
    their shapes never change. Tolerance: LOSSY (removing channels changes the function; the exact
    statement above is what the tests check).

    Before -> After (ratio 0.5, residual pair tied into one group)::

        a = Conv(x, Wa[8,3,3,3])    b = Conv(a, Wb[8,8,1,1])     a = Conv(x, Wa'[4,3,3,3])   b = Conv(a, Wb'[4,4,1,1])
        s = Add(a, b)               y = Conv(s, Wc[5,8,1,1])  ->  s = Add(a, b)               y = Conv(s, Wc'[5,4,1,1])
    """

    name = "prune-channels"
    needs = frozenset({Fact.CONSTANTS_LIFTED, Fact.BN_FOLDED, Fact.SHAPES_INFERRED})
    preserves = CANONICAL_FACTS
    tolerance = Tolerance.LOSSY

    ratio: float = 0.3
    mode: str = "uniform"
    importance: str = "l1"
    reconstruct: bool = True
    min_channels: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"option prune-channels{{ratio}}: expected 0 <= ratio < 1, got {self.ratio}")
        if self.mode not in selection.MODES:
            raise ValueError(f"option prune-channels{{mode}}: '{self.mode}' is not one of {', '.join(selection.MODES)}")
        if self.importance not in importance_mod.CRITERIA:
            raise ValueError(
                f"option prune-channels{{importance}}: '{self.importance}' is not one of {', '.join(importance_mod.CRITERIA)}"
            )
        if self.min_channels < 1:
            raise ValueError(f"option prune-channels{{min_channels}}: expected >= 1, got {self.min_channels}")

    # -- planning (no mutation) ---------------------------------------------------------------------
    def plan(self, model: Model, ctx: CompileContext) -> PrunePlan:
        """Analyse ``model`` and choose the channels to remove; the model is not changed."""
        if self.mode == "latency" and ctx.cost_model is None:
            raise OptionError("pass 'prune-channels' with mode=latency needs a cost model: compile for a target")
        if self.importance == "activation" and not ctx.calibration:
            raise OptionError("pass 'prune-channels' with importance=activation needs calibration data (--calib)")
        multiple = int(getattr(ctx.target, "channel_multiple", 1) or 1)
        groups = analyze(model)
        notes = [f"group {g.name} ineligible: {g.reason}" for g in groups if not g.eligible]
        decisions = [_decision(model, g) for g in groups]
        eligible = [i for i, g in enumerate(groups) if g.eligible]
        energy = None
        if self.importance == "activation" and eligible:
            values = [(m.value, m.axis) for i in eligible for m in importance_mod.activation_values(groups[i])]
            energy = importance_mod.activation_energy(model, ctx.calibration, values)
        scores = []
        for i in eligible:
            s, note = importance_mod.group_scores(groups[i], self.importance, energy)
            scores.append(s)
            if note:
                notes.append(note)
        chosen = [groups[i] for i in eligible]
        tables: list[dict[int, float]] = []
        if ctx.cost_model is not None:
            tables = [
                group_time_table(
                    ctx.cost_model,
                    model,
                    g,
                    selection.candidate_counts(
                        g, multiple, self.min_channels, selection.LATENCY_MAX_CUT if self.mode == "latency" else 1.0
                    ),
                )
                for g in chosen
            ]
        if self.mode == "uniform":
            counts = selection.uniform_counts(chosen, self.ratio, multiple, self.min_channels)
        elif self.mode == "global":
            counts = selection.global_counts(chosen, scores, self.ratio, multiple, self.min_channels)
        else:
            total = ctx.cost_model.estimate(model).seconds
            counts = selection.latency_counts(chosen, scores, tables, self.ratio * total)
            reached = sum(t[g.size] - t[k] for g, t, k in zip(chosen, tables, counts))
            if reached < self.ratio * total:
                notes.append(
                    f"latency target -{self.ratio * 100:.0f}% not reached: -{reached / total * 100:.1f}% estimated "
                    f"(no group loses more than {selection.LATENCY_MAX_CUT:.0%}; the rest is per-kernel overhead "
                    "and unprunable layers)"
                )
        kept: dict[int, np.ndarray] = {}
        saved: dict[int, float] = {}
        for position, (i, k) in enumerate(zip(eligible, counts)):
            group = groups[i]
            width = group.unit_width
            before, after = group.size * width, k * width
            decision = decisions[i]
            if tables:
                table = tables[position]
                full = table[group.size]
                saved[i] = full - table[k] if k in table else full - group_time_table(ctx.cost_model, model, group, [k])[k]
                timing = f", -{saved[i] * _MS:.3g} ms estimated"
                decision.estimated_ms_before = full * _MS
                decision.estimated_ms_after = (full - saved[i]) * _MS
            else:
                timing = ""
            if k < group.size:
                kept[i] = selection.keep_best(scores[position], k)
                notes.append(f"group {group.name}: {before} -> {after} channels{timing} (importance {self.importance})")
                decision.status, decision.after, decision.reason = "pruned", f"{after} channels", None
                decision.details["channels_after"] = after
                decision.details["importance"] = self.importance
            else:
                decision.status = "kept"
                if self.mode == "latency":
                    decision.reason = "cuts elsewhere save more estimated time per importance"
                else:
                    decision.reason = f"rounding to multiples of {multiple} leaves nothing to cut"
                notes.append(f"group {group.name}: {before} channels kept ({decision.reason})")
        return PrunePlan(groups, kept, saved, notes, decisions)

    # -- the pass ------------------------------------------------------------------------------------
    def run(self, model: Model, ctx: CompileContext) -> PassResult:
        plan = self.plan(model, ctx)
        groups = plan.groups
        notes = list(plan.notes)
        stats: dict = {
            "groups": len(groups),
            "eligible_groups": sum(g.eligible for g in groups),
            "pruned_groups": len(plan.kept),
            "channels_removed": 0,
        }
        removed = plan.removed
        if not removed:
            stats["layers"] = [d.to_json() for d in plan.decisions]
            return PassResult(model, False, stats, notes)
        params_before = count_parameters(model)
        before_cost = ctx.cost_model.estimate(model) if ctx.cost_model is not None else None
        want_refit = self.reconstruct and bool(ctx.calibration)
        original = copy_model(model) if want_refit else None
        remove_channels(model, removed, plan.axes)

        pruned_channels = sum(
            (groups[i].size - len(keep)) * groups[i].unit_width for i, keep in plan.kept.items()
        )
        stats.update({"channels_removed": pruned_channels, "params_before": params_before, "params_after": count_parameters(model)})
        if self.reconstruct and not ctx.calibration:
            notes.append("reconstruction skipped: no calibration data")
        if want_refit:
            consumers = {id(n): n for i in plan.kept for n in groups[i].sinks}
            kept_outputs = {}
            for value, indices in removed.items():
                axis_size = int(value.shape[plan.axes[value]]) + len(indices)  # shape already pruned
                kept_outputs[value.name] = np.setdiff1d(np.arange(axis_size), indices)
            refits = refit_consumers(model, original, list(consumers.values()), kept_outputs, ctx.calibration, ctx.seed)
            _attach_refit_errors(plan, refits)
            for r in refits:
                if r.applied:
                    where = "held-out calibration batches" if r.held_out else "calibration data (in-sample: one batch)"
                    notes.append(
                        f"reconstructed {r.node}: relative output error on {where} {r.error_before:.4g} -> "
                        f"{r.error_after:.4g} (ridge {r.ridge:g})"
                    )
                else:
                    notes.append(f"reconstruction of {r.node} not applied (unsupported layout or no improvement)")
            stats["reconstructed"] = sum(r.applied for r in refits)
        stats["layers"] = [d.to_json() for d in plan.decisions]
        if before_cost is not None:
            after_cost = ctx.cost_model.estimate(model)
            stats["estimated_ms_before"] = before_cost.ms
            stats["estimated_ms_after"] = after_cost.ms
            notes.append(
                f"estimated latency {before_cost.ms:.4g} -> {after_cost.ms:.4g} ms "
                f"({(after_cost.seconds / before_cost.seconds - 1) * 100:+.1f}%, roofline estimate)"
            )
        return PassResult(model, True, stats, notes)



def _decision(model: Model, group: ChannelGroup) -> LayerDecision:
    """The report row of ``group`` before any choice: ``ineligible`` with its reason, else ``kept``
    at full width (:meth:`PruneChannelsPass.plan` updates it). ``nodes`` are all nodes touching the
    group's tensors -- the ones whose time the cut changes (``latency.touching_nodes``)."""
    touching = [node_label(node, index) for index, node in touching_nodes(model, group)]
    channels = group.size * group.unit_width
    layers = list(dict.fromkeys(n.name for n in (*group.sources, *group.sinks) if n.name))
    return LayerDecision(
        layer=group.name,
        op="channel group",
        status="ineligible" if not group.eligible else "kept",
        before=f"{channels} channels",
        after=f"{channels} channels",
        reason=group.reason if not group.eligible else "not chosen",
        nodes=touching,
        nodes_after=touching,  # pruning removes channels, never nodes: the labels stay
        details={"channels_before": channels, "channels_after": channels, "layers": layers},
    )


def _attach_refit_errors(plan: PrunePlan, refits) -> None:
    """Give every pruned group the worst relative output error of its re-fitted consumers (the
    held-out error when there was held-out data), which is the error the report states."""
    by_node = {r.node: r for r in refits if r.applied}
    for i in plan.kept:
        decision = plan.decisions[i]
        fits = [by_node[label] for label in map(consumer_label, plan.groups[i].sinks) if label in by_node]
        if fits:
            decision.error = max(r.error_after for r in fits)
            held_out = all(r.held_out for r in fits)
            decision.error_kind = f"relative output error of its consumers after reconstruction ({'held-out' if held_out else 'in-sample'})"
