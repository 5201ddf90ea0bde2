"""FERPlus: FER2013 pixels + the FERPlus votes, row by row.

Vote columns ``neutral happiness surprise sadness anger disgust fear contempt unknown NF`` →
``neutral happy surprise sad angry disgust fear contempt``, labelled by the dataset's own
protocol (:func:`ferplus_target`): single votes dropped, then ``majority`` (default: the top
emotion needs more than half of the votes, ``unknown``/``NF`` votes counted), ``plurality``
or ``probability`` (the official label distribution); rows that fail are excluded, ``NF``-top
rows are never faces, and each rule's count is in ``meta["dropped_by_rule"]``. ``contempt``
rows need ``include_contempt`` (then the classes are
:data:`omnifer.labels.CLASSES_WITH_CONTEMPT`).
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from omnifer.errors import DatasetError
from omnifer.labeled.base import Collector, LabeledData, drop_counts_text
from omnifer.labels import CLASSES, CLASSES_WITH_CONTEMPT

log = logging.getLogger(__name__)


FERPLUS_VOTE_COLUMNS: tuple[str, ...] = (
    "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
    "unknown", "NF",
)
FERPLUS_TO_CANONICAL: dict[str, str] = {
    "neutral": "neutral", "happiness": "happy", "surprise": "surprise", "sadness": "sad",
    "anger": "angry", "disgust": "disgust", "fear": "fear", "contempt": "contempt",
}
FERPLUS_SPLITS: dict[str, str] = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}

FERPLUS_MODES: tuple[str, ...] = ("majority", "plurality", "probability")
"""FERPlus label modes (:func:`ferplus_target`); ``majority`` is what published FERPlus
figures use. ``soft`` and ``distribution`` are accepted as other names of ``probability``."""
LabelMode = Literal["majority", "plurality", "probability", "distribution", "soft"]
_UNKNOWN, _NF = FERPLUS_VOTE_COLUMNS.index("unknown"), FERPLUS_VOTE_COLUMNS.index("NF")
_CONTEMPT = FERPLUS_VOTE_COLUMNS.index("contempt")

FERPLUS_DROP_RULES: tuple[str, ...] = (
    "no_image", "single_votes_only", "not_face", "unknown", "no_majority", "tie",
    "too_spread", "contempt",
)
"""Why a FERPlus row is left out, in the order the rules are applied (first failing wins):
``no_image`` (no ``Image name`` in fer2013new.csv), ``single_votes_only`` (no emotion has
two votes), ``not_face`` (``NF`` is among the top votes: never a face, in every mode),
``unknown`` (``unknown`` wins), ``no_majority`` (majority: the top emotion has no more than
half of the votes), ``tie`` (plurality: two emotions share the top), ``too_spread``
(probability: the top three emotions hold no more than half of the votes), ``contempt``
(a contempt label while the classes leave contempt out)."""


def _canonical_mode(label_mode: str) -> str:
    """``label_mode`` as one of :data:`FERPLUS_MODES` (``soft``/``distribution`` →
    ``probability``); DatasetError for anything else."""
    mode = {"soft": "probability", "distribution": "probability"}.get(label_mode, label_mode)
    if mode not in FERPLUS_MODES:
        raise DatasetError(f"FERPlus label mode must be one of {', '.join(FERPLUS_MODES)}; "
                           f"got {label_mode!r}")
    return mode


def ferplus_target(votes: Sequence[float], mode: str = "majority") -> tuple[np.ndarray | None,
                                                                             str]:
    """One FERPlus row's 10 vote counts (:data:`FERPLUS_VOTE_COLUMNS` order) → its label.

    Returns ``(distribution over the 8 emotions, "")`` for a kept row (one-hot for
    ``majority``/``plurality``) or ``(None, rule)`` with the :data:`FERPLUS_DROP_RULES` entry
    that drops it. Source: the FERPlus reader (github.com/microsoft/FERPlus, ``src/ferplus.py``,
    ``_process_data``; Barsoum et al., "Training Deep Networks for Facial Expression
    Recognition with Crowd-Sourced Label Distribution", ICMI 2016):

    * every emotion with a single vote is dropped first (outlier removal); ``unknown`` and
      ``NF`` votes count in the total;
    * ``majority``: the top emotion must hold *more than half* of the remaining votes
      (a 5/5 tie is dropped, not ``neutral``);
    * ``plurality`` (not in the FERPlus code; a common looser rule): the top emotion must be
      unique;
    * ``probability``: the official label distribution: the top emotions are taken in vote
      order until they hold 75 % of the votes (at most three), and the row is dropped when
      they hold no more than half;
    * a row whose top votes include ``NF`` is never a face (dropped in every mode; the
      official probability code would keep an emotion tied with ``NF``), one won by
      ``unknown`` is dropped.

    Raises DatasetError when ``votes`` is not 10 counts.
    """
    raw = np.asarray(votes, dtype=np.float64).copy()
    if raw.shape != (len(FERPLUS_VOTE_COLUMNS),):
        raise DatasetError(f"FERPlus votes need {len(FERPLUS_VOTE_COLUMNS)} counts, got "
                           f"{raw.shape}")
    raw[raw < 1.0 + np.finfo(np.float64).eps] = 0.0  # single votes are outliers
    total = raw.sum()
    if total <= 0:
        return None, "single_votes_only"
    top = np.flatnonzero(raw == raw.max())
    if _NF in top:
        return None, "not_face"
    if mode == "probability":
        dist = _ferplus_distribution(raw, total)
        if dist is None:
            return None, "too_spread"
        if int(dist.argmax()) == _UNKNOWN:
            return None, "unknown"
        emotions = dist[:8]
        return emotions / emotions.sum(), ""
    if top[0] == _UNKNOWN and len(top) == 1:
        return None, "unknown"
    if mode == "majority" and not raw.max() > 0.5 * total:
        return None, "no_majority"
    if len(top) > 1:
        return None, "tie"
    out = np.zeros(8)
    out[top[0]] = 1.0
    return out, ""


def _ferplus_distribution(raw: np.ndarray, total: float) -> np.ndarray | None:
    """The official ``probability``/``crossentropy`` processing of FERPlus votes (single votes
    already removed): a distribution over the 10 columns, or None when it must be dropped."""
    raw = raw.copy()
    emotion = np.zeros_like(raw)
    sum_part, count, valid = 0.0, 0, True
    while sum_part < 0.75 * total and count < 3 and valid:
        maxval = raw.max()
        for i in range(len(raw)):
            if raw[i] == maxval:
                emotion[i] = maxval
                raw[i] = 0
                sum_part += emotion[i]
                count += 1
                if i >= 8:  # unknown or non-face among the top votes: stop here
                    valid = False
                    if emotion.sum() > maxval:  # other emotions came first: keep those
                        emotion[i] = 0
                        count -= 1
                    break
    if emotion.sum() <= 0.5 * total or count > 3:
        return None
    return emotion / emotion.sum()


def read_ferplus(
    fer2013_csv: Path | str,
    fer2013new_csv: Path | str,
    split: str = "train",
    include_contempt: bool = False,
    label_mode: LabelMode = "majority",
    size: int | None = None,
) -> LabeledData:
    """FERPlus: FER2013 pixels + the FERPlus votes, row by row, labelled by the dataset's own
    protocol (:func:`ferplus_target`).

    ``split``: ``train`` (Training), ``val`` (PublicTest), ``test`` (PrivateTest) or ``all``.
    ``label_mode``: ``majority`` (default; hard labels), ``plurality`` (hard labels) or
    ``probability`` (soft ``(N, C)`` targets: the official label distribution). Without
    ``include_contempt`` the classes are :data:`CLASSES` and a row labelled contempt is
    dropped (contempt's share of a distribution is removed before normalising).

    ``meta``: ``dropped`` (rows left out), ``dropped_by_rule`` (per :data:`FERPLUS_DROP_RULES`
    entry, every rule listed), ``label_mode``; the counts are also logged. Raises DatasetError
    for missing files or columns, non-numeric votes, a row that is not 48×48 pixels.
    """
    mode = _canonical_mode(label_mode)
    old_path, new_path = Path(fer2013_csv), Path(fer2013new_csv)
    for p in (old_path, new_path):
        if not p.is_file():
            raise DatasetError(f"FERPlus file {p} not found")
    if split != "all" and split not in FERPLUS_SPLITS:
        raise DatasetError(f"FERPlus split must be one of train, val, test, all; got {split!r}")
    classes = CLASSES_WITH_CONTEMPT if include_contempt else CLASSES
    emotions = FERPLUS_VOTE_COLUMNS[:8]
    to_class = [classes.index(FERPLUS_TO_CANONICAL[c]) if (include_contempt or c != "contempt")
                else -1 for c in emotions]
    col = Collector(f"FERPlus {new_path}", size, "raise")
    dropped: Counter[str] = Counter()
    with open(old_path, newline="") as f_old, open(new_path, newline="") as f_new:
        old_rows, new_rows = csv.DictReader(f_old), csv.DictReader(f_new)
        need_old, need_new = {"pixels", "Usage"}, {"Usage", *FERPLUS_VOTE_COLUMNS}
        if not need_old <= set(old_rows.fieldnames or ()):
            raise DatasetError(f"{old_path}: needs columns {sorted(need_old)}")
        if not need_new <= set(new_rows.fieldnames or ()):
            raise DatasetError(f"{new_path}: needs columns {sorted(need_new)}")
        for i, (old, new) in enumerate(zip(old_rows, new_rows, strict=False)):
            if split != "all" and old["Usage"] != FERPLUS_SPLITS[split]:
                continue
            if not (new.get("Image name") or "").strip():
                dropped["no_image"] += 1
                continue
            try:
                votes = [float(new[c] or 0) for c in FERPLUS_VOTE_COLUMNS]
            except ValueError:
                raise DatasetError(f"{new_path}: row {i + 2} has non-numeric votes") from None
            dist, rule = ferplus_target(votes, mode)
            if dist is not None and not include_contempt:
                if int(dist.argmax()) == _CONTEMPT:
                    dist, rule = None, "contempt"
                else:
                    dist = dist.copy()
                    dist[_CONTEMPT] = 0.0
                    dist /= dist.sum()
            if dist is None:
                dropped[rule] += 1
                continue
            pix = np.array(old["pixels"].split(), dtype=np.float32)
            if pix.size != 48 * 48:
                raise DatasetError(f"{old_path}: row {i + 2} has {pix.size} pixels, not 48×48")
            img = cv2.cvtColor(pix.reshape(48, 48).clip(0, 255).astype(np.uint8),
                               cv2.COLOR_GRAY2BGR)
            if mode == "probability":
                target: object = np.zeros(len(classes), np.float32)
                for j, p in enumerate(dist):
                    if to_class[j] >= 0:
                        target[to_class[j]] = p  # type: ignore[index]
            else:
                target = to_class[int(dist.argmax())]
            col.add(img, target, new["Image name"].strip())
    by_rule = {rule: dropped.get(rule, 0) for rule in FERPLUS_DROP_RULES}
    log.info("FERPlus %s (%s): kept %d rows, dropped %d: %s", split, mode, len(col.images),
             sum(by_rule.values()), drop_counts_text(by_rule))
    data = col.finish(classes, f"ferplus:{new_path}:{split}", soft=mode == "probability")
    data.meta.update(dropped=sum(by_rule.values()), dropped_by_rule=by_rule, label_mode=mode)
    return data
