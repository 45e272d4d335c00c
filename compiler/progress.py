"""A progress bar over compile stages (tqdm on stderr; silent when stderr is not a terminal)."""

from __future__ import annotations

import sys


class Progress:
    def __init__(self, total: int, enabled: bool | None = None):
        if enabled is None:
            enabled = sys.stderr.isatty()
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, file=sys.stderr, bar_format="{desc:<28} {bar} {n_fmt}/{total_fmt} [{elapsed}]", leave=False)
        self._started = False

    def stage(self, name: str) -> None:
        if self._bar is None:
            return
        if self._started:
            self._bar.update(1)
        self._started = True
        self._bar.set_description_str(name)

    def detail(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_description_str(f"passes: {text}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
