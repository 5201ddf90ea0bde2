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
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import cv2
import numpy as np

from omnifer.errors import ModelFileError
from omnifer.faces.align import CROP_SIZE, align_face
from omnifer.logs import quiet_opencv
from omnifer.models.modelfiles import model_path

log = logging.getLogger(__name__)

ScaleMode = Literal["auto", "full"]

FRAME_SIDE = 64
"""Long side (px) of the image in the whole-frame pass."""
FRAME_CANVAS = 128
"""Side (px) of the whole-frame pass's square canvas (the image in its middle, black around)."""
FRAME_MIN_SHARE = 0.3
"""The whole-frame pass looks for faces at least this share of the image's shorter side (at a
thumbnail's resolution smaller ones are the main pass's, or guesses), and is skipped when the
main pass found one already."""
CANDIDATE_SCORE_FACTOR = 1 / 3
"""A shrunken pass keeps candidates down to this share of the score threshold (0.2 for the
default 0.6): small faces score lower, and a second look at face resolution decides. On the
demo world YuNet at 0.2 finds 97 % of 14-16 px faces (90 % at 0.6), with ~0.1 false
candidates per image, each costing one refinement."""
REFINE_MIN_IOU = 0.3
"""A refined face must overlap its candidate at least this much to replace it."""
LAST_LOOK_PX = 128
"""A candidate still below the score threshold after its refinement gets one more look with
the face this large, when that is larger than ``refine_px`` (SCRFD scores some faces of tight
crops too low at 64 px: 95.8 % of the test crops kept one face, 98.9 % with this). Only
borderline candidates pay for it."""


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
    finds ≥ 97 % of faces as candidates (score ≥ half the threshold); ``refine_px``, the face
    size (longer box side) from which its landmarks are as good as they get;
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


def _check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an H×W×3 uint8 BGR image, got {image.shape} {image.dtype}")


def _resize(image: np.ndarray, scale: float) -> tuple[np.ndarray, float, float]:
    """``image`` resized by ``scale`` and the x, y factors actually used (whole pixels make
    them differ slightly from ``scale``).

    Shrinking is anti-aliased: an area filter by the whole factor ``k = int(1 / scale)`` first
    (OpenCV's fast path, ~0.1 ms for 640×480; a fractional area filter costs ~1 ms), after
    cropping the at most ``k - 1`` pixels at the right and bottom that do not fill a k×k cell,
    then a bilinear step for the rest (a factor between ``k / (k + 1)`` and 1).
    """
    h, w = image.shape[:2]
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    if (tw, th) == (w, h):
        return image, 1.0, 1.0
    if scale >= 1:
        return cv2.resize(image, (tw, th), interpolation=cv2.INTER_LINEAR), tw / w, th / h
    k = int(1 / scale)
    cw, ch = w, h  # the part of the image the result covers
    src = image
    if k >= 2 and w >= 2 * k and h >= 2 * k:
        cw, ch = w - w % k, h - h % k
        tw, th = max(1, round(cw * scale)), max(1, round(ch * scale))
        src = cv2.resize(image[:ch, :cw], (cw // k, ch // k), interpolation=cv2.INTER_AREA)
    if src.shape[:2] != (th, tw):
        interp = cv2.INTER_LINEAR if src is not image else cv2.INTER_AREA
        src = cv2.resize(src, (tw, th), interpolation=interp)
    return src, tw / cw, th / ch


def _map_back(d: Detection, sx: float, sy: float, dx: float = 0.0, dy: float = 0.0) -> Detection:
    """A detection made on ``image * (sx, sy) + (dx, dy)`` in the pixels of ``image``."""
    off = np.array([dx, dy], np.float32)
    fac = np.array([sx, sy], np.float32)
    bbox = ((d.bbox.reshape(2, 2) - off) / fac).reshape(4).astype(np.float32)
    return Detection(bbox, ((d.landmarks5 - off) / fac).astype(np.float32), d.score)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, float(min(a[2], b[2]) - max(a[0], b[0])))
    iy = max(0.0, float(min(a[3], b[3]) - max(a[1], b[1])))
    inter = ix * iy
    union = float((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])) - inter
    return inter / union if union > 0 else 0.0


