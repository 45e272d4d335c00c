"""Default CPU schedules that need no tuning (issue 3).

``apply_default_schedules(mod, target)`` runs on a Relax module after legalization and fusion
(``relax.get_pipeline("zero")``) and gives every fused PrimFunc a schedule from one of the rules
below, tried in order like TVM's dlight rules (the first rule that returns a schedule wins):

    conv1x1_int8.Conv1x1Int8PixelsVNNI
                                 1x1 stride-1 conv uint8 x int8 -> int32 on AVX-512 VNNI with
                                 C < 2F or F % 16 != 0, vectorized along pixels (vpdpbusd)
    conv2d_int8.Conv2dInt8VNNI   conv2d_nchw uint8 x int8 -> int32 on AVX-512 VNNI (vpdpbusd)
    matmul_int8.MatmulInt8VNNI   matmul / dense uint8 x int8 -> int32 on AVX-512 VNNI (vpdpbusd)
    conv2d_int8.Conv2dInt8AVX2Maddubs
                                 conv2d_nchw uint8 x int8 -> int32 on AVX2 without VNNI whose
                                 constant weight is within +-64 (7-bit codes; vpmaddubsw, exact),
                                 except 1x1 convs with C < 2F that the next rule takes
    conv1x1_int8.Conv1x1Int8PixelsAVX2Maddubs
                                 the next rule's nest with vpmaddubsw for weights within +-64
    conv1x1_int8.Conv1x1Int8PixelsAVX2
                                 1x1 stride-1 conv uint8 x int8 -> int32 with few input channels
                                 on AVX2 without VNNI, vectorized along pixels (vpmaddwd)
    conv2d_int8.Conv2dInt8AVX2   conv2d_nchw uint8 x int8 -> int32 on AVX2 without VNNI (vpmaddwd)
    matmul_int8.MatmulInt8AVX2Maddubs
                                 the next rule's kernel with vpmaddubsw for weights within +-64
    matmul_int8.MatmulInt8AVX2   matmul / dense uint8 x int8 -> int32 on AVX2 without VNNI (vpmaddwd)
    conv2d_int8.Conv2dInt8ArmDot conv2d_nchw int8 x int8 -> int32 on AArch64 with the dot-product
                                 extension (sdot; activations shifted to int8 by
                                 targets/lowering/signed_activations.py)
    matmul_int8.MatmulInt8ArmDot matmul / dense int8 x int8 -> int32 on AArch64 with sdot
    depthwise_int8.DepthwiseInt8 depthwise conv2d_nchw uint8 x int8 -> int32 (MobileNet)
    conv2d.Conv2dDirect          conv2d_nchw, groups == 1 (3x3, 1x1, strided, dilated)
    depthwise.GroupConv2d        group_conv2d_nchw (depthwise and grouped)
    matmul.Matmul                matmul / dense / batch matmul, transformer shapes
    pool_int8.MaxPoolInt8        8-bit (uint8/int8) max pooling of the integer-only form
    pool.MaxPool                 max pooling of any other dtype (fp32)
    reduction.RowReduction       pooling, mean, softmax, layernorm, sums (reduce + elementwise)
    injective.Injective          elementwise / broadcast / transpose / reshape / gather

Rules see the value range of integer constants passed to a function: ``attach_constant_ranges``
sets ``common.CONSTANT_RANGES_ATTR`` on each PrimFunc before the rules run (read with
``common.constant_param_range``), so a rule can claim only functions whose weights keep an
instruction exact (the ``vpmaddubsw`` rule).

Functions that already carry ``tirx.is_scheduled`` (e.g. applied from a MetaSchedule database) are
left alone and not reported. Rules that pack constant weights mark the packing block as a
layout-rewrite preprocessing stage; afterwards ``SplitLayoutRewritePreproc`` + ``FoldConstant``
move it into its own function and evaluate it at compile time, so the packed weights are
embedded in the library. Packing functions that could not be folded (a weight that is a graph
input) are scheduled by the injective rule and reported like any other function.
"""

from __future__ import annotations

import dataclasses

from targets.lowering.schedules.common import ScheduleRule


@dataclasses.dataclass
class ScheduleReport:
    """Which PrimFuncs got a schedule rule (name -> rule) and which kept TVM's naive loops."""

    scheduled: dict[str, str] = dataclasses.field(default_factory=dict)
    unscheduled: list[str] = dataclasses.field(default_factory=list)


