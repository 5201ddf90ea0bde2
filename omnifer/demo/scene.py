"""Scenes of the demo world: backgrounds, lighting, occluders, the camera, and whole items.

Determinism: every item's RNG is derived from ``(seed, item kind, index)`` alone
(:func:`item_rng`), and images are encoded with fixed parameters.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from omnifer.demo.drawing import bgr, ellipse, fill, line
from omnifer.demo.face import draw_face
from omnifer.demo.identity import (
    BOX_CANONICAL,
    DrawnFace,
    Pose,
    sample_expression,
    sample_identity,
)
from omnifer.faces.align import CROP_SIZE, align_face

JPEG_QUALITY = 92
PNG_COMPRESSION = 3

UNLABELED_CLASS_WEIGHTS: dict[str, float] = {
    "neutral": 0.24, "happy": 0.24, "sad": 0.12, "surprise": 0.12,
    "fear": 0.06, "disgust": 0.08, "angry": 0.14,
}
"""Expressions in the unlabeled scenes are skewed like real-world data (many neutral/happy)."""

SCENE_SIZES: tuple[tuple[int, int, float], ...] = (
    (640, 480, 0.62), (480, 640, 0.1), (800, 600, 0.1), (512, 512, 0.1), (1024, 768, 0.08),
)
"""(width, height, probability) of unlabeled scene photos."""
FACE_BOX_SIDE = (70.0, 220.0)
"""Truth-box width range (pixels) of faces in scenes."""

_KIND_CODES = {"layout": 0, "train": 1, "test": 2, "scene": 3, "split": 4}


def item_rng(seed: int, kind: str, index: int) -> np.random.Generator:
    """The RNG of one item: a function of (seed, kind, index) only, never of worker order."""
    return np.random.default_rng(np.random.SeedSequence([seed, _KIND_CODES[kind], index]))


def sample_light(rng: np.random.Generator) -> np.ndarray:
    """(lx, ly, lz, ambient): a light mostly from the front, a bit above, left or right."""
    d = np.array([rng.uniform(-0.8, 0.8), rng.uniform(-0.6, 0.15), 1.0])
    d /= np.linalg.norm(d)
    return np.concatenate([d, [rng.uniform(0.3, 0.6)]])


def occlude(img: np.ndarray, rng: np.random.Generator, face: DrawnFace, scale: float) -> None:
    """A hand, a cup or a phone over part of the lower face or a cheek."""
    lm = face.landmarks5
    side = rng.integers(2)
    if rng.random() < 0.5:  # hand over the mouth corner / chin
        c = lm[3 + side] + rng.normal(0, 0.05, 2) * scale + np.array([0, 0.12 * scale])
        color = bgr(np.clip(rng.normal(1, 0.05) * img[int(np.clip(lm[2, 1], 0, img.shape[0] - 1)),
                                                      int(np.clip(lm[2, 0], 0, img.shape[1] - 1))]
                             .astype(np.float64), 0, 255))
        fill(img, ellipse(c[0], c[1], 0.2 * scale, 0.14 * scale), color)
        for j in range(4):
            fx = c[0] - 0.15 * scale + j * 0.1 * scale
            line(img, np.array([[fx, c[1]], [fx + 0.02 * scale, c[1] - 0.22 * scale]]),
                  color, 0.075 * scale)
    else:  # an object from the side
        w, h = rng.uniform(0.2, 0.32) * scale, rng.uniform(0.35, 0.6) * scale
        x0 = lm[3 + side, 0] + (0.2 * scale if side else -0.2 * scale - w)
        y0 = lm[2, 1] - rng.uniform(0, 0.2) * scale
        color = bgr(rng.uniform(20, 230, 3))
        fill(img, np.array([[x0, y0], [x0 + w, y0], [x0 + w, y0 + h], [x0, y0 + h]]), color)


# -- backgrounds and camera ---------------------------------------------------------------------
def background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Clutter: a smooth colour field, then rectangles, discs, lines and textured patches."""
    grid = rng.uniform(30, 230, (rng.integers(2, 5), rng.integers(2, 5), 3)).astype(np.float32)
    img = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(6, 22))):
        color = bgr(rng.uniform(10, 245, 3))
        kind = rng.random()
        x, y = rng.uniform(-0.1, 1.1) * w, rng.uniform(-0.1, 1.1) * h
        size = rng.uniform(0.04, 0.45) * min(w, h)
        if kind < 0.45:
            ang = rng.normal(0, 0.05) if rng.random() < 0.8 else rng.uniform(0, np.pi)
            c, s_ = math.cos(ang), math.sin(ang)
            ww, hh = size * rng.uniform(0.3, 2.5), size * rng.uniform(0.3, 2.5)
            corners = np.array([[-ww, -hh], [ww, -hh], [ww, hh], [-ww, hh]]) / 2
            fill(img, corners @ np.array([[c, s_], [-s_, c]]) + [x, y], color)
        elif kind < 0.65:
            fill(img, ellipse(x, y, size / 2, size / 2 * rng.uniform(0.5, 1.5), 32), color)
        elif kind < 0.85:
            x2, y2 = x + rng.normal(0, 0.4) * w, y + rng.normal(0, 0.4) * h
            line(img, np.array([[x, y], [x2, y2]]), color, rng.uniform(1, 8))
        else:
            x1, y1 = int(np.clip(x, 0, w - 2)), int(np.clip(y, 0, h - 2))
            x2, y2 = int(min(w, x1 + size)), int(min(h, y1 + size))
            patch = rng.normal(0, rng.uniform(10, 40), (y2 - y1, x2 - x1, 1))
            img[y1:y2, x1:x2] = np.clip(img[y1:y2, x1:x2] + patch, 0, 255).astype(np.uint8)
    return img


