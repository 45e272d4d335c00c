"""``Pipeline``: an ordered list of passes with a text spec that round-trips.

Spec grammar (whitespace ignored)::

    spec    := item ("," item)*
    item    := NAME | NAME "{" option ("," option)* "}"
    option  := KEY "=" VALUE                 # tuples are written a:b:c

``Pipeline.parse("fold-constants,prune-channels{ratio=0.3}")`` builds the passes from the registry;
aliases such as ``canonicalize`` expand to their passes. ``str(pipeline)`` prints the expanded spec, so
``Pipeline.parse(str(p)) == p`` for every pipeline.

Running checks facts before each pass: a pass whose ``needs`` are not established fails fast with a
message naming the missing fact and the passes that provide it. After a pass that modified the model,
facts it does not ``preserve`` are dropped, then its ``provides`` are added.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from compiler.context import CompileContext
from compiler.errors import EdgekilnError, OptionError, PassFailedError
from compiler.ir import Model, structural_fingerprint
from compiler.pass_base import Fact, Pass, PassResult, pass_aliases, registered_passes


@dataclasses.dataclass
class PassRecord:
    """What happened when one pass ran: fed into the report."""

    name: str
    spec: str
    modified: bool
    seconds: float
    stats: dict[str, Any]
    notes: list[str]
    check: dict[str, Any] | None = None


def _split_items(spec: str) -> Iterator[str]:
    depth, start = 0, 0
    for i, ch in enumerate(spec):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                raise OptionError(f"pipeline spec: unbalanced '}}' at position {i} in '{spec}'")
        elif ch == "," and depth == 0:
            yield spec[start:i]
            start = i + 1
    if depth != 0:
        raise OptionError(f"pipeline spec: missing '}}' in '{spec}'")
    yield spec[start:]


def _parse_item(item: str) -> tuple[str, dict[str, str]]:
    if "{" not in item:
        return item, {}
    if not item.endswith("}"):
        raise OptionError(f"pipeline spec: text after '}}' in '{item}'")
    name, body = item[:-1].split("{", 1)
    options: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in body.split(","))):
        if "=" not in part:
            raise OptionError(f"pipeline spec: option '{part}' of pass '{name}' needs the form key=value")
        key, value = (s.strip() for s in part.split("=", 1))
        options[key] = value
    return name.strip(), options


class Pipeline:
    """An ordered sequence of pass instances."""

    def __init__(self, passes: Iterable[Pass] = ()):
        self.passes: list[Pass] = list(passes)
        for p in self.passes:
            if not isinstance(p, Pass):
                raise TypeError(f"Pipeline takes Pass instances, got {type(p).__name__}")

    # -- text form -------------------------------------------------------------------------------
    @classmethod
    def parse(cls, spec: str) -> Pipeline:
        """Build a pipeline from its text spec. Raises OptionError naming the bad item."""
        spec = "".join(spec.split())
        if not spec:
            return cls([])
        registry, aliases = registered_passes(), pass_aliases()
        passes: list[Pass] = []
        for item in _split_items(spec):
            if not item:
                raise OptionError(f"pipeline spec: empty item in '{spec}'")
            name, options = _parse_item(item)
            if name in aliases and not options:
                passes.extend(registry[n]() for n in aliases[name])
                continue
            if name not in registry:
                known = ", ".join(sorted([*registry, *aliases]))
                raise OptionError(f"pipeline spec: unknown pass '{name}' (known: {known})")
            try:
                passes.append(registry[name].from_options(options))
            except (ValueError, TypeError) as exc:
                raise OptionError(f"pipeline spec: {exc}") from None
        return cls(passes)

    def __str__(self) -> str:
        return ",".join(p.spec() for p in self.passes)

    def __repr__(self) -> str:
        return f"Pipeline({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pipeline) and self.passes == other.passes

    def __len__(self) -> int:
        return len(self.passes)

    def __iter__(self) -> Iterator[Pass]:
        return iter(self.passes)

    # -- running ---------------------------------------------------------------------------------
    def check_facts(self, initial: Iterable[Fact] = ()) -> None:
        """Fail fast, before any pass runs, when a pass needs a fact no earlier pass provides."""
        facts = set(initial)
        registry = registered_passes()
        for index, p in enumerate(self.passes):
            missing = p.needs - facts
            if missing:
                fact = sorted(f.value for f in missing)[0]
                providers = sorted(n for n, c in registry.items() if Fact(fact) in c.provides)
                ran = ", ".join(q.name for q in self.passes[:index]) or "none"
                raise OptionError(
                    f"pass '{p.name}' needs fact '{fact}', which no earlier pass provides "
                    f"(passes before it: {ran}; provided by: {', '.join(providers) or 'no pass'})"
                )
            facts = _facts_after(p, facts, modified=True)

    def run(
        self,
        model: Model,
        ctx: CompileContext,
        initial_facts: Iterable[Fact] = (),
        after_pass: Callable[[Pass, PassRecord, Model], dict[str, Any] | None] | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> tuple[Model, list[PassRecord]]:
        """Run every pass in order on ``model`` (in place).

        Args:
            after_pass: called after each pass with the record and the model; its return value is
                stored as ``record.check`` (the per-pass numeric check). It may raise to stop.
            progress: called with the pass name before it runs (for progress bars).

        Raises:
            PassFailedError: a pass raised; the message names it and the passes before it.
        """
        facts = set(initial_facts)
        self.check_facts(facts)
        records: list[PassRecord] = []
        for index, p in enumerate(self.passes):
            if progress:
                progress(p.name)
            before = structural_fingerprint(model)
            start = time.perf_counter()
            try:
                result: PassResult = p(model, ctx)
            except EdgekilnError:
                raise
            except Exception as exc:
                ran = ", ".join(q.name for q in self.passes[:index]) or "none"
                raise PassFailedError(
                    f"pass '{p.name}' failed: {type(exc).__name__}: {exc} (passes before it: {ran})"
                ) from exc
            seconds = time.perf_counter() - start
            changed = structural_fingerprint(model) != before
            if changed != result.modified:
                raise PassFailedError(
                    f"pass '{p.name}' reported modified={result.modified} but the model "
                    f"{'changed' if changed else 'did not change'} (contract violation)"
                )
            facts = _facts_after(p, facts, result.modified)
            record = PassRecord(p.name, p.spec(), result.modified, seconds, result.stats, result.notes)
            if after_pass is not None:
                record.check = after_pass(p, record, model)
            records.append(record)
        return model, records


def _facts_after(p: Pass, facts: set[Fact], modified: bool) -> set[Fact]:
    kept = (facts & p.preserves) if modified else set(facts)
    return kept | set(p.provides)
