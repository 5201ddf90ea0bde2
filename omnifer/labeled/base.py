"""Labeled data readers: every dataset lands in one type and one label space.

Each reader returns :class:`LabeledData`: images ``N×H×W×3`` uint8 **BGR** (OpenCV order),
targets either hard ``(N,)`` int64 class indices or soft ``(N, C)`` float32 distributions,
the class names in index order and one name per image (its relative path or row id).

Label mappings (documented here, implemented below):

* RAF-DB basic: ``1 Surprise 2 Fear 3 Disgust 4 Happiness 5 Sadness 6 Anger 7 Neutral`` →
  :data:`omnifer.labels.RAFDB_TO_CANONICAL` → canonical :data:`omnifer.labels.CLASSES`.
* FERPlus: vote columns ``neutral happiness surprise sadness anger disgust fear contempt
  unknown NF`` → ``neutral happy surprise sad angry disgust fear contempt``; rows whose
  majority vote is ``unknown`` or ``NF`` are dropped, and so are ``contempt`` rows unless
  ``include_contempt`` (then the classes are :data:`CLASSES_WITH_CONTEMPT`).
* AffectNet: ``expression`` ``0 Neutral 1 Happy 2 Sad 3 Surprise 4 Fear 5 Disgust 6 Anger
  7 Contempt``; codes 8 (None), 9 (Uncertain), 10 (Non-face) are dropped, contempt as FERPlus.
* Image folder: ``ROOT/<class>/*.{png,jpg,jpeg,bmp,webp}``, any class names, sorted (or in
  the order given by ``classes``).

Bad files: a missing list/CSV or an empty result is always a :class:`DatasetError`. A missing
or undecodable *image* raises :class:`DatasetError` naming it when ``on_error="raise"`` (the
default); with ``on_error="skip"`` it is skipped, counted in ``LabeledData.skipped`` and logged
once with the count and the first few names.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from omnifer.errors import DatasetError
from omnifer.labels import CLASSES, CLASSES_WITH_CONTEMPT, RAFDB_TO_CANONICAL

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
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


def _to_bgr(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    return img


def read_image(path: Path) -> np.ndarray | None:
    """BGR uint8 image, or None when missing or undecodable."""
    if not path.is_file():
        return None
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        return None
    if img.dtype != np.uint8:
        img = cv2.convertScaleAbs(img, alpha=255.0 / max(float(img.max()), 1.0))
    return _to_bgr(img)


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
def read_ferplus(
    fer2013_csv: Path | str,
    fer2013new_csv: Path | str,
    split: str = "train",
    include_contempt: bool = False,
    label_mode: Literal["majority", "soft"] = "majority",
    size: int | None = None,
) -> LabeledData:
    """FERPlus: FER2013 pixels + the FERPlus votes, row by row.

    ``split``: ``train`` (Training), ``val`` (PublicTest), ``test`` (PrivateTest) or ``all``.
    ``label_mode="majority"`` gives the most-voted class (first in column order on ties);
    ``"soft"`` gives the vote distribution over the kept classes. Rows whose majority is
    ``unknown``/``NF``, rows with no image name in fer2013new, and (without
    ``include_contempt``) contempt-majority rows are dropped; contempt votes are then removed
    from the distribution before normalising.
    """
    old_path, new_path = Path(fer2013_csv), Path(fer2013new_csv)
    for p in (old_path, new_path):
        if not p.is_file():
            raise DatasetError(f"FERPlus file {p} not found")
    if split != "all" and split not in FERPLUS_SPLITS:
        raise DatasetError(f"FERPlus split must be one of train, val, test, all; got {split!r}")
    classes = CLASSES_WITH_CONTEMPT if include_contempt else CLASSES
    vote_names = [c for c in FERPLUS_VOTE_COLUMNS[:8] if include_contempt or c != "contempt"]
    to_class = np.array([classes.index(FERPLUS_TO_CANONICAL[c]) for c in vote_names])
    col = _Collector(f"FERPlus {new_path}", size, "raise")
    dropped = 0
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
                dropped += 1
                continue
            try:
                votes_all = np.array([float(new[c] or 0) for c in FERPLUS_VOTE_COLUMNS])
            except ValueError:
                raise DatasetError(f"{new_path}: row {i + 2} has non-numeric votes") from None
            top = FERPLUS_VOTE_COLUMNS[int(votes_all.argmax())]
            if votes_all.sum() <= 0 or top in ("unknown", "NF") or (
                top == "contempt" and not include_contempt
            ):
                dropped += 1
                continue
            votes = np.array([votes_all[FERPLUS_VOTE_COLUMNS.index(c)] for c in vote_names])
            pix = np.array(old["pixels"].split(), dtype=np.float32)
            if pix.size != 48 * 48:
                raise DatasetError(f"{old_path}: row {i + 2} has {pix.size} pixels, not 48×48")
            img = cv2.cvtColor(pix.reshape(48, 48).clip(0, 255).astype(np.uint8),
                               cv2.COLOR_GRAY2BGR)
            if label_mode == "soft":
                target: object = np.zeros(len(classes), np.float32)
                target[to_class] = votes / votes.sum()  # type: ignore[index]
            else:
                target = int(to_class[int(votes.argmax())])
            col.add(img, target, new["Image name"].strip() or f"row{i}")
    log.info("FERPlus %s: kept %d rows, dropped %d (unknown/NF/contempt/no image)", split,
             len(col.images), dropped)
    data = col.finish(classes, f"ferplus:{new_path}:{split}", soft=label_mode == "soft")
    data.meta["dropped"] = dropped
    return data


# -- AffectNet -----------------------------------------------------------------------------------
def read_affectnet(
    csv_path: Path | str,
    images_root: Path | str,
    include_contempt: bool = False,
    size: int = AFFECTNET_CROP_SIZE,
    on_error: OnError = "raise",
) -> LabeledData:
    """AffectNet manual annotations (``training.csv`` / ``validation.csv``).

    Each row: ``subDirectory_filePath`` under ``images_root``, the face box ``face_x, face_y,
    face_width, face_height`` (cropped, clipped to the image) and ``expression`` (see the
    module docstring). Crops are resized to ``size``.
    """
    csv_path, images_root = Path(csv_path), Path(images_root)
    if not csv_path.is_file():
        raise DatasetError(f"AffectNet CSV {csv_path} not found")
    classes = CLASSES_WITH_CONTEMPT if include_contempt else CLASSES
    col = _Collector(f"AffectNet {csv_path}", size, on_error)
    dropped = 0
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
                dropped += 1
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
    log.info("AffectNet %s: kept %d rows, dropped %d (none/uncertain/non-face/contempt)",
             csv_path.name, len(col.images), dropped)
    data = col.finish(classes, f"affectnet:{csv_path}")
    data.meta["dropped"] = dropped
    return data


# -- image folder --------------------------------------------------------------------------------
def list_images(root: Path) -> list[Path]:
    """Image files under ``root`` (recursive), sorted by relative path."""
    return sorted(p for p in root.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def read_image_folder(
    root: Path | str,
    size: int | None = None,
    classes: Sequence[str] | None = None,
    on_error: OnError = "raise",
) -> LabeledData:
    """``ROOT/<class>/*.png|jpg|…``: class = sub-folder name; classes sorted unless given.

    With ``classes`` given, folders must be among them and indices follow that order (so a
    test folder lines up with a model's classes even when a class has no images).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} not found")
    dirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
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
            col.add(read_image(path), classes.index(d), path.relative_to(root).as_posix())
    return col.finish(classes, f"folder:{root}")


# -- dispatch by format (the CLI uses this) ------------------------------------------------------
FORMATS = ("rafdb", "ferplus", "affectnet", "folder")


def read_dataset(
    path: Path | str, fmt: str, split: str = "train", size: int | None = None,
    classes: Sequence[str] | None = None,
) -> LabeledData:
    """Read ``path`` in format ``fmt`` (one of :data:`FORMATS`).

    * ``rafdb``: the RAF-DB root. * ``ferplus``: a folder with ``fer2013.csv`` and
      ``fer2013new.csv``. * ``affectnet``: a CSV (images under its folder) or a folder with
      ``training.csv`` (split train) / ``validation.csv`` (other splits).
    * ``folder``: ``ROOT/<class>/…``, or ``ROOT/<split>/<class>/…`` when ``ROOT/<split>``
      exists.
    """
    path = Path(path)
    if fmt == "rafdb":
        return read_rafdb(path, split, size=size)
    if fmt == "ferplus":
        folder = path.parent if path.is_file() else path
        return read_ferplus(folder / "fer2013.csv", folder / "fer2013new.csv", split, size=size)
    if fmt == "affectnet":
        if path.is_file():
            return read_affectnet(path, path.parent, size=size or AFFECTNET_CROP_SIZE)
        name = "training.csv" if split == "train" else "validation.csv"
        images = path / "Manually_Annotated_Images"
        return read_affectnet(path / name, images if images.is_dir() else path,
                              size=size or AFFECTNET_CROP_SIZE)
    if fmt == "folder":
        root = path / split if (path / split).is_dir() else path
        return read_image_folder(root, size=size, classes=classes)
    raise DatasetError(f"unknown dataset format {fmt!r}; expected one of {', '.join(FORMATS)}")
