"""Drawing primitives of the demo world: anti-aliased polygons and lines in sub-pixel fixed
point, and blending a drawn layer into a region (cv2 + numpy)."""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np

SHIFT = 4
ONE = 1 << SHIFT


def fixed(pts: np.ndarray) -> np.ndarray:
    """Float pixel coordinates → cv2's sub-pixel fixed point (``shift=4``)."""
    return np.round(np.asarray(pts, np.float64) * ONE).astype(np.int32).reshape(-1, 1, 2)


def fill(img: np.ndarray, pts: np.ndarray, color: tuple[float, ...]) -> None:
    cv2.fillPoly(img, [fixed(pts)], color, cv2.LINE_AA, SHIFT)


def line(img: np.ndarray, pts: np.ndarray, color: tuple[float, ...], width: float) -> None:
    cv2.polylines(img, [fixed(pts)], False, color, max(1, round(width)), cv2.LINE_AA, SHIFT)


def roi(img: np.ndarray, pts: np.ndarray, pad: float) -> tuple[int, int, int, int] | None:
    h, w = img.shape[:2]
    x1 = max(0, int(math.floor(pts[:, 0].min() - pad)))
    y1 = max(0, int(math.floor(pts[:, 1].min() - pad)))
    x2 = min(w, int(math.ceil(pts[:, 0].max() + pad)) + 1)
    y2 = min(h, int(math.ceil(pts[:, 1].max() + pad)) + 1)
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def blend(img: np.ndarray, pts: np.ndarray, alpha: float, draw: Callable[[np.ndarray], None],
           pad: float = 4.0, blur: float = 0.0) -> None:
    """Draw with ``draw`` on a copy of the region around ``pts`` and mix it in with ``alpha``."""
    box = roi(img, pts, pad + 3 * blur)
    if box is None or alpha <= 0:
        return
    x1, y1, x2, y2 = box
    sub = img[y1:y2, x1:x2]
    layer = sub.copy()
    mask = np.zeros(sub.shape[:2], np.uint8)
    offset = np.array([x1, y1], np.float64)
    draw_layer = Offset(layer, offset)
    draw(draw_layer)  # type: ignore[arg-type]
    mask[np.any(layer != sub, axis=2)] = 255
    weight = mask.astype(np.float32) / 255.0 * float(min(alpha, 1.0))
    if blur > 0:
        weight = cv2.GaussianBlur(weight, (0, 0), blur)
        layer = cv2.GaussianBlur(layer, (0, 0), blur * 0.5) if blur > 1 else layer
    weight = weight[..., None]
    sub[:] = np.clip(sub * (1 - weight) + layer * weight + 0.5, 0, 255).astype(np.uint8)


class Offset:
    """A view of an image region that takes whole-image coordinates (for :func:`blend`)."""

    def __init__(self, img: np.ndarray, offset: np.ndarray) -> None:
        self.img = img
        self.offset = offset

    def fill(self, pts: np.ndarray, color: tuple[float, ...]) -> None:
        fill(self.img, pts - self.offset, color)

    def line(self, pts: np.ndarray, color: tuple[float, ...], width: float) -> None:
        line(self.img, pts - self.offset, color, width)


def ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 28) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def mix(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    return np.asarray(a, np.float64) * (1 - t) + np.asarray(b, np.float64) * t


def bgr(color: np.ndarray) -> tuple[float, float, float]:
    c = np.clip(color, 0, 255)
    return (float(c[0]), float(c[1]), float(c[2]))
