"""Progress reporting that suits where it runs.

On a terminal: a rich progress bar with rate and ETA. Elsewhere (CI, Prefect workers, pipes):
a plain log line every ``log_every_s`` seconds, because a bar redrawn into a log file is noise.
Library code calls :func:`track`; nothing else decides how progress looks.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("omnifer.progress")


def _interactive() -> bool:
    if os.environ.get("OMNIFER_PROGRESS", "").lower() in {"0", "off", "false", "log"}:
        return False
    return sys.stderr.isatty()


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
    if _interactive():
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.speed:>7.1f} " + unit + "/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, transient=False) as bar:
            task = bar.add_task(description, total=total)
            for item in items:
                yield item
                bar.advance(task)
        return
    start = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= log_every_s:
            last = now
            rate = done / max(now - start, 1e-9)
            eta = f", eta {((total - done) / rate):.0f}s" if total and rate > 0 else ""
            of = f"/{total}" if total else ""
            log.info("%s: %d%s %s (%.1f %s/s%s)", description, done, of, unit, rate, unit, eta)
    elapsed = time.monotonic() - start
    log.info("%s: done, %d %s in %.1fs", description, done, unit, elapsed)
