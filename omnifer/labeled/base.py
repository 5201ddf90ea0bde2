"""The type every labeled reader returns, and what the readers share.

:class:`LabeledData`: images ``N×H×W×3`` uint8 **BGR** (OpenCV order), targets either hard
``(N,)`` int64 class indices or soft ``(N, C)`` float32 distributions, the class names in
index order and one name per image (its relative path or row id). Images are decoded by the
one decoder (:func:`omnifer.imaging.decode.read_image_file`: the format decided by content,
EXIF orientation applied, HEIC/AVIF read, the same pixels ingest and ``omnifer score`` see)
and resized by :func:`omnifer.imaging.transforms.resize_image`.

Bad files: a missing list/CSV or an empty result is always a :class:`DatasetError`. A missing
or undecodable *image* raises :class:`DatasetError` naming it when ``on_error="raise"`` (the
default); with ``on_error="skip"`` it is skipped, counted in ``LabeledData.skipped`` and logged
once with the count and the first few names.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from omnifer.errors import DatasetError, DecodeError
from omnifer.imaging.decode import read_image_file
from omnifer.imaging.transforms import resize_image, resize_images

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]


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


def read_image(path: Path) -> np.ndarray | None:
    """BGR uint8 image (H, W, 3), upright, of the file at ``path``, or None when missing or
    undecodable (:func:`read_image_why` says why)."""
    return read_image_why(path)[0]


def read_image_why(path: Path) -> tuple[np.ndarray | None, str]:
    """(BGR uint8 image or None, why it is None: ``" (status: message)"``) for ``path``,
    decoded by :func:`omnifer.imaging.decode.read_image_file`."""
    try:
        return read_image_file(path).image, ""
    except DecodeError as exc:
        return None, f" ({exc.status}: {exc})"


def drop_counts_text(by_rule: dict[str, int]) -> str:
    """``"rule n, rule n"`` for the rules that dropped rows (``"none"`` when none did)."""
    return ", ".join(f"{k} {v}" for k, v in by_rule.items() if v) or "none"


class Collector:
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
        self.images.append(resize_image(img, self.size) if self.size else img)
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
