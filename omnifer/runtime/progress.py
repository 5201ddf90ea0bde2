"""Progress reporting that suits where it runs.

On a terminal: a rich progress bar with rate and ETA. Elsewhere (CI, Prefect workers, pipes):
a plain log line every ``log_every_s`` seconds, because a bar redrawn into a log file is noise.
Library code calls :func:`track`; nothing else decides how progress looks.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from omnifer.config import environment

T = TypeVar("T")
log = logging.getLogger("omnifer.progress")


def _interactive() -> bool:
    return environment().progress_bars and sys.stderr.isatty()


class Meter:
    """Progress of work that is not one loop (e.g. futures finishing): ``advance`` as it goes.

    Use as a context manager; the bar (TTY) or the periodic log lines (elsewhere) start on
    entry, and the closing "done" line is logged on exit, also after a ``break`` or an error.
    """

    def __init__(self, description: str, total: int | None = None, unit: str = "it",
                 log_every_s: float = 10.0) -> None:
        self.description, self.total, self.unit = description, total, unit
        self.log_every_s = log_every_s
        self.done = 0
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Meter:
        self._start = self._last = time.monotonic()
        if _interactive():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                ProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.text import Text

            unit = self.unit

            class Rate(ProgressColumn):  # rich has no rate column for arbitrary units
                def render(self, task: Any) -> Text:
                    speed = task.finished_speed or task.speed  # None before two updates
                    return Text(f"{'-' if speed is None else f'{speed:.1f}':>7} {unit}/s")

            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                Rate(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total)
        return self

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.advance(self._task, n)
            return
        now = time.monotonic()
        if now - self._last >= self.log_every_s:
            self._last = now
            rate = self.done / max(now - self._start, 1e-9)
            total, unit = self.total, self.unit
            eta = f", eta {((total - self.done) / rate):.0f}s" if total and rate > 0 else ""
            of = f"/{total}" if total else ""
            log.info("%s: %d%s %s (%.1f %s/s%s)", self.description, self.done, of, unit, rate,
                     unit, eta)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
            return
        elapsed = time.monotonic() - self._start
        log.info("%s: done, %d %s in %.1fs", self.description, self.done, self.unit, elapsed)


def track(
    items: Iterable[T],
    description: str,
    total: int | None = None,
    unit: str = "it",
    log_every_s: float = 10.0,
) -> Iterator[T]:
    """Yield ``items`` while reporting progress (bar on a TTY, periodic log lines otherwise)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Meter(description, total, unit, log_every_s) as meter:
        for item in items:
            yield item
            meter.advance()
