"""Labeled data readers: every dataset lands in one type and one label space.

Each reader returns :class:`LabeledData`: images ``N×H×W×3`` uint8 **BGR** (OpenCV order),
targets either hard ``(N,)`` int64 class indices or soft ``(N, C)`` float32 distributions,
the class names in index order and one name per image (its relative path or row id).

Label mappings (documented here, implemented below):

* RAF-DB basic: ``1 Surprise 2 Fear 3 Disgust 4 Happiness 5 Sadness 6 Anger 7 Neutral`` →
  :data:`omnifer.labels.RAFDB_TO_CANONICAL` → canonical :data:`omnifer.labels.CLASSES`.
* FERPlus: vote columns ``neutral happiness surprise sadness anger disgust fear contempt
  unknown NF`` → ``neutral happy surprise sad angry disgust fear contempt``, labelled by the
  dataset's own protocol (:func:`ferplus_target`): single votes dropped, then ``majority``
  (default: the top emotion needs more than half of the votes, ``unknown``/``NF`` votes
  counted), ``plurality`` or ``probability`` (the official label distribution); rows that fail
  are excluded, ``NF``-top rows are never faces, and each rule's count is in
  ``meta["dropped_by_rule"]``. ``contempt`` rows need ``include_contempt`` (then the classes
  are :data:`CLASSES_WITH_CONTEMPT`).
* AffectNet: ``expression`` ``0 Neutral 1 Happy 2 Sad 3 Surprise 4 Fear 5 Disgust 6 Anger
  7 Contempt``; codes 8 (None), 9 (Uncertain), 10 (Non-face) are not expressions and are
  dropped, contempt as FERPlus (7 or 8 classes), counts per rule in ``meta``.
* Image folder: ``ROOT/<class>/**/*``, any class names, sorted (or in the order given by
  ``classes``). Every file counts whatever its name (the bytes decide the format, through
  :func:`omnifer.decode.read_image_file`); system junk is never a class or an image
  (:func:`omnifer.ignore.is_ignored`: ``._name.png``, ``__MACOSX/``, ``@eaDir/``,
  ``Thumbs.db``, hidden entries, ...), the same rule as the crawler's.

Images are decoded by the project's one decoder (:mod:`omnifer.decode`): EXIF orientation
applied, HEIC/AVIF read, the same pixels ingest and ``omnifer score`` see.

Bad files: a missing list/CSV or an empty result is always a :class:`DatasetError`. A missing
or undecodable *image* raises :class:`DatasetError` naming it when ``on_error="raise"`` (the
default); with ``on_error="skip"`` it is skipped, counted in ``LabeledData.skipped`` and logged
once with the count and the first few names.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from omnifer import ignore
from omnifer.decode import read_image_file
from omnifer.errors import DatasetError, DecodeError
from omnifer.labels import CLASSES, CLASSES_WITH_CONTEMPT, RAFDB_TO_CANONICAL

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]

FERPLUS_VOTE_COLUMNS: tuple[str, ...] = (
    "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
    "unknown", "NF",
)
FERPLUS_TO_CANONICAL: dict[str, str] = {
    "neutral": "neutral", "happiness": "happy", "surprise": "surprise", "sadness": "sad",
    "anger": "angry", "disgust": "disgust", "fear": "fear", "contempt": "contempt",
}
FERPLUS_SPLITS: dict[str, str] = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
AFFECTNET_TO_CANONICAL: dict[int, str] = {
    0: "neutral", 1: "happy", 2: "sad", 3: "surprise", 4: "fear", 5: "disgust", 6: "angry",
    7: "contempt",
}
AFFECTNET_CROP_SIZE = 112  # = omnifer.align.CROP_SIZE (not imported: it pulls in insightface)


@dataclass
class LabeledData:
    """Images with labels in one class space.

    ``images``: (N, H, W, 3) uint8 BGR. ``targets``: (N,) int64 or (N, C) float32 rows summing
    to 1. ``classes``: names of the C classes in index order. ``names``: one id per image.
    ``source``: where it came from (``"rafdb:/path/train"``), recorded in model cards.
    """

    images: np.ndarray
    targets: np.ndarray
    classes: tuple[str, ...]
    names: list[str]
    source: str = ""
    skipped: int = 0
    meta: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.classes = tuple(self.classes)
        n = len(self.images)
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise DatasetError(
                f"images must be N×H×W×3 uint8, got {self.images.shape} {self.images.dtype}"
            )
        if len(self.targets) != n or len(self.names) != n:
            raise DatasetError(
                f"{n} images but {len(self.targets)} targets and {len(self.names)} names"
            )
        if self.targets.ndim == 2 and self.targets.shape[1] != len(self.classes):
            raise DatasetError(f"soft targets have {self.targets.shape[1]} columns, "
                               f"{len(self.classes)} classes")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def is_soft(self) -> bool:
        return self.targets.ndim == 2

    def hard_labels(self) -> np.ndarray:
        """(N,) int64 class indices (argmax of soft targets, first on ties)."""
        return hard_labels(self.targets)

    def soft_targets(self) -> np.ndarray:
        """(N, C) float32 distributions (one-hot for hard targets)."""
        if self.is_soft:
            return self.targets.astype(np.float32)
        out = np.zeros((len(self), len(self.classes)), np.float32)
        out[np.arange(len(self)), self.targets] = 1.0
        return out

    def subset(self, index: np.ndarray | Sequence[int]) -> LabeledData:
        idx = np.asarray(index, dtype=np.int64)
        return LabeledData(self.images[idx], self.targets[idx], self.classes,
                           [self.names[i] for i in idx], self.source, 0, dict(self.meta))

    def resized(self, size: int) -> LabeledData:
        """A copy with every image resized to ``size``×``size`` (no-op when already so)."""
        if self.images.shape[1:3] == (size, size):
            return self
        return LabeledData(resize_images(self.images, size), self.targets, self.classes,
                           list(self.names), self.source, self.skipped, dict(self.meta))

    def remapped(self, classes: Sequence[str]) -> LabeledData:
        """The same data with targets re-indexed into ``classes`` (matched by name)."""
        classes = tuple(classes)
        if classes == self.classes:
            return self
        missing = [c for c in self.classes if c not in classes]
        if missing:
            raise DatasetError(f"classes {missing} of {self.source or 'the data'} are not among "
                               f"{list(classes)}")
        to = np.array([classes.index(c) for c in self.classes], dtype=np.int64)
        if self.is_soft:
            targets = np.zeros((len(self), len(classes)), np.float32)
            targets[:, to] = self.targets
        else:
            targets = to[self.targets]
        return LabeledData(self.images, targets, classes, list(self.names), self.source,
                           self.skipped, dict(self.meta))

    def digest(self) -> str:
        """sha256 of images, targets and classes: the data 'version' recorded in model cards."""
        h = hashlib.sha256()
        h.update(repr((self.images.shape, self.classes)).encode())
        h.update(np.ascontiguousarray(self.images).tobytes())
        h.update(np.ascontiguousarray(self.targets).tobytes())
        return h.hexdigest()

    def counts(self) -> dict[str, int]:
        labels = self.hard_labels()
        return {c: int((labels == i).sum()) for i, c in enumerate(self.classes)}


def hard_labels(targets: np.ndarray) -> np.ndarray:
    """(N,) int64 class indices from hard (N,) or soft (N, C) targets."""
    targets = np.asarray(targets)
    if targets.ndim == 2:
        return targets.argmax(axis=1).astype(np.int64)
    return targets.astype(np.int64)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, 3) uint8 → (N, size, size, 3) uint8 (area when shrinking, linear otherwise)."""
    out = np.empty((len(images), size, size, 3), np.uint8)
    for i, img in enumerate(images):
        out[i] = _resize(img, size)
    return out


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    if img.shape[:2] == (size, size):
        return img
    interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def read_image(path: Path) -> np.ndarray | None:
    """BGR uint8 image (H, W, 3), upright, or None when missing or undecodable
    (:func:`read_image_why` says why)."""
    return read_image_why(path)[0]


