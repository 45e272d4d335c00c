"""Target registry: name -> :class:`Target`, loaded lazily from ``targets/specs/<name>.toml``.

A spec may list ``aliases`` (``jetson`` -> ``jetson-orin-nano``): names users type that resolve to
the same record. Names and aliases share one namespace; a clash is a spec error.
"""

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
        export_format: ``so`` (a shared library, cross-linked for board targets) or ``tar`` (sources
            or objects finished on the board or by another tool, e.g. the fpga target's C for HLS).
        runs_locally: whether the artifact can be loaded and run on this machine.
        cross_compiler: the C compiler that links the library for the board (``None``: the host's).
        cross_compiler_package: the Debian package that installs ``cross_compiler`` (for the error
            message when it is missing).
        aliases: other names users may type for this target.
        host_triple: the triple of the CPU that runs the host code (``None``: this machine's).
        cuda_arch: ``sm_XX`` of a CUDA target (``None`` otherwise).
        requires_integer_only: the target has no float units; lowering rejects graphs with float
            compute.
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
    cross_compiler_package: str | None = None
    aliases: tuple[str, ...] = ()
    host_triple: str | None = None
    cuda_arch: str | None = None
    requires_integer_only: bool = False
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
            "aliases": list(self.aliases),
            "host_triple": self.host_triple,
            "cross_compiler": self.cross_compiler,
            "cuda_arch": self.cuda_arch,
            "requires_integer_only": self.requires_integer_only,
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
            cross_compiler_package=spec.get("cross_compiler_package"),
            aliases=tuple(str(a) for a in spec.get("aliases", ())),
            host_triple=spec.get("host_triple"),
            cuda_arch=spec.get("cuda_arch"),
            requires_integer_only=bool(spec.get("requires_integer_only", False)),
            channel_multiple=int(spec.get("channel_multiple", 1)),
            precisions=dict(spec.get("precisions", {})),
            roofline=dict(spec.get("roofline", {})),
            spec=spec,
        )
    except KeyError as exc:
        raise OptionError(f"{source}: target spec lacks required key {exc}") from None


@functools.cache
def _all_specs() -> dict[str, Target]:
    targets: dict[str, Target] = {}
    for path in sorted(SPEC_DIR.glob("*.toml")):
        with open(path, "rb") as handle:
            try:
                target = _from_spec(tomllib.load(handle), path)
            except tomllib.TOMLDecodeError as exc:
                raise OptionError(f"{path}: invalid TOML: {exc}") from None
        if target.name in targets:
            raise OptionError(f"{path}: target name '{target.name}' is defined twice")
        targets[target.name] = target
    return targets


@functools.cache
def _aliases() -> dict[str, str]:
    """alias -> target name, checked against every name and every other alias."""
    targets = _all_specs()
    aliases: dict[str, str] = {}
    for target in targets.values():
        for alias in target.aliases:
            if alias in targets or alias in aliases:
                raise OptionError(f"target alias '{alias}' of '{target.name}' is already a target name or alias")
            aliases[alias] = target.name
    return aliases


def list_targets() -> list[Target]:
    return list(_all_specs().values())


def get_target(name: str | Target) -> Target:
    """The target called ``name`` (or one of its aliases). Raises OptionError listing the names."""
    if isinstance(name, Target):
        return name
    targets = _all_specs()
    name = _aliases().get(name, name)
    if name not in targets:
        raise OptionError(f"unknown target '{name}' (known: {', '.join(targets)}; see compile --list-targets)")
    return targets[name]


def with_arch(target: str | Target, arch: str) -> Target:
    """``target`` (a CUDA target) built for GPU architecture ``arch`` (``sm_80``, ``sm_90``...).

    The TVM target's ``arch`` is replaced, and when the spec has an ``[arch.<arch>]`` table its
    roofline numbers replace the default GPU's (an A100 is not an H100). A tag-based target is
    turned into its exported dict first so the arch can be changed. Raises OptionError for a
    non-CUDA target or a malformed arch.
    """
    target = get_target(target)
    if target.cuda_arch is None:
        raise OptionError(f"--arch {arch}: target '{target.name}' is not a CUDA target")
    if not (arch.startswith("sm_") and arch[3:].rstrip("a").isdigit()):
        raise OptionError(f"--arch {arch}: expected a CUDA architecture like sm_80 or sm_90")
    if arch == target.cuda_arch:
        return target
    tvm_target = target.tvm_target
    if isinstance(tvm_target, str):
        from targets.lowering.tvm_target import tag_as_dict  # imports TVM: only for tags

        tvm_target = tag_as_dict(tvm_target)
    tvm_target = {**tvm_target, "arch": arch}
    tables = target.spec.get("arch", {})
    roofline = {**target.roofline, **tables[arch]} if arch in tables else dict(target.roofline)
    notes = "" if arch in tables else f" (no [arch.{arch}] table: roofline numbers of {target.cuda_arch})"
    return dataclasses.replace(
        target,
        description=f"{target.description} [arch {arch}]{notes}",
        tvm_target=tvm_target,
        cuda_arch=arch,
        roofline=roofline,
    )
