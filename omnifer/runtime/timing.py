"""Where a run's wall time went, step by step, for one log line at its end.

Why: a night's fixed cost (settings, planning, compaction, near-duplicates, selection, the
report) is invisible next to its shards on a big night, and all there is on a small one. The
nightly flow marks the end of each step and logs one line (``night D took 3.1 s: plan 0.21 s,
shards 0.64 s, ...``); ``benchmarks/fixed_cost.py`` reads it back (docs/performance.md,
"Fixed cost of a run").
"""

from __future__ import annotations

import time

__all__ = ["StepClock"]


class StepClock:
    """Wall seconds between successive :meth:`mark` calls, by step name (monotonic clock).

    A step marked twice adds up. Nothing is measured between construction and the first
    mark except that step itself: ``StepClock()`` starts the first step.
    """

    def __init__(self) -> None:
        self._start = self._last = time.monotonic()
        self.seconds: dict[str, float] = {}

    def mark(self, step: str) -> float:
        """End ``step`` now (it began at the previous mark); returns its seconds."""
        now = time.monotonic()
        spent = now - self._last
        self.seconds[step] = self.seconds.get(step, 0.0) + spent
        self._last = now
        return spent

    @property
    def total(self) -> float:
        """Seconds from construction to the last mark."""
        return self._last - self._start

    def describe(self) -> str:
        """``"setup 0.05 s, plan 0.21 s, ..."`` in the order the steps were first marked."""
        return ", ".join(f"{name} {secs:.2f} s" for name, secs in self.seconds.items())