def read_image_why(path: Path) -> tuple[np.ndarray | None, str]:
    """(BGR uint8 image or None, why it is None: ``" (status: message)"``) for ``path``,
    decoded by :func:`omnifer.decode.read_image_file`."""
    try:
        return read_image_file(path).image, ""
    except DecodeError as exc:
        return None, f" ({exc.status}: {exc})"


class _Collector:
    """Gathers images + targets, applies ``on_error``, stacks at the end."""

    def __init__(self, what: str, size: int | None, on_error: OnError) -> None:
        if on_error not in ("raise", "skip"):
            raise DatasetError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.what, self.size, self.on_error = what, size, on_error
        self.images: list[np.ndarray] = []
        self.targets: list[object] = []
        self.names: list[str] = []
        self.bad: list[str] = []

    def add(self, img: np.ndarray | None, target: object, name: str, why: str = "") -> None:
        """Keep ``img`` (BGR) with ``target``; None is a bad file, handled by ``on_error``."""
        if img is None:
            if self.on_error == "raise":
                raise DatasetError(
                    f"{self.what}: cannot read image {name}{why or ' (missing or corrupt)'}; "
                    "fix or remove it, or pass on_error='skip'"
                )
            self.bad.append(name)
            return
        self.images.append(_resize(img, self.size) if self.size else img)
        self.targets.append(target)
        self.names.append(name)

    def finish(self, classes: Sequence[str], source: str, soft: bool = False) -> LabeledData:
        if self.bad:
            log.warning("%s: skipped %d unreadable images (first: %s)", self.what, len(self.bad),
                        ", ".join(self.bad[:5]))
        if not self.images:
            raise DatasetError(f"{self.what}: no usable images found")
        shapes = {im.shape for im in self.images}
        if len(shapes) > 1:
            raise DatasetError(
                f"{self.what}: images have different sizes ({len(shapes)} distinct, e.g. "
                f"{sorted(shapes)[:3]}); pass size= to resize them"
            )
        targets = (np.stack(self.targets).astype(np.float32) if soft
                   else np.asarray(self.targets, dtype=np.int64))
        return LabeledData(np.stack(self.images), targets, tuple(classes), self.names, source,
                           skipped=len(self.bad))


