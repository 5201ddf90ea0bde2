"""What a face detector gives: :class:`Detection`, :class:`AlignedFace`, and the two protocols
(:class:`FaceDetector` for the pipeline, :class:`DetectorBackend` for registered detectors).

A leaf of :mod:`omnifer.faces`: the detectors and the scale-aware search both use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True, eq=False)  # arrays inside: compare fields explicitly, not with ==
class Detection:
    """One face: ``bbox`` (4,) float32 x1, y1, x2, y2; ``landmarks5`` (5, 2) float32."""

    bbox: np.ndarray
    landmarks5: np.ndarray
    score: float

    @property
    def size(self) -> float:
        """Shorter side of the box in pixels (what ``min_face_size`` compares against)."""
        return float(min(self.bbox[2] - self.bbox[0], self.bbox[3] - self.bbox[1]))


@dataclass(frozen=True, eq=False)
class AlignedFace:
    """A detection, its aligned crop (size×size×3 uint8 BGR) and its index in the image."""

    detection: Detection
    crop: np.ndarray
    face_index: int


class FaceDetector(Protocol):
    """What the pipeline uses: a name and version (provenance) and ``detect``."""

    name: str
    version: str

    def detect(self, image_bgr: np.ndarray) -> list[Detection]: ...


class DetectorBackend(Protocol):
    """What every registered detector provides.

    Measured properties :class:`FaceFinder` plans with (demo world; README, *Face
    detection*): ``min_face_px``, the face width (px at the network's input) from which it
    finds ≥ 97 % of faces as candidates (score ≥ a third of the threshold); ``refine_px``, the
    face size (longer box side) from which its landmarks are as good as they get;
    ``refine_context``, the crop side around a face it needs, in face sizes (SCRFD's scores
    collapse when a face fills more than ~40 % of its input). ``full_side``: the long side
    ``scale="full"`` detects at when the model has an input size of its own (else None: the
    image's own, up to ``max_side``).
    """

    name: str
    version: str
    min_face_px: float
    refine_px: int
    refine_context: float
    full_side: int | None

    def detect_raw(self, image_bgr: np.ndarray, score_threshold: float) -> list[Detection]:
        """Faces in ``image_bgr`` at its own resolution, score ≥ ``score_threshold``."""
        ...