def camera(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Illumination falloff, colour cast, focus blur and sensor noise."""
    h, w = img.shape[:2]
    gain = rng.uniform(0.65, 1.25, (2, 2, 1)) * rng.uniform(0.88, 1.12, 3)  # falloff × cast
    gain_map = cv2.resize(gain.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    out = cv2.multiply(img, gain_map, dtype=cv2.CV_32F)
    if rng.random() < 0.35:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.5, 1.6))
    sigma = rng.uniform(0, 7)
    if sigma > 1:
        # cv2's generator, seeded from the item's RNG: deterministic and ~5× faster than numpy.
        cv2.setRNGSeed(int(rng.integers(1, 2**31)))
        noise = np.empty_like(out)
        cv2.randn(noise, 0.0, sigma)
        out += noise
    out += 0.5
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def encode_image(img: np.ndarray, ext: str) -> bytes:
    if ext == "png":
        ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    else:
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:  # pragma: no cover - cv2 only fails on empty images
        raise RuntimeError("cv2.imencode failed")
    return buf.tobytes()


# -- items --------------------------------------------------------------------------------------
def render_labeled(seed: int, split: str, index: int, label: str) -> tuple[np.ndarray, DrawnFace]:
    """One labeled face: drawn in a small scene, aligned from its true landmarks (112×112)."""
    img, face = render_labeled_photo(seed, split, index, label)
    return align_face(img, face.landmarks5, size=CROP_SIZE), face


def render_labeled_photo(seed: int, split: str, index: int,
                         label: str) -> tuple[np.ndarray, DrawnFace]:
    """The 256×256 photo (BGR) a labeled face is cut from, and its truth (what a crawler would
    find if the labeled set's source photo were on the web: the decontamination tests)."""
    rng = item_rng(seed, split, index)
    side = 256
    img = background(rng, side, side)
    scale = rng.uniform(95, 140)
    pose = Pose(cx=side / 2 + rng.normal(0, 6), cy=side / 2 + rng.normal(0, 6), scale=scale,
                roll=rng.normal(0, 0.12), yaw=rng.normal(0, 0.16))
    face = draw_face(img, rng, sample_identity(rng), sample_expression(rng, label), pose, label,
                     sample_light(rng))
    if rng.random() < 0.05:
        occlude(img, rng, face, scale)
    return camera(img, rng), face


def place_faces(rng: np.random.Generator, w: int, h: int, n: int) -> list[Pose]:
    """Up to ``n`` non-overlapping face poses whose truth boxes lie inside the image."""
    poses: list[Pose] = []
    heads: list[tuple[float, float, float, float]] = []
    bodies: list[tuple[float, float, float, float]] = []
    bw = BOX_CANONICAL[2] - BOX_CANONICAL[0]
    lo, hi = FACE_BOX_SIDE
    for _ in range(n * 25):
        if len(poses) == n:
            break
        box_side = math.exp(rng.uniform(math.log(lo), math.log(min(hi, 0.6 * min(w, h)))))
        s = box_side / bw
        cx = rng.uniform(0.62 * s, w - 0.62 * s)
        cy = rng.uniform(0.65 * s, h - 0.85 * s)
        head = (cx - 0.75 * s, cy - 1.05 * s, cx + 0.75 * s, cy + 0.85 * s)
        body = (cx - 1.5 * s, cy + 0.75 * s, cx + 1.5 * s, float("inf"))

        def hit(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
            return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]

        if any(hit(head, o) for o in heads + bodies) or any(hit(body, o) for o in heads):
            continue
        heads.append(head)
        bodies.append(body)
        poses.append(Pose(cx=cx, cy=cy, scale=s, roll=rng.normal(0, 0.14),
                          yaw=rng.normal(0, 0.18)))
    return sorted(poses, key=lambda p: p.cy)


def render_scene(seed: int, index: int, with_faces: bool = True
                 ) -> tuple[np.ndarray, list[DrawnFace]]:
    """One unlabeled scene photo (BGR) and the truth of the faces in it."""
    rng = item_rng(seed, "scene", index)
    k = rng.choice(len(SCENE_SIZES), p=[p for _, _, p in SCENE_SIZES])
    w, h = SCENE_SIZES[k][:2]
    img = background(rng, w, h)
    faces: list[DrawnFace] = []
    if with_faces:
        n = int(rng.choice([1, 2, 3], p=[0.55, 0.3, 0.15]))
        labels = list(UNLABELED_CLASS_WEIGHTS)
        p = np.array(list(UNLABELED_CLASS_WEIGHTS.values()))
        for pose in place_faces(rng, w, h, n):
            label = labels[rng.choice(len(labels), p=p / p.sum())]
            face = draw_face(img, rng, sample_identity(rng), sample_expression(rng, label), pose,
                             label, sample_light(rng))
            if rng.random() < 0.07:
                occlude(img, rng, face, pose.scale)
            faces.append(face)
    return camera(img, rng), faces