# -- RAF-DB --------------------------------------------------------------------------------------
def read_rafdb(
    root: Path | str, split: str = "train", size: int | None = None, on_error: OnError = "raise"
) -> LabeledData:
    """RAF-DB basic: ``EmoLabel/list_patition_label.txt`` + ``Image/aligned/*_aligned.jpg``.

    ``split`` is ``train`` or ``test`` (the file-name prefix). Labels 1..7 map through
    :data:`RAFDB_TO_CANONICAL` into :data:`CLASSES`.
    """
    root = Path(root)
    if split not in ("train", "test"):
        raise DatasetError(f"RAF-DB split must be 'train' or 'test', got {split!r}")
    list_file = root / "EmoLabel" / "list_patition_label.txt"
    if not list_file.is_file():
        raise DatasetError(f"RAF-DB label list {list_file} not found (expected the RAF-DB "
                           "basic layout: EmoLabel/, Image/aligned/)")
    col = _Collector(f"RAF-DB {root} ({split})", size, on_error)
    for lineno, line in enumerate(list_file.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) not in RAFDB_TO_CANONICAL:
            raise DatasetError(f"{list_file}:{lineno}: expected '<name>.jpg <1-7>', got {line!r}")
        name, code = parts[0], int(parts[1])
        if not name.startswith(split + "_"):
            continue
        stem = Path(name).stem
        path = root / "Image" / "aligned" / f"{stem}_aligned.jpg"
        label = CLASSES.index(RAFDB_TO_CANONICAL[code])
        col.add(read_image(path), label, f"Image/aligned/{path.name}")
    return col.finish(CLASSES, f"rafdb:{root}:{split}")


# -- FERPlus -------------------------------------------------------------------------------------
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
    col = _Collector(f"FERPlus {new_path}", size, "raise")
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
             sum(by_rule.values()), _rules_text(by_rule))
    data = col.finish(classes, f"ferplus:{new_path}:{split}", soft=mode == "probability")
    data.meta.update(dropped=sum(by_rule.values()), dropped_by_rule=by_rule, label_mode=mode)
    return data


def _rules_text(by_rule: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in by_rule.items() if v) or "none"


# -- AffectNet -----------------------------------------------------------------------------------
AFFECTNET_DROP_RULES: dict[int, str] = {8: "none", 9: "uncertain", 10: "no_face"}
"""AffectNet ``expression`` codes that are not expressions (the dataset's README: 8 None,
9 Uncertain, 10 No-Face): their rows are never training or test faces."""


