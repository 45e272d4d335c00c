"""The pass contract: ``Pass``, ``PassResult``, ``Fact`` and the pass registry.

A pass is a frozen dataclass whose fields are its options (they appear in the pipeline spec as
``name{option=value,...}``). Calling it runs it::

    result = FoldConstantsPass()(model, ctx)      # -> PassResult(model, modified, stats, notes)

Invariants every pass keeps (the contract test in tests/passes/test_contract.py checks them):

- it mutates ``model`` in place and returns the same object in ``PassResult.model``;
- ``modified`` is exact: True iff the serialized model changed;
- graph input/output names and types are unchanged; nodes stay topologically sorted;
- the facts in ``provides`` hold afterwards; facts not in ``preserves`` are dropped by the pipeline
  when the pass modified the model;
- hardware facts (target, cost model) and data (calibration) come only through ``ctx``;
- unknown operators make a rewrite candidate ineligible (with a note); they never crash the pass.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from compiler.context import CompileContext
    from compiler.ir import Model


class Fact(enum.Enum):
    """Properties of a model that passes establish and rely on."""

    SHAPES_INFERRED = "shapes-inferred"
    CONSTANTS_LIFTED = "constants-lifted"
    CONSTANTS_FOLDED = "constants-folded"
    BN_FOLDED = "bn-folded"
    NO_IDENTITY = "no-identity"
    DEAD_CODE_FREE = "dead-code-free"
    TOPO_SORTED = "topo-sorted"
    QDQ_FORM = "qdq-form"
    INTEGER_ONLY = "integer-only"


#: The facts the ``canonicalize`` alias establishes. A rewrite that keeps the graph canonical
#: (replaces weights or nodes without leaving constants, identities or dead code behind) lists
#: these as ``preserves``.
CANONICAL_FACTS = frozenset(
    {
        Fact.SHAPES_INFERRED,
        Fact.CONSTANTS_LIFTED,
        Fact.CONSTANTS_FOLDED,
        Fact.BN_FOLDED,
        Fact.NO_IDENTITY,
        Fact.DEAD_CODE_FREE,
        Fact.TOPO_SORTED,
    }
)


class Tolerance(enum.Enum):
    """How the per-pass numeric check compares a pass's output with its input model.

    The numbers live in :data:`compiler.verify.TOLERANCES`; a pass only names its class.
    """

    EXACT = "exact"  # structural passes: bit-identical outputs
    FP32_REWRITE = "fp32-rewrite"  # float rewrites: rtol 1e-5
    LOSSY = "lossy"  # quantization/pruning/low-rank: reported as accuracy, not equivalence


@dataclasses.dataclass
class PassResult:
    """What a pass returns. ``stats`` are numbers for the report; ``notes`` are decisions, in words."""

    model: Model
    modified: bool
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Pass:
    """Base class of every pass. Subclasses are frozen dataclasses; set the class variables.

    Subclasses implement :meth:`run`. Do not override ``__call__``.
    """

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset[Fact]] = frozenset()
    provides: ClassVar[frozenset[Fact]] = frozenset()
    preserves: ClassVar[frozenset[Fact]] = frozenset()
    tolerance: ClassVar[Tolerance] = Tolerance.EXACT

    def run(self, model: Model, ctx: CompileContext) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError(f"pass {self.name!r} does not implement run()")

    def __call__(self, model: Model, ctx: CompileContext) -> PassResult:
        result = self.run(model, ctx)
        if result.model is not model:
            raise TypeError(f"pass {self.name!r} must mutate the model in place and return it")
        return result

    def options(self) -> dict[str, Any]:
        """The pass's options that differ from their defaults, in field order (for the spec text)."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            default = field.default
            if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                default = field.default_factory()  # type: ignore[misc]
            if value != default:
                out[field.name] = value
        return out

    def spec(self) -> str:
        """The pipeline-spec text of this pass instance, e.g. ``prune-channels{ratio=0.3}``."""
        opts = self.options()
        if not opts:
            return self.name
        return self.name + "{" + ",".join(f"{k}={_format_option(v)}" for k, v in opts.items()) + "}"

    @classmethod
    def from_options(cls, options: dict[str, str]) -> Pass:
        """Build an instance from string options, converting each to its field's declared type."""
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, text in options.items():
            if key not in fields:
                known = ", ".join(fields) or "none"
                raise ValueError(f"pass '{cls.name}' has no option '{key}' (options: {known})")
            kwargs[key] = _parse_option(text, hints.get(key, str), f"{cls.name}{{{key}}}")
        return cls(**kwargs)


def _format_option(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ":".join(_format_option(v) for v in value)
    return str(value)


def _parse_option(text: str, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if text in ("none", "None") and len(args) < len(typing.get_args(hint)):
            return None
        hint = args[0]
        origin = typing.get_origin(hint)
    if origin in (tuple, list):
        (item,) = typing.get_args(hint)[:1] or (str,)
        values = tuple(_parse_option(t, item, where) for t in text.split(":") if t)
        return values if origin is tuple else list(values)
    try:
        if hint is bool:
            if text.lower() in ("true", "1", "yes"):
                return True
            if text.lower() in ("false", "0", "no"):
                return False
            raise ValueError(text)
        if hint in (int, float):
            return hint(text)
    except ValueError:
        raise ValueError(f"option {where}: expected {hint.__name__}, got '{text}'") from None
    return text


_REGISTRY: dict[str, type[Pass]] = {}
_ALIASES: dict[str, list[str]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass available to ``Pipeline.parse`` under ``cls.name``.

    User passes in their own module register the same way; import the module before parsing.
    """
    if not cls.name or not all(part.isalnum() for part in cls.name.split("-")):
        raise ValueError(f"pass class {cls.__name__} needs a kebab-case `name`, got {cls.name!r}")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"two passes are named '{cls.name}': {existing.__qualname__} and {cls.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def register_alias(name: str, pass_names: list[str]) -> None:
    """A spec shorthand that expands to several passes (e.g. ``canonicalize``)."""
    _ALIASES[name] = list(pass_names)


def _load_builtin_passes() -> None:
    import passes  # noqa: F401  (registers the built-in passes)


def registered_passes() -> dict[str, type[Pass]]:
    _load_builtin_passes()
    return dict(_REGISTRY)


def pass_aliases() -> dict[str, list[str]]:
    _load_builtin_passes()
    return dict(_ALIASES)


PassFactory = Callable[[dict[str, str]], Pass]
