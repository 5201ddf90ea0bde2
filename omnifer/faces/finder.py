"""Scale-aware face search over any registered detector backend (:class:`FaceFinder`).

Detect at the scale the faces need (from the smallest face the policy keeps and what the
detector can still see), refine landmarks on a crop around each face, and find the face of a
tight crop that fills the frame (a padded whole-frame pass). See :class:`FaceFinder`.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import cv2
import numpy as np

from omnifer.faces.types import Detection, DetectorBackend

log = logging.getLogger("omnifer.faces.detectors")

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
crops too low at 64 px: in a 760-crop trial 95.8 % of crops kept one face, 97.9 % with this).
Only borderline candidates pay for it."""


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
        if coarse:  # faces the policy drops anyway (too small) are not worth a second look
            found = [self._verify(image_bgr, d)
                     if box_side(d) * s < self.refine_px and d.size >= 0.75 * self.min_face_size
                     else d for d in found]
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
        canvas = pad_image(thumb, oy, side - oy - th, ox, side - ox - tw)
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
        side = box_side(cand)
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
        cw = round_up(round((wx1 - wx0) * sx), 32)
        ch = round_up(round((wy1 - wy0) * sy), 32)
        ph, pw = min(inside.shape[0], ch - top), min(inside.shape[1], cw - left)
        canvas = pad_image(inside[:ph, :pw], top, ch - top - ph, left, cw - left - pw)
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


def pad_image(image: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """``image`` with a black border of the given widths (px)."""
    return cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT,
                              value=(0, 0, 0))


def box_side(d: Detection) -> float:
    """Longer side of a detection's box (px), at least 1."""
    return max(float(d.bbox[2] - d.bbox[0]), float(d.bbox[3] - d.bbox[1]), 1.0)


def round_up(value: int, step: int) -> int:
    return max(step, -(-value // step) * step)