def read_affectnet(
    csv_path: Path | str,
    images_root: Path | str,
    include_contempt: bool = False,
    size: int = AFFECTNET_CROP_SIZE,
    on_error: OnError = "raise",
) -> LabeledData:
    """AffectNet manual annotations (``training.csv`` / ``validation.csv``).

    Each row: ``subDirectory_filePath`` under ``images_root``, the face box ``face_x, face_y,
    face_width, face_height`` (cropped, clipped to the image) and ``expression``: ``0 Neutral
    1 Happy 2 Sad 3 Surprise 4 Fear 5 Disgust 6 Anger 7 Contempt`` are kept (contempt only
    with ``include_contempt``: the 8-class protocol; without, the 7-class one), codes 8–10
    are dropped (:data:`AFFECTNET_DROP_RULES`), any other code is ``invalid_code``. Crops are
    resized to ``size``. ``meta``: ``dropped`` and ``dropped_by_rule`` (``none``,
    ``uncertain``, ``no_face``, ``contempt``, ``invalid_code``).
    """
    csv_path, images_root = Path(csv_path), Path(images_root)
    if not csv_path.is_file():
        raise DatasetError(f"AffectNet CSV {csv_path} not found")
    classes = CLASSES_WITH_CONTEMPT if include_contempt else CLASSES
    col = _Collector(f"AffectNet {csv_path}", size, on_error)
    dropped: Counter[str] = Counter()
    need = {"subDirectory_filePath", "expression", "face_x", "face_y", "face_width",
            "face_height"}
    with open(csv_path, newline="") as fh:
        rows = csv.DictReader(fh)
        if not need <= set(rows.fieldnames or ()):
            raise DatasetError(f"{csv_path}: needs columns {sorted(need)}")
        for i, row in enumerate(rows):
            try:
                code = int(row["expression"])
                x, y, w, h = (int(float(row[k])) for k in
                              ("face_x", "face_y", "face_width", "face_height"))
            except ValueError:
                raise DatasetError(f"{csv_path}: row {i + 2} has a non-numeric field") from None
            name = AFFECTNET_TO_CANONICAL.get(code)
            if name is None or name not in classes:
                dropped[AFFECTNET_DROP_RULES.get(code, name or "invalid_code")] += 1
                continue
            rel = row["subDirectory_filePath"]
            img = read_image(images_root / rel)
            crop = None
            if img is not None:
                x0, y0 = max(x, 0), max(y, 0)
                x1, y1 = min(x + w, img.shape[1]), min(y + h, img.shape[0])
                crop = img[y0:y1, x0:x1] if x1 > x0 and y1 > y0 else None
            why = "" if img is None or crop is not None else f" (empty face box {x},{y},{w},{h})"
            col.add(crop, classes.index(name), rel, why)
    by_rule = {r: dropped.get(r, 0)
               for r in ("none", "uncertain", "no_face", "contempt", "invalid_code")}
    if by_rule["invalid_code"]:
        log.warning("AffectNet %s: %d rows have an expression code outside 0-10", csv_path.name,
                    by_rule["invalid_code"])
    log.info("AffectNet %s: kept %d rows, dropped %d: %s", csv_path.name, len(col.images),
             sum(by_rule.values()), _rules_text(by_rule))
    data = col.finish(classes, f"affectnet:{csv_path}")
    data.meta.update(dropped=sum(by_rule.values()), dropped_by_rule=by_rule)
    return data


# -- image folder --------------------------------------------------------------------------------
def list_images(root: Path) -> list[Path]:
    """Every file under ``root`` (recursive) that is not system junk, whatever its name
    (the decoder decides by content), sorted by relative path.

    Junk folders (``@eaDir``, ``__MACOSX``, hidden ones) are not entered; a folder that
    cannot be read or an entry that vanishes is logged and left out, never raised.
    """
    root = Path(root)
    found: list[Path] = []

    def unreadable(exc: OSError) -> None:
        log.warning("%s: cannot list %s (%s); its files are left out", root,
                    os.fsencode(exc.filename or "").decode("utf-8", "backslashreplace"),
                    exc.strerror or exc)

    for folder, dirs, files in os.walk(root, onerror=unreadable):
        dirs[:] = sorted(d for d in dirs if ignore.ignored_name(d, folder=True) is None)
        for name in files:
            if ignore.ignored_name(name, folder=False) is not None:
                continue
            path = Path(folder, name)
            try:
                if not path.is_file():  # a dangling symlink, a FIFO, a socket
                    log.warning("%s: skipping %s: not a regular file", root,
                                _shown(path.relative_to(root)))
                    continue
            except OSError:
                continue
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _shown(path: Path) -> str:
    return str(path).encode("utf-8", "backslashreplace").decode()