def default_rules() -> list[ScheduleRule]:
    """The CPU rules in the order they are tried."""
    from targets.lowering.schedules.conv1x1_int8 import (
        Conv1x1Int8PixelsAVX2, Conv1x1Int8PixelsAVX2Maddubs, Conv1x1Int8PixelsVNNI)
    from targets.lowering.schedules.conv2d import Conv2dDirect
    from targets.lowering.schedules.conv2d_int8 import (
        Conv2dInt8ArmDot, Conv2dInt8AVX2, Conv2dInt8AVX2Maddubs, Conv2dInt8VNNI)
    from targets.lowering.schedules.depthwise import GroupConv2d
    from targets.lowering.schedules.depthwise_int8 import DepthwiseInt8
    from targets.lowering.schedules.injective import Injective
    from targets.lowering.schedules.matmul import Matmul
    from targets.lowering.schedules.matmul_int8 import (
        MatmulInt8ArmDot, MatmulInt8AVX2, MatmulInt8AVX2Maddubs, MatmulInt8VNNI)
    from targets.lowering.schedules.pool import MaxPool
    from targets.lowering.schedules.pool_int8 import MaxPoolInt8
    from targets.lowering.schedules.reduction import RowReduction

    # The int8 rules come first: they claim only u8 x i8 -> i32 functions (the VNNI ones on VNNI
    # targets only, the AVX2 ones on x86 targets with AVX2 but no VNNI, the ArmDot ones on AArch64
    # targets with sdot (int8 x int8), DepthwiseInt8 on any LLVM
    # CPU) and decline everything else, which then reaches the dtype-agnostic rules below
    # unchanged. MaxPoolInt8 claims only 8-bit pools, ahead of the
    # generic MaxPool, which takes the float ones, ahead of RowReduction.
    return [
        Conv1x1Int8PixelsVNNI(), Conv2dInt8VNNI(), MatmulInt8VNNI(), Conv2dInt8AVX2Maddubs(), Conv1x1Int8PixelsAVX2Maddubs(),
        Conv1x1Int8PixelsAVX2(), Conv2dInt8AVX2(), MatmulInt8AVX2Maddubs(), MatmulInt8AVX2(),
        Conv2dInt8ArmDot(), MatmulInt8ArmDot(), DepthwiseInt8(), Conv2dDirect(), GroupConv2d(), Matmul(),
        MaxPoolInt8(), MaxPool(), RowReduction(), Injective(),
    ]


def _is_scheduled(func) -> bool:
    attrs = func.attrs
    return attrs is not None and "tirx.is_scheduled" in attrs and bool(attrs["tirx.is_scheduled"])


def constant_ranges(mod) -> dict[str, dict[int, tuple[int, int]]]:
    """{PrimFunc name: {parameter index: (min, max)}} of the integer constant arguments of
    every ``call_tir`` in ``mod``'s Relax functions. A function called from several sites gets the
    union of their ranges, and a parameter that is not a constant at every site gets none, so a
    range holds for every call."""
    from tvm import ir, relax

    from targets.lowering.integer_ops import _constant

    call_tir = ir.Op.get("relax.call_tir")
    seen: dict[str, dict[int, tuple[int, int] | None]] = {}

    def visit(call):
        if not isinstance(call, relax.Call) or not call.op.same_as(call_tir):
            return
        callee, args = call.args[0], call.args[1]
        fields = list(args.fields) if isinstance(args, relax.Tuple) else [args]
        entry = seen.setdefault(callee.name_hint, {})
        for index, arg in enumerate(fields):
            data = _constant(arg)
            value = (int(data.min()), int(data.max())) if data is not None and data.dtype.kind in "iu" and data.size else None
            if index in entry and (entry[index] is None or value is None):
                entry[index] = None
            elif index in entry:
                entry[index] = (min(entry[index][0], value[0]), max(entry[index][1], value[1]))
            else:
                entry[index] = value

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return {name: {i: r for i, r in params.items() if r is not None} for name, params in seen.items()}


