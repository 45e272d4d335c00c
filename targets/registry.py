"""Target registry: name -> :class:`Target`, loaded lazily from ``targets/specs/<name>.toml``."""

from __future__ import annotations

import dataclasses
import functools
import tomllib
from pathlib import Path
from typing import Any

from compiler.errors import OptionError

SPEC_DIR = Path(__file__).parent / "specs"


@dataclasses.dataclass(frozen=True)
class Target:
    """A compilation target described by data.

    Attributes:
        name: our name (``cpu``, ``jetson-orin-nano``...).
        description: one line for ``compile --list-targets``.
        tvm_target: TVM target as a JSON dict or a tag string; ``"host"`` values are resolved by
            ``targets.lowering`` for the machine running the compiler.
        export_format: ``so`` (loadable here) or ``tar`` (cross targets, linked on the board).
        runs_locally: whether the artifact can be loaded and run on this machine.
        channel_multiple: preferred channel count multiple (pruning rounds to it).
        precisions: precision -> whether the target runs it fast.
        roofline: numbers for the roofline cost model.
        spec: the whole parsed toml.
    """

    name: str
    description: str
    tvm_target: dict[str, Any] | str
    export_format: str = "so"
    runs_locally: bool = True
    cross_compiler: str | None = None
    channel_multiple: int = 1
    precisions: dict[str, bool] = dataclasses.field(default_factory=dict)
    roofline: dict[str, Any] = dataclasses.field(default_factory=dict)
    spec: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def supports(self, precision: str) -> bool:
        return bool(self.precisions.get(precision, False))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "tvm_target": self.tvm_target,
            "export_format": self.export_format,
            "runs_locally": self.runs_locally,
            "precisions": self.precisions,
            "channel_multiple": self.channel_multiple,
            "roofline": self.roofline,
        }


def _from_spec(spec: dict[str, Any], source: Path) -> Target:
    try:
        return Target(
            name=spec["name"],
            description=spec.get("description", ""),
            tvm_target=spec.get("tvm_target", spec.get("tvm_tag")),
            export_format=spec.get("export_format", "so"),
            runs_locally=bool(spec.get("runs_locally", True)),
            cross_compiler=spec.get("cross_compiler"),
            channel_multiple=int(spec.get("channel_multiple", 1)),
            precisions=dict(spec.get("precisions", {})),
            roofline=dict(spec.get("roofline", {})),
            spec=spec,
        )
    except KeyError as exc:
        raise OptionError(f"{source}: target spec lacks required key {exc}") from None


@functools.cache
def _all_specs() -> dict[str, Target]:
    targets = {}
    for path in sorted(SPEC_DIR.glob("*.toml")):
        with open(path, "rb") as handle:
            target = _from_spec(tomllib.load(handle), path)
        targets[target.name] = target
    return targets


def list_targets() -> list[Target]:
    return list(_all_specs().values())


def get_target(name: str | Target) -> Target:
    """The target called ``name``. Raises OptionError listing the known names."""
    if isinstance(name, Target):
        return name
    targets = _all_specs()
    if name not in targets:
        raise OptionError(f"unknown target '{name}' (known: {', '.join(targets)}; see compile --list-targets)")
    return targets[name]