def class_folders(root: Path) -> list[str]:
    """Sub-folder names of ``root`` that are classes: every folder but system junk, sorted."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise DatasetError(f"cannot list image folder {root}: {exc.strerror or exc}") from None
    dirs = []
    for entry in entries:
        try:
            is_dir = entry.is_dir()
        except OSError:
            continue
        if is_dir and ignore.ignored_name(entry.name, folder=True) is None:
            dirs.append(entry.name)
    return dirs


def read_image_folder(
    root: Path | str,
    size: int | None = None,
    classes: Sequence[str] | None = None,
    on_error: OnError = "raise",
) -> LabeledData:
    """``ROOT/<class>/**``: class = sub-folder name; classes sorted unless given.

    With ``classes`` given, folders must be among them and indices follow that order (so a
    test folder lines up with a model's classes even when a class has no images). System
    junk (see the module docstring) is neither a class nor an image; any other file that
    does not decode follows ``on_error``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} not found")
    dirs = class_folders(root)
    if not dirs:
        raise DatasetError(f"{root} has no class sub-folders (expected ROOT/<class>/*.png)")
    if classes is None:
        classes = tuple(dirs)
    else:
        classes = tuple(classes)
        unknown = [d for d in dirs if d not in classes]
        if unknown:
            raise DatasetError(f"{root}: folders {unknown} are not among classes {list(classes)}")
    col = _Collector(f"image folder {root}", size, on_error)
    for d in dirs:
        for path in list_images(root / d):
            img, why = read_image_why(path)
            col.add(img, classes.index(d), path.relative_to(root).as_posix(), why)
    return col.finish(classes, f"folder:{root}")


# -- dispatch by format (the CLI uses this) ------------------------------------------------------
FORMATS = ("rafdb", "ferplus", "affectnet", "folder")


def read_dataset(
    path: Path | str, fmt: str, split: str = "train", size: int | None = None,
    classes: Sequence[str] | None = None, label_mode: LabelMode = "majority",
    include_contempt: bool | None = None,
) -> LabeledData:
    """Read ``path`` in format ``fmt`` (one of :data:`FORMATS`).

    * ``rafdb``: the RAF-DB root. * ``ferplus``: a folder with ``fer2013.csv`` and
      ``fer2013new.csv``. * ``affectnet``: a CSV (images under its folder) or a folder with
      ``training.csv`` (split train) / ``validation.csv`` (other splits).
    * ``folder``: ``ROOT/<class>/…``, or ``ROOT/<split>/<class>/…`` when ``ROOT/<split>``
      exists.

    ``label_mode``: FERPlus's protocol (:data:`FERPLUS_MODES`; ignored by the other formats).
    ``include_contempt``: FERPlus / AffectNet contempt rows (8 classes); None means "when
    ``classes`` holds contempt" (e.g. a model trained with it).
    """
    path = Path(path)
    if include_contempt is None:
        include_contempt = classes is not None and "contempt" in classes
    if fmt == "rafdb":
        return read_rafdb(path, split, size=size)
    if fmt == "ferplus":
        folder = path.parent if path.is_file() else path
        return read_ferplus(folder / "fer2013.csv", folder / "fer2013new.csv", split,
                            include_contempt=include_contempt, label_mode=label_mode,
                            size=size)
    if fmt == "affectnet":
        if path.is_file():
            return read_affectnet(path, path.parent, include_contempt=include_contempt,
                                  size=size or AFFECTNET_CROP_SIZE)
        name = "training.csv" if split == "train" else "validation.csv"
        images = path / "Manually_Annotated_Images"
        return read_affectnet(path / name, images if images.is_dir() else path,
                              include_contempt=include_contempt,
                              size=size or AFFECTNET_CROP_SIZE)
    if fmt == "folder":
        root = path / split if (path / split).is_dir() else path
        return read_image_folder(root, size=size, classes=classes)
    raise DatasetError(f"unknown dataset format {fmt!r}; expected one of {', '.join(FORMATS)}")