def attach_constant_ranges(mod):
    """A copy of ``mod`` with ``common.CONSTANT_RANGES_ATTR`` ([[index, min, max], ...]) set on every
    PrimFunc that receives integer constants (see :func:`constant_ranges`)."""
    from tvm import tirx

    from targets.lowering.schedules.common import CONSTANT_RANGES_ATTR

    ranges = constant_ranges(mod)
    mod = mod.clone()  # the caller's functions keep their structural hash (tuning record keys)
    for gvar, func in list(mod.functions_items()):
        params = ranges.get(gvar.name_hint)
        if isinstance(func, tirx.PrimFunc) and params:
            mod[gvar] = func.with_attr(CONSTANT_RANGES_ATTR, [[i, lo, hi] for i, (lo, hi) in sorted(params.items())])
    return mod


def value_claimed_functions(mod, target) -> set[str]:
    """Names of the unscheduled PrimFuncs of ``mod`` that a rule claims because of their constant
    values (``claims_by_value``: the vpmaddubsw rules, exact only for weights within +-64).

    A tuning record is keyed by a function's structure, not its weights, so it cannot say whether
    such a rule applies; build.py keeps these functions on their rule instead of a record."""
    from tvm import tirx

    value_rules = [rule for rule in default_rules() if getattr(rule, "claims_by_value", False)]
    names = set()
    for gvar, func in attach_constant_ranges(mod).functions_items():
        if not isinstance(func, tirx.PrimFunc) or _is_scheduled(func):
            continue
        if any(rule.apply(func, target, False) is not None for rule in value_rules):
            names.add(gvar.name_hint)
    return names


def call_tir_callees(mod) -> list[str]:
    """Names of the PrimFuncs called by ``call_tir`` in ``mod``'s Relax functions, in visiting order
    (one entry per call site): two modules whose Relax code differs only in the callees' names
    give lists that pair up position by position."""
    from tvm import ir, relax

    call_tir = ir.Op.get("relax.call_tir")
    names: list[str] = []

    def visit(call):
        if isinstance(call, relax.Call) and call.op.same_as(call_tir):
            names.append(call.args[0].name_hint)

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return names


def _schedule_functions(mod, target, rules, report: ScheduleReport):
    """Apply the first matching rule to every unscheduled PrimFunc of ``mod``; fill ``report``."""
    from tvm import tirx

    updates = {}
    mod = attach_constant_ranges(mod)
    for gvar, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or _is_scheduled(func):
            continue
        name = gvar.name_hint
        for rule in rules:
            sch = rule.apply(func, target, False)
            if sch is not None:
                updates[gvar] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
                report.scheduled[name] = rule.name
                break
        else:
            report.unscheduled.append(name)
    for gvar, func in updates.items():
        mod[gvar] = func
    return mod


def apply_default_schedules(mod, target, rules: list[ScheduleRule] | None = None):
    """Schedule every PrimFunc of a legalized+fused Relax ``mod`` for ``target``.

    Returns ``(mod, ScheduleReport)``; the report is keyed by the final function names (a function
    whose weights were pre-packed is renamed ``<name>_prepacked`` by SplitLayoutRewritePreproc).
    ``rules`` overrides :func:`default_rules` (tests use it to exercise one rule at a time).
    """
    from tvm import relax

    rules = default_rules() if rules is None else list(rules)
    with target:
        mod = relax.transform.AttachAttrLayoutFreeBuffers()(mod)
        first = ScheduleReport()
        mod = _schedule_functions(mod, target, rules, first)
        mod = relax.transform.SplitLayoutRewritePreproc()(mod)
        mod = relax.transform.FoldConstant()(mod)
        mod = relax.transform.DeadCodeElimination()(mod)

        report = ScheduleReport()
        live = {gvar.name_hint: func for gvar, func in mod.functions_items()}
        for name, rule in first.scheduled.items():
            for final in (name, f"{name}_prepacked"):
                if final in live:
                    report.scheduled[final] = rule
        report.unscheduled = [name for name in first.unscheduled if name in live]
        # Packing stages left in the graph (weights that are not constants) are plain copies. They
        # inherited ``tirx.is_scheduled`` from the function they were split from, so schedule them
        # explicitly.
        from targets.lowering.schedules.injective import Injective

        rule = Injective()
        for gvar, func in list(mod.functions_items()):
            name = gvar.name_hint
            if not name.endswith("_weight_prepack") or name in report.scheduled:
                continue
            sch = rule.apply(func, target, False)
            if sch is None:
                report.unscheduled.append(name)
            else:
                mod[gvar] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
                report.scheduled[name] = rule.name
    return mod, report
