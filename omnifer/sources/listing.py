"""What listing a source met besides its objects: :class:`ListingReport`.

Every listed object becomes one ``images`` row; what was *not* listed is counted here, so a
night's record says why a file on disk has no row: system junk (never read, see
:func:`omnifer.storage.ignore.is_ignored`), a path the source's ``exclude`` / ``pattern`` /
``extensions`` left out, or an entry that could not be listed at all (logged as a warning,
never raised: one bad corner of a tree does not end the night).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

EXAMPLES_PER_REASON = 3
"""How many example paths a report keeps per reason (for run records)."""


def printable(text: str) -> str:
    """``text`` with undecodable bytes (surrogates from non-UTF-8 names) as ``\\x..``."""
    return text.encode("utf-8", "backslashreplace").decode()


@dataclass
class ListingReport:
    """What listing one or more sources met besides the objects it yielded.

    ``listed``: objects yielded. ``ignored``: system junk by reason (never read, never rows).
    ``excluded``: paths the source's ``exclude`` / ``pattern`` / ``extensions`` left out.
    ``skipped``: entries that could not be listed, by reason (``unlistable_folder``,
    ``dangling_symlink``, ``vanished``, ``symlink_outside_root``, ``symlinked_folder``,
    ``unreadable_entry``), each logged as a warning; ``examples`` keeps the first few paths
    per reason (``ignored:``/``excluded:``/``skipped:`` prefixed) for run records.
    """

    listed: int = 0
    ignored: Counter[str] = field(default_factory=Counter)
    excluded: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def _example(self, key: str, where: str) -> bool:
        shown = self.examples.setdefault(key, [])
        if len(shown) < EXAMPLES_PER_REASON:
            shown.append(printable(where))  # names may hold undecodable bytes
            return True
        return False

    def ignore(self, where: str, reason: str) -> None:
        """Count ``where`` as system junk (``reason``: why it is junk)."""
        self.ignored[reason] += 1
        self._example(f"ignored: {reason}", where)
        log.debug("ignoring %s: %s", printable(where), reason)

    def exclude(self, where: str, rule: str) -> None:
        """Count ``where`` as left out by the source's own ``rule`` (a glob, ``pattern`` or
        ``extensions``)."""
        self.excluded += 1
        self._example(f"excluded: {rule}", where)

    def skip(self, where: str, reason: str, detail: str = "") -> None:
        """Count ``where`` as an entry that could not be listed; the first few per reason are
        logged as warnings, the rest at debug level."""
        self.skipped[reason] += 1
        if self._example(f"skipped: {reason}", where):
            log.warning("listing: skipped %s (%s%s)", printable(where), reason,
                        f": {detail}" if detail else "")
        else:
            log.debug("listing: skipped %s (%s)", printable(where), reason)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able counts (what plans and run records store)."""
        return {"listed": self.listed, "ignored": sum(self.ignored.values()),
                "ignored_by_reason": dict(sorted(self.ignored.items())),
                "excluded": self.excluded, "skipped_entries": sum(self.skipped.values()),
                "skipped_by_reason": dict(sorted(self.skipped.items())),
                "examples": self.examples}
