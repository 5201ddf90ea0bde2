"""Face detection and alignment: swappable detectors behind one small interface.

Why a registry: the detector is the part most likely to be swapped (YuNet ships under a
permissive licence and runs anywhere OpenCV does; SCRFD is more accurate but its weights are
for non-commercial research only), so detectors register by name (``@register_detector``)
and the pipeline asks for one with :func:`create_detector` from a config string.

Thread safety: a detector object is **not** thread-safe (``cv2.FaceDetectorYN`` keeps its input
size and buffers in the object; SCRFD mutates per-call state). Create one per worker thread
(``omnifer.pipeline.workers.WorkerResources`` does) and reuse it for every image: creation costs
~0.1 s, detection ~20-150 ms per photo.

Coordinates are always in the pixels of the image passed to ``detect``; landmarks are in the
ArcFace template order (eyes, nose tip, mouth corners; image left to right), which is what
:func:`omnifer.faces.align.align_face` expects.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from omnifer.errors import ModelFileError
from omnifer.faces.align import CROP_SIZE, align_face
from omnifer.logs import quiet_opencv
from omnifer.models.modelfiles import model_path

log = logging.getLogger(__name__)


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
    """What every registered detector provides."""

    name: str
    version: str

    def detect(self, image_bgr: np.ndarray) -> list[Detection]: ...


@dataclass(frozen=True)
class DetectorEntry:
    factory: Callable[..., FaceDetector]
    description: str


_REGISTRY: dict[str, DetectorEntry] = {}


def register_detector(
    name: str, description: str = ""
) -> Callable[[Callable[..., FaceDetector]], Callable[..., FaceDetector]]:
    """Class/factory decorator: make a detector available to :func:`create_detector`."""

    def wrap(factory: Callable[..., FaceDetector]) -> Callable[..., FaceDetector]:
        if name in _REGISTRY:
            raise ValueError(f"detector '{name}' is already registered")
        _REGISTRY[name] = DetectorEntry(factory, description or (factory.__doc__ or "").strip())
        return factory

    return wrap


def available_detectors() -> dict[str, str]:
    """Registered detector names → one-line descriptions (licence included)."""
    return {name: entry.description.splitlines()[0] for name, entry in sorted(_REGISTRY.items())}


def create_detector(
    name: str,
    model_home: Path | None = None,
    score_threshold: float = 0.6,
    nms_threshold: float = 0.3,
    max_side: int = 1280,
    top_k: int = 5000,
) -> FaceDetector:
    """A ready detector; raises ModelFileError (one clear line) when its weights are missing.

    ``model_home`` defaults to the environment's (``OMNIFER_HOME``). ``max_side`` bounds the
    work per image: a larger image is downscaled for detection and the coordinates are mapped
    back.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown detector '{name}'; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name].factory(
        model_home=model_home,
        score_threshold=score_threshold,
        nms_threshold=nms_threshold,
        max_side=max_side,
        top_k=top_k,
    )


def _check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an H×W×3 uint8 BGR image, got {image.shape} {image.dtype}")


