"""Face detection and alignment: swappable detectors behind one small interface.

Why a registry: the detector is the part most likely to be swapped (YuNet ships under a
permissive licence and runs anywhere OpenCV does; SCRFD is more accurate but its weights are
for non-commercial research only), so detector *backends* register by name
(``@register_detector``) and the pipeline asks for one with :func:`create_detector` from a
config string.

A backend only runs its network on the pixels it is given (:meth:`DetectorBackend.detect_raw`).
Everything about *where* and *at what resolution* to look is one detector-independent step,
:class:`FaceFinder`, which every backend gets:

1. **Main pass at the scale the faces need** (``scale="auto"``): the image is shrunk so that
   the smallest face the policy keeps (``min_face_size``) lands at the smallest size the
   backend still finds (its measured ``min_face_px``): a 640×480 photo with
   ``min_face_size=32`` is searched at 320×240 by YuNet (16 px) — a quarter of the pixels.
   ``scale="full"`` searches the whole image at up to ``max_side`` (SCRFD: its own 640 input),
   the behaviour before scale-aware detection.
2. **Whole-frame pass** (``whole_frame=True``): the image, shrunk to a small thumbnail, is put
   in the middle of a canvas twice its size and searched again, so that a face which fills the
   frame (a tight crop: MS-Celeb-1M, RAF-DB's aligned set) has the context detectors are
   trained with. SCRFD finds no face in such crops otherwise (its scores collapse for faces
   over ~40 % of the input: insightface issue #1518); padding the canvas is what its users do.
3. **Refinement at face resolution**: each face found by a shrunken pass is detected again on
   a crop around it, at a resolution where the face is about ``refine_px`` pixels (never
   enlarged beyond the photo's own pixels), and its box, landmarks and score are taken from
   there. Landmarks from a shrunken image are coarse (a median 10 % of the inter-ocular
   distance off with YuNet at half scale, issue 22); those from the refinement match what
   full-resolution detection gives, at a fraction of its cost.

Thread safety: a detector object is **not** thread-safe (``cv2.FaceDetectorYN`` keeps its input
size and buffers in the object; SCRFD mutates per-call state). Create one per worker thread
(``omnifer.pipeline.workers.WorkerResources`` does) and reuse it for every image: creation costs
~0.1 s, detection ~5-100 ms per photo.

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

import cv2
import numpy as np

from omnifer.errors import ModelFileError
from omnifer.faces.align import CROP_SIZE, align_face
from omnifer.faces.finder import FaceFinder, ScaleMode, round_up
from omnifer.faces.types import AlignedFace, Detection, DetectorBackend, FaceDetector
from omnifer.logs import quiet_opencv
from omnifer.models.modelfiles import model_path

__all__ = ["AlignedFace", "Detection", "DetectorBackend", "FaceDetector", "FaceFinder",
           "available_detectors", "create_detector", "detect_and_align", "face_id",
           "register_detector"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectorEntry:
    factory: Callable[..., DetectorBackend]
    description: str


_REGISTRY: dict[str, DetectorEntry] = {}


def register_detector(
    name: str, description: str = ""
) -> Callable[[Callable[..., DetectorBackend]], Callable[..., DetectorBackend]]:
    """Class/factory decorator: make a backend available to :func:`create_detector`.

    The factory is called with ``model_home``, ``score_threshold``, ``nms_threshold`` and
    ``top_k`` and returns a :class:`DetectorBackend`.
    """

    def wrap(factory: Callable[..., DetectorBackend]) -> Callable[..., DetectorBackend]:
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
    scale: ScaleMode = "auto",
    min_face_size: int = 32,
    refine_px: int | None = None,
    whole_frame: bool = True,
) -> FaceFinder:
    """A ready detector; raises ModelFileError (one clear line) when its weights are missing.

    ``model_home`` defaults to the environment's (``OMNIFER_HOME``). ``max_side`` bounds the
    work per image: a larger image is searched downscaled and the coordinates are mapped back.
    ``scale``, ``min_face_size``, ``refine_px`` and ``whole_frame``: see :class:`FaceFinder`.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown detector '{name}'; known: {', '.join(sorted(_REGISTRY))}")
    backend = _REGISTRY[name].factory(
        model_home=model_home,
        score_threshold=score_threshold,
        nms_threshold=nms_threshold,
        top_k=top_k,
    )
    return FaceFinder(backend, score_threshold=score_threshold, max_side=max_side, scale=scale,
                      min_face_size=min_face_size, refine_px=refine_px, whole_frame=whole_frame)


