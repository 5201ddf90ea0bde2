"""The canonical expression label space every reader maps into.

One order for all datasets, models and Parquet rows, so that a class index means the same
thing everywhere. ``contempt`` exists in FERPlus and AffectNet; readers drop it unless asked
to keep it (then it is appended as index 7).
"""

from __future__ import annotations

from collections.abc import Iterable

CLASSES: tuple[str, ...] = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "angry")
CLASSES_WITH_CONTEMPT: tuple[str, ...] = CLASSES + ("contempt",)
CLASS_INDEX: dict[str, int] = {name: i for i, name in enumerate(CLASSES_WITH_CONTEMPT)}

# RAF-DB basic: 1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral.
RAFDB_TO_CANONICAL: dict[int, str] = {
    1: "surprise",
    2: "fear",
    3: "disgust",
    4: "happy",
    5: "sad",
    6: "angry",
    7: "neutral",
}
CANONICAL_TO_RAFDB: dict[str, int] = {v: k for k, v in RAFDB_TO_CANONICAL.items()}


def ordered_classes(names: Iterable[str | None]) -> list[str]:
    """``names`` in canonical label order where they are labels (:data:`CLASSES_WITH_CONTEMPT`),
    the others after them, sorted; each once, None dropped."""
    present = {str(n) for n in names if n is not None}
    canon = [c for c in CLASSES_WITH_CONTEMPT if c in present]
    return canon + sorted(present - set(canon))