def _downscale(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """``image`` shrunk so its longest side is at most ``max_side``, and the factor used."""
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale >= 1.0:
        return image, 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


@register_detector("yunet", "YuNet (OpenCV Zoo, 2023mar; Apache-2.0/MIT): fast, permissive")
class YuNetDetector:
    """``cv2.FaceDetectorYN`` with per-image input size; one object per thread."""

    name = "yunet"
    version = "yunet-2023mar"

    def __init__(
        self,
        model_home: Path | None = None,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
        max_side: int = 1280,
        top_k: int = 5000,
    ) -> None:
        path = model_path("yunet", home=model_home)
        self.max_side = max_side
        try:
            with quiet_opencv():  # OpenCV 5 warns that DNN targets are unsupported: noise
                self._net = cv2.FaceDetectorYN.create(
                    str(path), "", (320, 320), score_threshold, nms_threshold, top_k
                )
        except cv2.error as exc:
            raise ModelFileError(f"cannot load YuNet from {path}: {_first_line(exc)}") from None

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        _check_image(image_bgr)
        small, scale = _downscale(image_bgr, self.max_side)
        self._net.setInputSize((small.shape[1], small.shape[0]))
        _, rows = self._net.detect(small)
        if rows is None:
            return []
        out = []
        for row in rows:
            x, y, w, h = row[:4]
            bbox = np.array([x, y, x + w, y + h], np.float32) / scale
            landmarks = row[4:14].reshape(5, 2).astype(np.float32) / scale
            out.append(Detection(bbox, landmarks, float(row[14])))
        return out


@register_detector(
    "scrfd",
    "SCRFD-500M (InsightFace buffalo_sc): InsightFace model licence, non-commercial research "
    "use only",
)
class ScrfdDetector:
    """InsightFace SCRFD-500M on onnxruntime (CPU).

    Licence: the InsightFace pretrained weights (``det_500m.onnx``) are for non-commercial
    research use only; check before using its detections in a commercial product.
    SCRFD letterboxes every image into 640×640 itself, so ``max_side`` only bounds the
    resize cost of very large images.
    """

    name = "scrfd"
    version = "scrfd-500m"
    input_size = (640, 640)

    def __init__(
        self,
        model_home: Path | None = None,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
        max_side: int = 1280,
        top_k: int = 5000,
    ) -> None:
        from insightface.model_zoo import get_model

        path = model_path("scrfd", home=model_home)
        self.max_side = max_side
        self.top_k = top_k
        try:
            self._model = get_model(str(path), providers=["CPUExecutionProvider"])
            self._model.prepare(
                ctx_id=-1,
                input_size=self.input_size,
                det_thresh=score_threshold,
                nms_thresh=nms_threshold,
            )
        except Exception as exc:  # onnxruntime raises several types; all mean "bad file"
            raise ModelFileError(f"cannot load SCRFD from {path}: {_first_line(exc)}") from None

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        _check_image(image_bgr)
        small, scale = _downscale(image_bgr, self.max_side)
        boxes, kpss = self._model.detect(small, input_size=self.input_size, max_num=self.top_k)
        out = []
        for i, row in enumerate(boxes):
            bbox = np.asarray(row[:4], np.float32) / scale
            landmarks = np.asarray(kpss[i], np.float32).reshape(5, 2) / scale
            out.append(Detection(bbox, landmarks, float(row[4])))
        return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def detect_and_align(
    image: np.ndarray,
    detector: FaceDetector,
    min_face_size: int = 32,
    min_score: float = 0.6,
    crop_size: int = CROP_SIZE,
) -> list[AlignedFace]:
    """Faces of ``image`` (H×W×3 uint8 BGR) at least ``min_face_size`` px, aligned.

    Order is deterministic: score (rounded to 1e-4, so CPU float noise cannot swap two
    near-equal faces) descending, then x1, then y1; ``face_index`` follows that order.
    """
    dets = [d for d in detector.detect(image) if d.score >= min_score and d.size >= min_face_size]
    dets.sort(key=lambda d: (-round(d.score, 4), float(d.bbox[0]), float(d.bbox[1])))
    return [
        AlignedFace(d, align_face(image, d.landmarks5, size=crop_size), i)
        for i, d in enumerate(dets)
    ]


def face_id(image_sha256: str, bbox: Sequence[float] | np.ndarray) -> str:
    """Stable key of a face: sha256 of the image hash and the box rounded to whole pixels.

    Rounding makes the id survive float noise between runs and machines; 32 hex chars
    (128 bits) are plenty to avoid collisions.
    """
    x1, y1, x2, y2 = (int(round(float(v))) for v in np.asarray(bbox).ravel()[:4])
    key = f"{image_sha256}:{x1},{y1},{x2},{y2}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]