# -- backends ----------------------------------------------------------------------------
@register_detector("yunet", "YuNet (OpenCV Zoo, 2023mar; Apache-2.0/MIT): fast, permissive")
class YuNetDetector:
    """``cv2.FaceDetectorYN``; the input size follows each image. One object per thread."""

    name = "yunet"
    version = "yunet-2023mar"
    # Demo world (README, Face detection): candidates (score >= 0.2) found for 97 % of faces
    # 14-16 px wide; landmarks stop improving from faces ~150 px tall (median error vs the true
    # landmarks 14 % of the inter-ocular distance at 128 px, 11 % at 160 px), 20 % context.
    min_face_px = 14.0
    refine_px = 160
    refine_context = 1.2
    full_side = None

    def __init__(
        self,
        model_home: Path | None = None,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
        top_k: int = 5000,
    ) -> None:
        path = model_path("yunet", home=model_home)
        try:
            with quiet_opencv():  # OpenCV 5 warns that DNN targets are unsupported: noise
                self._net = cv2.FaceDetectorYN.create(
                    str(path), "", (320, 320), score_threshold, nms_threshold, top_k
                )
        except cv2.error as exc:
            raise ModelFileError(f"cannot load YuNet from {path}: {_first_line(exc)}") from None
        self._threshold = score_threshold

    def detect_raw(self, image_bgr: np.ndarray, score_threshold: float) -> list[Detection]:
        if score_threshold != self._threshold:
            self._net.setScoreThreshold(score_threshold)
            self._threshold = score_threshold
        self._net.setInputSize((image_bgr.shape[1], image_bgr.shape[0]))
        _, rows = self._net.detect(image_bgr)
        if rows is None:
            return []
        out = []
        for row in rows:
            x, y, w, h = (float(v) for v in row[:4])
            bbox = np.array([x, y, x + w, y + h], np.float32)
            landmarks = row[4:14].reshape(5, 2).astype(np.float32)
            out.append(Detection(bbox, landmarks, float(row[14])))
        return out


@register_detector(
    "scrfd",
    "SCRFD-500M (InsightFace buffalo_sc): InsightFace model licence, non-commercial research "
    "use only",
)
class ScrfdDetector:
    """InsightFace SCRFD-500M on onnxruntime (CPU), on a canvas the image's own size.

    Licence: the InsightFace pretrained weights (``det_500m.onnx``) are for non-commercial
    research use only; check before using its detections in a commercial product.
    The network takes any input whose sides are multiples of 32; the image is padded (black,
    right and bottom) to the next size of a short ladder, and insightface keeps one
    fixed-shape onnxruntime session per size (built once, ~0.1 s), so the number of sizes is
    bounded: past ``MAX_SHAPES`` the canvas becomes square.
    """

    name = "scrfd"
    version = "scrfd-500m"
    # Demo world: candidates for 97 % of faces from 20 px wide (SCRFD-500M sees small faces
    # less well than YuNet at the same input size); landmarks refined at 64 px are within a
    # point of full resolution's (7.2 % vs 6.5 % of the inter-ocular distance, 600 scenes);
    # a face must fill at most 40 % of the input (insightface issue #1518).
    min_face_px = 20.0
    refine_px = 64
    refine_context = 2.5
    full_side = 640  # "full" = what insightface does: the long side letterboxed to 640
    MAX_SHAPES = 24

    def __init__(
        self,
        model_home: Path | None = None,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
        top_k: int = 5000,
    ) -> None:
        from insightface.model_zoo import get_model

        path = model_path("scrfd", home=model_home)
        self.top_k = top_k
        self._shapes: set[tuple[int, int]] = set()
        try:
            self._model = get_model(str(path), providers=["CPUExecutionProvider"])
            self._model.prepare(ctx_id=-1, input_size=(640, 640), det_thresh=score_threshold,
                                nms_thresh=nms_threshold)
        except Exception as exc:  # onnxruntime raises several types; all mean "bad file"
            raise ModelFileError(f"cannot load SCRFD from {path}: {_first_line(exc)}") from None

    def _canvas(self, height: int, width: int) -> tuple[int, int]:
        shape = (_ladder(width), _ladder(height))
        if shape not in self._shapes and len(self._shapes) >= self.MAX_SHAPES:
            side = max(shape)
            shape = (side, side)
        self._shapes.add(shape)
        return shape

    def detect_raw(self, image_bgr: np.ndarray, score_threshold: float) -> list[Detection]:
        h, w = image_bgr.shape[:2]
        cw, ch = self._canvas(h, w)
        canvas = image_bgr
        if (cw, ch) != (w, h):
            canvas = cv2.copyMakeBorder(image_bgr, 0, ch - h, 0, cw - w, cv2.BORDER_CONSTANT,
                                        value=(0, 0, 0))
        boxes, kpss = self._model.detect(canvas, input_size=(cw, ch), max_num=self.top_k,
                                         det_thresh=score_threshold)
        out = []
        for i, row in enumerate(boxes):
            bbox = np.asarray(row[:4], np.float32)
            landmarks = np.asarray(kpss[i], np.float32).reshape(5, 2)
            out.append(Detection(bbox, landmarks, float(row[4])))
        return out


def _ladder(side: int) -> int:
    """``side`` rounded up to 32 px steps up to 320, 64 px steps up to 640, then 128 px."""
    for step, limit in ((32, 320), (64, 640)):
        if side <= limit:
            return round_up(side, step)
    return round_up(side, 128)


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