def _nms(dets: list[Detection], threshold: float) -> list[Detection]:
    """Greedy non-maximum suppression by score (ties: first listed wins)."""
    kept: list[Detection] = []
    for d in sorted(dets, key=lambda d: -d.score):
        if all(_iou(d.bbox, k.bbox) <= threshold for k in kept):
            kept.append(d)
    return kept


class FaceFinder:
    """Any backend, run at the resolution(s) the faces need (see the module docstring).

    ``scale``: ``"auto"`` searches at ``min(1, backend.min_face_px / min_face_size)`` of the
    image (also bounded by ``max_side``) and detects again, at ``refine_px`` (default: the
    backend's own), every face it saw smaller than that; ``"full"`` searches at full
    resolution up to ``max_side`` (SCRFD: long side 640), as before scale-aware detection,
    and refines only faces from the whole-frame pass. ``whole_frame``: also search a padded
    thumbnail of the whole image for faces that fill the frame. Every choice is in
    :attr:`version`, which the pipeline stores as each face's ``detector_version``.
    """

    def __init__(
        self,
        backend: DetectorBackend,
        score_threshold: float = 0.6,
        max_side: int = 1280,
        scale: ScaleMode = "auto",
        min_face_size: int = 32,
        refine_px: int | None = None,
        whole_frame: bool = True,
    ) -> None:
        if scale not in ("auto", "full"):
            raise ValueError(f"scale must be 'auto' or 'full', got {scale!r}")
        self.backend = backend
        self.name = backend.name
        self.score_threshold = score_threshold
        self.max_side = max_side
        self.scale = scale
        self.min_face_size = min_face_size
        self.refine_px = refine_px or backend.refine_px
        self.whole_frame = whole_frame
        parts = [backend.version]
        if scale == "auto":
            parts.append(f"scale=auto:{min_face_size}px@{backend.min_face_px:g}px"
                         f":refine{self.refine_px}px")
        else:
            parts.append(f"scale=full:{backend.full_side or max_side}px")
        if whole_frame:
            parts.append("frame")
        self.version = ";".join(parts)

    # -- the scale ------------------------------------------------------------------------
    def detection_scale(self, height: int, width: int) -> float:
        """Factor the main pass resizes an image of ``height`` × ``width`` by."""
        long_side = max(height, width)
        if self.scale == "full":
            if self.backend.full_side:
                return self.backend.full_side / long_side
            return min(1.0, self.max_side / long_side)
        return min(1.0, self.backend.min_face_px / self.min_face_size, self.max_side / long_side)

    # -- detection ------------------------------------------------------------------------
    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        """Faces of ``image_bgr`` (H×W×3 uint8 BGR), score ≥ the threshold, in its pixels.

        Raises ValueError for anything but an H×W×3 uint8 image.
        """
        _check_image(image_bgr)
        h, w = image_bgr.shape[:2]
        if min(h, w) < 2:
            return []
        s = self.detection_scale(h, w)
        coarse = s < 1 and self.scale == "auto"
        thr = self.score_threshold * (CANDIDATE_SCORE_FACTOR if coarse else 1.0)
        small, sx, sy = _resize(image_bgr, s)
        found = [_map_back(d, sx, sy) for d in self.backend.detect_raw(small, thr)]
        if coarse:
            found = [self._verify(image_bgr, d) if _side(d) * s < self.refine_px else d
                     for d in found]
        found = [d for d in found if d is not None and d.score >= self.score_threshold]
        short = min(h, w)
        if self.whole_frame and not any(d.size >= FRAME_MIN_SHARE * short for d in found):
            src, fx, fy = (small, sx, sy) if max(small.shape[:2]) >= FRAME_SIDE else (
                image_bgr, 1.0, 1.0)
            for d in self._whole_frame(src, fx, fy, short):
                if all(_iou(d.bbox, f.bbox) <= 0.3 for f in found):
                    v = self._verify(image_bgr, d)
                    if v is not None and v.score >= self.score_threshold:
                        found.append(v)
        return _nms(found, 0.4)

    def _whole_frame(self, small: np.ndarray, sx: float, sy: float,
                     short_side: int) -> list[Detection]:
        """Candidates from the image shrunk to ``FRAME_SIDE`` in a ``FRAME_CANVAS`` canvas.

        ``small`` is the original scaled by ``sx``, ``sy`` (the main pass's image when it is at
        least ``FRAME_SIDE``: shrinking it again is cheaper than shrinking the original).
        """
        thumb, tx, ty = _resize(small, FRAME_SIDE / max(small.shape[:2]))
        th, tw = thumb.shape[:2]
        side = FRAME_CANVAS
        ox, oy = (side - tw) // 2, (side - th) // 2
        canvas = _pad(thumb, oy, side - oy - th, ox, side - ox - tw)
        out = []
        for d in self.backend.detect_raw(canvas, self.score_threshold * CANDIDATE_SCORE_FACTOR):
            d = _map_back(d, sx * tx, sy * ty, ox, oy)
            if d.size >= FRAME_MIN_SHARE * short_side:
                out.append(d)
        return out

    def _verify(self, image: np.ndarray, cand: Detection) -> Detection | None:
        """``cand`` refined at ``refine_px``, and once more at ``LAST_LOOK_PX`` when it is
        still below the threshold (see :meth:`_refine`); None when it stays below."""
        out = self._refine(image, cand, self.refine_px)
        if (out is None or out.score < self.score_threshold) and LAST_LOOK_PX > self.refine_px:
            out = self._refine(image, cand, LAST_LOOK_PX)
        return out

    def _refine(self, image: np.ndarray, cand: Detection, px: int) -> Detection | None:
        """``cand`` detected again on a crop around it where it is ``px`` pixels (its longer
        box side; enlarged or shrunk), with the backend's ``refine_context`` face sizes of
        context (black beyond the image).

        Returns the box and landmarks found there with the better of the two scores (two
        looks at one face); ``cand`` itself when nothing there overlaps it, or None when,
        moreover, ``cand`` is below the score threshold.
        """
        h, w = image.shape[:2]
        side = _side(cand)
        r = px / side
        half = self.backend.refine_context * side / 2
        x1, y1, x2, y2 = (float(v) for v in cand.bbox)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        # the crop window in image pixels (whole pixels), then its part inside the image
        wx0, wy0 = math.floor(cx - half), math.floor(cy - half)
        wx1, wy1 = math.ceil(cx + half), math.ceil(cy + half)
        ix0, iy0, ix1, iy1 = max(wx0, 0), max(wy0, 0), min(wx1, w), min(wy1, h)
        if ix1 - ix0 < 2 or iy1 - iy0 < 2:
            return cand if cand.score >= self.score_threshold else None
        inside, sx, sy = _resize(image[iy0:iy1, ix0:ix1], r)
        # pad to the whole window (black beyond the image), then to a multiple of 32
        left, top = round((ix0 - wx0) * sx), round((iy0 - wy0) * sy)
        cw = _round_up(round((wx1 - wx0) * sx), 32)
        ch = _round_up(round((wy1 - wy0) * sy), 32)
        ph, pw = min(inside.shape[0], ch - top), min(inside.shape[1], cw - left)
        canvas = _pad(inside[:ph, :pw], top, ch - top - ph, left, cw - left - pw)
        best, best_iou = None, REFINE_MIN_IOU
        thr = self.score_threshold * CANDIDATE_SCORE_FACTOR
        for d in self.backend.detect_raw(canvas, thr):
            d = _map_back(d, sx, sy, left - ix0 * sx, top - iy0 * sy)
            overlap = _iou(d.bbox, cand.bbox)
            if overlap >= best_iou:
                best, best_iou = d, overlap
        if best is not None:
            return Detection(best.bbox, best.landmarks5, max(best.score, cand.score))
        return cand if cand.score >= self.score_threshold else None


BORDER = cv2.BORDER_CONSTANT


def _pad(image: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """``image`` with a black border of the given widths (px)."""
    return cv2.copyMakeBorder(image, top, bottom, left, right, BORDER, value=(0, 0, 0))


def _side(d: Detection) -> float:
    """Longer side of a detection's box (px), at least 1."""
    return max(float(d.bbox[2] - d.bbox[0]), float(d.bbox[3] - d.bbox[1]), 1.0)


def _round_up(value: int, step: int) -> int:
    return max(step, -(-value // step) * step)


# -- backends ----------------------------------------------------------------------------
@register_detector("yunet", "YuNet (OpenCV Zoo, 2023mar; Apache-2.0/MIT): fast, permissive")
class YuNetDetector:
    """``cv2.FaceDetectorYN``; the input size follows each image. One object per thread."""

    name = "yunet"
    version = "yunet-2023mar"
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
            return _round_up(side, step)
    return _round_up(side, 128)


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
