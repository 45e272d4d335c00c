"""Default CPU schedules (issue 3). Until rules exist, every PrimFunc is reported unscheduled."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class ScheduleReport:
    """Which PrimFuncs got a schedule rule (name -> rule) and which kept TVM's naive loops."""

    scheduled: dict[str, str] = dataclasses.field(default_factory=dict)
    unscheduled: list[str] = dataclasses.field(default_factory=list)


def apply_default_schedules(mod, target):
    """Schedule every PrimFunc of a legalized+fused Relax ``mod`` for ``target``.

    Returns ``(mod, ScheduleReport)``. Placeholder: applies no rule and lists every PrimFunc.
    """
    import tvm

    report = ScheduleReport()
    for gvar, func in mod.functions.items():
        if isinstance(func, tvm.tir.PrimFunc):
            report.unscheduled.append(gvar.name_hint)
    return mod, report
