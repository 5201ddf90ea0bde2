"""The demo face world: seeded synthetic face photographs whose answers are known.

Why it exists: no labeled facial-expression data can be had offline, and the pipeline must be
graded against planted answers (DESIGN.md, habit 7). :func:`generate_world` writes

* ``labeled/``: a RAF-DB "basic" tree (``EmoLabel/list_patition_label.txt``,
  ``Image/aligned/train_00001_aligned.jpg``): faces rendered in a scene-like context and
  aligned with :func:`omnifer.align.align_face` from their *true* landmarks, so they share the
  geometry of the crops the pipeline later aligns from *detected* landmarks;
* ``unlabeled/``: nested folders of scene photos with zero to three faces, a few broken files,
  mostly JPEG and some PNG: what a crawl would find;
* ``truth/``: ``faces.parquet`` (box, landmarks, label of every face) and ``images.parquet``
  (what each scene file is), kept apart from ``unlabeled/`` so the pipeline cannot see them;
* ``world.json``: seed, counts, classes and generator version (a rerun can compare).

Faces are drawn procedurally (cv2 + numpy): head, ears, neck and body, hair, eyes with lids and
irises, brows, nose, lips and teeth, wrinkles, under sphere-like shading, so that a real CNN
detector (YuNet) finds them. An expression is a vector of eight action parameters (brow raise,
inner-brow raise, eye opening, jaw drop, smile, mouth stretch, upper-lip raise, nose wrinkle)
drawn from the class prototype *plus noise, a random intensity and sometimes a blend with a
neighbouring class*, so some faces are genuinely ambiguous (fear/surprise, sad/disgust/angry,
neutral/sad): a small model trained on 40 faces per class is clearly imperfect and more data
helps. Nuisances: identity, roll, yaw, scale, lighting, blur, noise, occlusion, clutter.

Determinism: every item's RNG is derived from ``(seed, item kind, index)`` alone, images are
encoded with fixed parameters and the Parquet/JSON files are written in index order, so the
same seed gives byte-identical files whatever the number of worker processes.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from omnifer.align import CROP_SIZE, align_face
from omnifer.labels import CANONICAL_TO_RAFDB, CLASSES
from omnifer.progress import track

log = logging.getLogger(__name__)

GENERATOR_VERSION = "omnifer-synth-1"
"""Bump when the rendering changes: the same seed then no longer gives the same bytes."""

JPEG_QUALITY = 92
PNG_COMPRESSION = 3
LABEL_FILE = "EmoLabel/list_patition_label.txt"  # sic: RAF-DB's own spelling
ALIGNED_DIR = "Image/aligned"

# -- expressions --------------------------------------------------------------------------------
ACTIONS: tuple[str, ...] = (
    "brow_raise",  # whole brow up (+) / down (-)
    "brow_inner",  # inner brow ends up (+, sad/fear) / pulled down and together (-, anger)
    "eye_open",  # upper lid raised (+) / narrowed (-)
    "jaw_drop",  # mouth opening
    "smile",  # mouth corners up (+) / down (-)
    "stretch",  # mouth corners pulled sideways (+) / pressed narrow (-)
    "lip_raise",  # upper lip raised (disgust)
    "nose_wrinkle",  # nose wrinkled, nostrils raised (disgust, some anger)
)
PROTOTYPES: dict[str, tuple[float, ...]] = {
    #            brow  inner  eye   jaw  smile  stretch lip  nose
    "neutral": (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    "happy": (0.1, 0.0, -0.35, 0.35, 1.0, 0.55, 0.15, 0.0),
    "sad": (-0.1, 0.85, -0.35, 0.0, -0.75, -0.1, 0.0, 0.0),
    "surprise": (1.0, 0.25, 1.0, 1.0, 0.0, -0.45, 0.1, 0.0),
    "fear": (0.6, 0.9, 0.8, 0.45, -0.3, 0.75, 0.0, 0.0),
    "disgust": (-0.45, -0.2, -0.5, 0.1, -0.45, 0.0, 0.95, 0.85),
    "angry": (-0.8, -0.95, -0.05, 0.05, -0.25, -0.35, 0.2, 0.25),
}
NEIGHBOURS: dict[str, tuple[str, ...]] = {
    "neutral": ("sad", "angry", "happy"),
    "happy": ("neutral", "surprise"),
    "sad": ("neutral", "disgust", "angry", "fear"),
    "surprise": ("fear", "happy"),
    "fear": ("surprise", "sad"),
    "disgust": ("angry", "sad"),
    "angry": ("disgust", "sad", "neutral"),
}
EXPRESSION_NOISE = 0.18
"""Per-action Gaussian noise around the (scaled) prototype."""
BLEND_PROBABILITY = 0.2
"""Share of faces whose expression is pulled towards a neighbouring class (up to half-way)."""
INTENSITY_RANGE = (0.55, 1.2)
"""Expression intensity: weak expressions drift towards neutral, as in real photographs."""

UNLABELED_CLASS_WEIGHTS: dict[str, float] = {
    "neutral": 0.24, "happy": 0.24, "sad": 0.12, "surprise": 0.12,
    "fear": 0.06, "disgust": 0.08, "angry": 0.14,
}
"""Expressions in the unlabeled scenes are skewed like real-world data (many neutral/happy)."""

# -- canonical face geometry (unit: face width cheek to cheek; y down; origin near the nose) ----
EYE_Y = -0.10
NOSE_Y = 0.13
MOUTH_Y = 0.36
BOX_CANONICAL = (-0.44, -0.51, 0.44, 0.61)
"""Truth box in canonical units (x1, y1, x2, y2): cheek to cheek, brow-ish to below the chin.

Calibrated against YuNet on rendered faces (see ``tests/test_synth.py``), so a detection of a
true face has IoU well above 0.5 with its truth box."""
BOX_ROTATED_SHARE = 0.5
"""How much the box grows with roll: 0 = a roll-free box around the face centre, 1 = the
axis-aligned hull of the rotated canonical box. Detectors draw something in between."""

SCENE_SIZES: tuple[tuple[int, int, float], ...] = (
    (640, 480, 0.62), (480, 640, 0.1), (800, 600, 0.1), (512, 512, 0.1), (1024, 768, 0.08),
)
"""(width, height, probability) of unlabeled scene photos."""
FACE_BOX_SIDE = (70.0, 220.0)
"""Truth-box width range (pixels) of faces in scenes."""
SCENES_PER_BATCH = 200
NO_FACE_SHARE = 0.05
BROKEN_SHARE = 0.005
PNG_SHARE = 0.1
BROKEN_KINDS = ("zero_byte", "truncated_jpeg", "text")

_KIND_CODES = {"layout": 0, "train": 1, "test": 2, "scene": 3, "split": 4}


def item_rng(seed: int, kind: str, index: int) -> np.random.Generator:
    """The RNG of one item: a function of (seed, kind, index) only, never of worker order."""
    return np.random.default_rng(np.random.SeedSequence([seed, _KIND_CODES[kind], index]))


# -- drawing helpers ----------------------------------------------------------------------------
_SHIFT = 4
_ONE = 1 << _SHIFT


def _fixed(pts: np.ndarray) -> np.ndarray:
    """Float pixel coordinates → cv2's sub-pixel fixed point (``shift=4``)."""
    return np.round(np.asarray(pts, np.float64) * _ONE).astype(np.int32).reshape(-1, 1, 2)


def _fill(img: np.ndarray, pts: np.ndarray, color: tuple[float, ...]) -> None:
    cv2.fillPoly(img, [_fixed(pts)], color, cv2.LINE_AA, _SHIFT)


def _line(img: np.ndarray, pts: np.ndarray, color: tuple[float, ...], width: float) -> None:
    cv2.polylines(img, [_fixed(pts)], False, color, max(1, round(width)), cv2.LINE_AA, _SHIFT)


def _roi(img: np.ndarray, pts: np.ndarray, pad: float) -> tuple[int, int, int, int] | None:
    h, w = img.shape[:2]
    x1 = max(0, int(math.floor(pts[:, 0].min() - pad)))
    y1 = max(0, int(math.floor(pts[:, 1].min() - pad)))
    x2 = min(w, int(math.ceil(pts[:, 0].max() + pad)) + 1)
    y2 = min(h, int(math.ceil(pts[:, 1].max() + pad)) + 1)
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def _blend(img: np.ndarray, pts: np.ndarray, alpha: float, draw: Callable[[np.ndarray], None],
           pad: float = 4.0, blur: float = 0.0) -> None:
    """Draw with ``draw`` on a copy of the region around ``pts`` and mix it in with ``alpha``."""
    box = _roi(img, pts, pad + 3 * blur)
    if box is None or alpha <= 0:
        return
    x1, y1, x2, y2 = box
    sub = img[y1:y2, x1:x2]
    layer = sub.copy()
    mask = np.zeros(sub.shape[:2], np.uint8)
    offset = np.array([x1, y1], np.float64)
    draw_layer = _Offset(layer, offset)
    draw(draw_layer)  # type: ignore[arg-type]
    mask[np.any(layer != sub, axis=2)] = 255
    weight = mask.astype(np.float32) / 255.0 * float(min(alpha, 1.0))
    if blur > 0:
        weight = cv2.GaussianBlur(weight, (0, 0), blur)
        layer = cv2.GaussianBlur(layer, (0, 0), blur * 0.5) if blur > 1 else layer
    weight = weight[..., None]
    sub[:] = np.clip(sub * (1 - weight) + layer * weight + 0.5, 0, 255).astype(np.uint8)


class _Offset:
    """A view of an image region that takes whole-image coordinates (for :func:`_blend`)."""

    def __init__(self, img: np.ndarray, offset: np.ndarray) -> None:
        self.img = img
        self.offset = offset

    def fill(self, pts: np.ndarray, color: tuple[float, ...]) -> None:
        _fill(self.img, pts - self.offset, color)

    def line(self, pts: np.ndarray, color: tuple[float, ...], width: float) -> None:
        _line(self.img, pts - self.offset, color, width)


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 28) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _mix(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    return np.asarray(a, np.float64) * (1 - t) + np.asarray(b, np.float64) * t


def _bgr(color: np.ndarray) -> tuple[float, float, float]:
    c = np.clip(color, 0, 255)
    return (float(c[0]), float(c[1]), float(c[2]))


# -- identity, expression, pose -----------------------------------------------------------------
_SKIN_RGB = np.array([(255, 226, 200), (241, 196, 168), (226, 174, 140), (200, 140, 105),
                      (165, 108, 76), (120, 78, 54), (86, 58, 42)], np.float64)
_HAIR_RGB = np.array([(22, 18, 16), (45, 30, 22), (85, 56, 34), (140, 100, 60), (205, 170, 110),
                      (150, 70, 35), (150, 150, 150), (225, 225, 220)], np.float64)
_HAIR_P = np.array([0.3, 0.22, 0.16, 0.09, 0.08, 0.05, 0.06, 0.04])
_IRIS_RGB = np.array([(60, 40, 25), (95, 65, 40), (70, 110, 150), (80, 120, 80), (40, 30, 25)],
                     np.float64)


@dataclass(frozen=True)
class Identity:
    """Who the face belongs to: shape and colours that do not change with expression."""

    skin: np.ndarray
    hair: np.ndarray
    iris: np.ndarray
    lips: np.ndarray
    clothes: np.ndarray
    half_width: float
    top: float
    chin: float
    jaw: float
    eye_dx: float
    eye_w: float
    brow_thick: float
    nose_w: float
    mouth_w: float
    hair_style: str
    hairline: float
    glasses: bool
    beard: bool


def sample_identity(rng: np.random.Generator) -> Identity:
    t = rng.uniform(0, len(_SKIN_RGB) - 1)
    i = min(int(t), len(_SKIN_RGB) - 2)
    skin = _mix(_SKIN_RGB[i], _SKIN_RGB[i + 1], t - i)[::-1] + rng.normal(0, 6, 3)
    hair = _HAIR_RGB[rng.choice(len(_HAIR_RGB), p=_HAIR_P)][::-1] * rng.uniform(0.85, 1.15)
    lips = skin * np.array([0.72, 0.66, 0.92]) * rng.uniform(0.85, 1.02)
    return Identity(
        skin=skin,
        hair=hair,
        iris=_IRIS_RGB[rng.integers(len(_IRIS_RGB))][::-1] * rng.uniform(0.8, 1.2),
        lips=lips,
        clothes=rng.uniform(20, 235, 3),
        half_width=rng.uniform(0.47, 0.53),
        top=rng.uniform(0.74, 0.84),
        chin=rng.uniform(0.6, 0.68),
        jaw=rng.uniform(0.12, 0.3),
        eye_dx=rng.uniform(0.185, 0.215),
        eye_w=rng.uniform(0.075, 0.092),
        brow_thick=rng.uniform(0.025, 0.045),
        nose_w=rng.uniform(0.04, 0.055),
        mouth_w=rng.uniform(0.15, 0.18),
        hair_style=str(rng.choice(["short", "long", "fringe", "bald", "bun"],
                                  p=[0.34, 0.3, 0.16, 0.1, 0.1])),
        hairline=rng.uniform(-0.5, -0.38),
        glasses=bool(rng.random() < 0.08),
        beard=bool(rng.random() < 0.07),
    )


def sample_expression(rng: np.random.Generator, label: str) -> np.ndarray:
    """Action parameters for ``label``: prototype × intensity, maybe blended, plus noise."""
    e = np.array(PROTOTYPES[label], np.float64) * rng.uniform(*INTENSITY_RANGE)
    if rng.random() < BLEND_PROBABILITY:
        other = NEIGHBOURS[label][rng.integers(len(NEIGHBOURS[label]))]
        e = _mix(e, np.array(PROTOTYPES[other]) * rng.uniform(*INTENSITY_RANGE),
                 rng.uniform(0.15, 0.5))
    return np.clip(e + rng.normal(0, EXPRESSION_NOISE, len(ACTIONS)), -1.3, 1.3)


@dataclass(frozen=True)
class Pose:
    """Where the face lands: centre (px), face width (px), roll and yaw (radians)."""

    cx: float
    cy: float
    scale: float
    roll: float
    yaw: float


class _Frame:
    """Canonical face coordinates → image pixels (yaw as depth parallax, then similarity)."""

    def __init__(self, pose: Pose) -> None:
        self.pose = pose
        c, s = math.cos(pose.roll), math.sin(pose.roll)
        self.rot = np.array([[c, -s], [s, c]]) * pose.scale
        self.centre = np.array([pose.cx, pose.cy])
        self.sin_yaw = math.sin(pose.yaw)
        self.cos_yaw = math.cos(pose.yaw)

    def __call__(self, pts: np.ndarray, depth: float | np.ndarray | None = None) -> np.ndarray:
        pts = np.asarray(pts, np.float64).reshape(-1, 2)
        u, v = pts[:, 0], pts[:, 1]
        if depth is None:
            depth = 0.42 * np.sqrt(np.clip(1 - (u / 0.5) ** 2 - ((v + 0.05) / 0.8) ** 2, 0, 1))
        u = u * self.cos_yaw + depth * self.sin_yaw
        return np.stack([u, v], axis=1) @ self.rot.T + self.centre

    def inverse(self, xy: np.ndarray) -> np.ndarray:
        """Image pixels → canonical coordinates, ignoring yaw (used for shading only)."""
        return (np.asarray(xy, np.float64) - self.centre) @ np.linalg.inv(self.rot).T


# -- the face -----------------------------------------------------------------------------------
@dataclass
class DrawnFace:
    """What the renderer knows about a face it drew: its truth."""

    label: str
    landmarks5: np.ndarray  # (5, 2) image px, template order
    box: np.ndarray  # (4,) x1 y1 x2 y2 image px
    expression: np.ndarray = field(repr=False)


def _head_outline(ident: Identity, grow: float = 1.0, n: int = 64) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    s = np.sin(t)
    centre = -0.07
    x = ident.half_width * np.cos(t) * (1 - ident.jaw * np.clip(s, 0, None) ** 1.6)
    y = np.where(s > 0, ident.chin - centre, ident.top) * s
    return np.stack([x * grow, centre + y * grow], axis=1)


def truth_box(frame: _Frame) -> np.ndarray:
    """The detector-style box of a face: :data:`BOX_CANONICAL` around the face, axis-aligned."""
    x1, y1, x2, y2 = BOX_CANONICAL
    corners = frame(np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]]), depth=0.0)
    centre = frame(np.array([[(x1 + x2) / 2, (y1 + y2) / 2]]), depth=0.0)[0]
    half = np.array([x2 - x1, y2 - y1]) * frame.pose.scale / 2
    hull_half = (corners.max(axis=0) - corners.min(axis=0)) / 2
    half = half + BOX_ROTATED_SHARE * (hull_half - half)
    return np.concatenate([centre - half, centre + half])


def draw_face(img: np.ndarray, rng: np.random.Generator, ident: Identity, expr: np.ndarray,
              pose: Pose, label: str, light: np.ndarray) -> DrawnFace:
    """Render one face into ``img`` (BGR uint8, in place) and return its truth."""
    f = _Frame(pose)
    s = pose.scale
    brow_raise, brow_inner, eye_open, jaw, smile, stretch, lip_raise, nose_wr = expr
    skin = ident.skin
    dark = skin * 0.55
    hair = _bgr(ident.hair)

    # Body and neck (drawn straight into the scene; fillPoly clips at the border).
    neckline = rng.uniform(0.78, 0.95)
    body = np.array([[-0.2, neckline], [-0.8, 1.0], [-1.25, 1.3], [-1.45, 6], [1.45, 6],
                     [1.25, 1.3], [0.8, 1.0], [0.2, neckline]])
    _fill(img, f(body, 0.0), _bgr(ident.clothes))
    neck = np.array([[-0.21, 0.3], [-0.22, 0.7], [-0.2, neckline + 0.04], [0.2, neckline + 0.04],
                     [0.22, 0.7], [0.21, 0.3]])
    _fill(img, f(neck, 0.0), _bgr(skin * 0.78))
    if ident.hair_style == "long":
        back = np.concatenate([_head_outline(ident, 1.12, 40)[20:],
                               [[ident.half_width * 1.2, 0.3], [ident.half_width * 1.25, 0.95],
                                [-ident.half_width * 1.25, 0.95], [-ident.half_width * 1.2, 0.3]]])
        _fill(img, f(back, 0.0), hair)
    elif ident.hair_style == "bun":
        _fill(img, f(_ellipse(0, -ident.top - 0.12, 0.16, 0.13), 0.0), hair)
    ears = []
    for side in (-1, 1):
        ear = _ellipse(side * ident.half_width * 0.97, 0.03, 0.07, 0.13, 20)
        ears.append(ear)
        _fill(img, f(ear, 0.0), _bgr(skin * 0.9))
    head = _head_outline(ident)
    _fill(img, f(head, 0.0), _bgr(skin))

    # Eye sockets: a soft darker region, the strongest cue a detector looks for.
    for side in (-1, 1):
        sock = _ellipse(side * ident.eye_dx, EYE_Y - 0.02, ident.eye_w * 1.7, 0.085, 24)
        _blend(img, f(sock), 0.22, lambda d, p=f(sock): d.fill(p, _bgr(dark)), blur=0.05 * s)

    # Cheeks raised (smile) and nasolabial folds.
    fold = float(np.clip(0.15 + 0.45 * max(smile, 0) + 0.5 * max(lip_raise, 0), 0, 0.8))
    mw = ident.mouth_w * (1 + 0.2 * stretch + 0.1 * max(smile, 0))
    corner_y = MOUTH_Y - 0.07 * smile + 0.01 * max(stretch, 0)
    for side in (-1, 1):
        pts = np.array([[side * 0.085, NOSE_Y + 0.0], [side * (0.12 + 0.02 * smile), 0.27],
                        [side * (mw + 0.035), corner_y + 0.05]])
        _blend(img, f(pts), fold, lambda d, p=f(pts): d.line(p, _bgr(dark), 0.012 * s),
               blur=0.006 * s)
    if smile > 0.2:
        for side in (-1, 1):
            cheek = _ellipse(side * 0.24, 0.13, 0.09, 0.06, 20)
            _blend(img, f(cheek), 0.25 * smile, lambda d, p=f(cheek): d.fill(
                p, _bgr(skin * np.array([0.9, 0.9, 1.08]))), blur=0.03 * s)

    # Eyes: white almond, iris clipped to it, lash line, lid crease.
    gaze = rng.normal(0, 0.012, 2)
    eye_centres = []
    for side in (-1, 1):
        ex, ey, ew = side * ident.eye_dx, EYE_Y, ident.eye_w
        up = ew * float(np.clip(0.5 + 0.45 * eye_open - 0.08 * max(smile, 0), 0.08, 1.05))
        low = ew * float(np.clip(0.42 + 0.12 * eye_open - 0.2 * max(smile, 0)
                                 - 0.15 * max(nose_wr, 0), 0.12, 0.7))
        t = np.linspace(0, np.pi, 14)
        almond = np.concatenate([
            np.stack([ex + ew * np.cos(t), ey - up * np.sin(t)], 1),
            np.stack([ex + ew * np.cos(t[::-1]), ey + low * np.sin(t[::-1])], 1)[1:-1]])
        pts = f(almond)
        _fill(img, pts, _bgr(np.array([235, 240, 245]) * rng.uniform(0.85, 1.0)))
        box = _roi(img, pts, 2)
        if box is not None:
            x1, y1, x2, y2 = box
            sub = img[y1:y2, x1:x2]
            layer = sub.copy()
            mask = np.zeros(sub.shape[:2], np.uint8)
            off = np.array([x1, y1])
            _fill(mask, pts - off, (255,))
            ic = f(np.array([[ex + gaze[0], ey + gaze[1] - 0.1 * (up - low)]]))[0] - off
            _fill(layer, _ellipse(*ic, 0.045 * s, 0.045 * s, 24), _bgr(ident.iris))
            _fill(layer, _ellipse(*ic, 0.019 * s, 0.019 * s, 16), (12, 12, 12))
            _fill(layer, _ellipse(*(ic + np.array([0.012, -0.012]) * s), 0.008 * s, 0.008 * s, 10),
                  (250, 250, 250))
            m = mask[..., None].astype(np.float32) / 255
            sub[:] = np.clip(sub * (1 - m) + layer * m + 0.5, 0, 255).astype(np.uint8)
        upper = almond[:14]
        _line(img, f(upper), (20, 20, 25), 0.022 * s)
        _blend(img, f(almond[13:]), 0.45,
               lambda d, p=f(np.concatenate([almond[13:], almond[:1]])): d.line(
                   p, _bgr(dark), 0.01 * s))
        crease = np.stack([ex + 0.9 * ew * np.cos(t), ey - (up + 0.035) * np.sin(t) - 0.01], 1)
        _blend(img, f(crease), 0.35, lambda d, p=f(crease): d.line(p, _bgr(dark), 0.01 * s))
        eye_centres.append(np.array([ex, ey]))

    # Brows.
    for side in (-1, 1):
        inner_x = side * (0.065 - 0.02 * max(-brow_inner, 0))
        k = np.linspace(0, 1, 10)
        x = inner_x + side * (0.27 + 0.02 * ident.eye_w / 0.08) * k
        base = EYE_Y - 0.145 - 0.1 * brow_raise
        y = base - 0.08 * brow_inner * (1 - k) ** 1.3 - 0.03 * np.sin(np.pi * k * 0.9)
        y = y + 0.02 * k
        th = ident.brow_thick * (1.1 - 0.55 * k)
        brow = np.concatenate([np.stack([x, y - th / 2], 1), np.stack([x, y + th / 2], 1)[::-1]])
        _fill(img, f(brow), _bgr(ident.hair * 0.8 + 8))
    if brow_inner < -0.25:  # frown lines
        for side in (-1, 1):
            pts = np.array([[side * 0.035, EYE_Y - 0.16], [side * 0.03, EYE_Y - 0.05]])
            _blend(img, f(pts), min(0.7, -brow_inner * 0.6),
                   lambda d, p=f(pts): d.line(p, _bgr(dark), 0.01 * s))
    if brow_raise > 0.3:  # forehead lines
        for j in range(3):
            y = EYE_Y - 0.27 - 0.055 * j - 0.05 * brow_raise
            t = np.linspace(-1, 1, 9)
            pts = np.stack([0.22 * t, y + 0.025 * t**2], 1)
            _blend(img, f(pts), min(0.55, brow_raise * 0.45),
                   lambda d, p=f(pts): d.line(p, _bgr(dark), 0.009 * s))

    # Nose: bridge shadow on the side away from the light, nostrils, tip highlight.
    nose_tip = np.array([0.0, NOSE_Y])
    nostril_y = NOSE_Y + 0.02 - 0.02 * max(nose_wr, 0)
    shadow_side = -1 if light[0] > 0 else 1
    bridge = np.array([[shadow_side * 0.03, EYE_Y + 0.0], [shadow_side * 0.04, NOSE_Y - 0.04],
                       [shadow_side * 0.06, nostril_y]])
    _blend(img, f(bridge, 0.15), 0.4, lambda d, p=f(bridge, 0.15): d.line(
        p, _bgr(dark), 0.022 * s), blur=0.01 * s)
    wing = np.array([[-ident.nose_w - 0.01, nostril_y - 0.03], [-ident.nose_w - 0.02, nostril_y],
                     [-ident.nose_w * 0.4, nostril_y + 0.025], [0, nostril_y + 0.02],
                     [ident.nose_w * 0.4, nostril_y + 0.025], [ident.nose_w + 0.02, nostril_y],
                     [ident.nose_w + 0.01, nostril_y - 0.03]])
    _blend(img, f(wing, 0.3), 0.55, lambda d, p=f(wing, 0.3): d.line(
        p, _bgr(dark), 0.012 * s), blur=0.004 * s)
    for side in (-1, 1):
        nost = _ellipse(side * ident.nose_w * 0.55, nostril_y + 0.005, 0.018, 0.01, 12)
        _fill(img, f(nost, 0.3), _bgr(skin * 0.3))
    hl = _ellipse(0.0, NOSE_Y - 0.02, 0.022, 0.028, 12)
    _blend(img, f(hl, 0.42), 0.3, lambda d, p=f(hl, 0.42): d.fill(p, _bgr(skin * 1.2 + 20)),
           blur=0.01 * s)
    if nose_wr > 0.3:
        for j in range(2):
            pts = np.array([[-0.04, EYE_Y + 0.06 + 0.03 * j], [0.0, EYE_Y + 0.05 + 0.03 * j],
                            [0.04, EYE_Y + 0.06 + 0.03 * j]])
            _blend(img, f(pts, 0.3), min(0.6, nose_wr * 0.5),
                   lambda d, p=f(pts, 0.3): d.line(p, _bgr(dark), 0.008 * s))

    # Mouth: lips, opening, teeth.
    gap = 0.16 * max(jaw, 0) + 0.025 * max(lip_raise, 0)
    lip_u = 0.03 * (1 - 0.4 * max(-stretch, 0))
    lip_l = 0.042 * (1 - 0.4 * max(-stretch, 0))
    centre_y = MOUTH_Y + 0.01
    upper_c = centre_y - gap * 0.3 - 0.035 * max(lip_raise, 0)
    lower_c = centre_y + gap * 0.7
    x = np.linspace(-mw, mw, 21)
    q = 1 - (x / mw) ** 2
    bow = 0.008 * np.exp(-((x / (0.05)) ** 2))
    upper_outer = corner_y + (upper_c - lip_u - corner_y) * q + bow
    upper_inner = corner_y + (upper_c - corner_y) * q
    lower_inner = corner_y + (lower_c - corner_y) * q
    lower_outer = corner_y + (lower_c + lip_l - corner_y) * q
    lips = np.concatenate([np.stack([x, upper_outer], 1), np.stack([x, lower_outer], 1)[::-1]])
    _fill(img, f(lips), _bgr(ident.lips))
    if gap > 0.012:
        mouth = np.concatenate([np.stack([x, upper_inner], 1),
                                np.stack([x, lower_inner], 1)[::-1]])
        _fill(img, f(mouth), (35, 25, 60))
        teeth_h = min(gap * 0.45, 0.04)
        xt = x * 0.8
        qt = 1 - (xt / mw) ** 2
        ut = corner_y + (upper_c - corner_y) * qt
        teeth = np.concatenate([np.stack([xt, ut], 1), np.stack([xt, ut + teeth_h * qt], 1)[::-1]])
        _fill(img, f(teeth), (228, 235, 238))
        if lip_raise > 0.4 or (brow_inner < -0.4 and gap > 0.02):
            lt = corner_y + (lower_c - corner_y) * qt
            low_teeth = np.concatenate([np.stack([xt, lt - teeth_h * 0.6 * qt], 1),
                                        np.stack([xt, lt], 1)[::-1]])
            _fill(img, f(low_teeth), (215, 222, 226))
    else:
        _line(img, f(np.stack([x, (upper_inner + lower_inner) / 2], 1)), _bgr(ident.lips * 0.45),
              0.012 * s)
    lip_hl = np.stack([x[6:15] * 0.9, (lower_outer[6:15] + lower_inner[6:15]) / 2 + 0.005], 1)
    _blend(img, f(lip_hl), 0.25, lambda d, p=f(lip_hl): d.line(
        p, _bgr(ident.lips * 1.3 + 20), 0.012 * s), blur=0.005 * s)
    if ident.beard:
        beard = np.concatenate([_head_outline(ident, 1.0, 40)[3:18],
                                np.stack([x[::-1] * 1.2, lower_outer[::-1] + 0.02], 1)])
        _blend(img, f(beard, 0.0), 0.75, lambda d, p=f(beard, 0.0): d.fill(p, hair))

    # Hair in front of the forehead.
    if ident.hair_style != "bald":
        outline = _head_outline(ident, 1.05, 64)
        cap = outline[outline[:, 1] < -0.07 - 0.05]
        cap = cap[np.argsort(np.arctan2(cap[:, 1] + 0.07, cap[:, 0]))]
        hl_y = ident.hairline + (0.1 if ident.hair_style == "fringe" else 0.0)
        xs = np.linspace(cap[-1, 0], cap[0, 0], 15)
        curve = hl_y + 0.25 * (np.abs(xs) / ident.half_width) ** 2.5
        if ident.hair_style == "fringe":
            curve = hl_y + 0.06 * (np.abs(xs) / ident.half_width) ** 2
        hair_poly = np.concatenate([cap, np.stack([xs, curve], 1)])
        _fill(img, f(hair_poly, 0.0), hair)

    if ident.glasses:
        for side in (-1, 1):
            rim = _ellipse(side * ident.eye_dx, EYE_Y, ident.eye_w * 1.55, 0.075, 24)
            cv2.polylines(img, [_fixed(f(rim))], True, (25, 25, 25), max(1, round(0.014 * s)),
                          cv2.LINE_AA, _SHIFT)
        _line(img, f(np.array([[-ident.eye_dx + ident.eye_w * 1.55, EYE_Y - 0.01],
                               [ident.eye_dx - ident.eye_w * 1.55, EYE_Y - 0.01]])),
              (25, 25, 25), 0.014 * s)

    _shade(img, f, [head, *ears, neck], light)

    # Landmarks: eye centres, nose tip (protrudes: more yaw parallax), mouth corners.
    lm = np.concatenate([
        f(np.array(eye_centres)),
        f(nose_tip[None], 0.6),
        f(np.array([[-mw, corner_y], [mw, corner_y]])),
    ])
    if lm[0, 0] > lm[1, 0]:  # roll beyond ±90° never happens, but keep the order honest
        lm[[0, 1]] = lm[[1, 0]]
        lm[[3, 4]] = lm[[4, 3]]
    return DrawnFace(label, lm.astype(np.float32), truth_box(f), expr.astype(np.float32))


def _shade(img: np.ndarray, f: _Frame, parts: list[np.ndarray], light: np.ndarray) -> None:
    """Sphere-like Lambert shading over the head: gives the face its 3-D gradients."""
    pts = np.concatenate([f(p, 0.0) for p in parts])
    box = _roi(img, pts, 2)
    if box is None:
        return
    x1, y1, x2, y2 = box
    mask = np.zeros((y2 - y1, x2 - x1), np.uint8)
    for p in parts:
        _fill(mask, f(p, 0.0) - [x1, y1], (255,))
    ys, xs = np.mgrid[y1:y2, x1:x2]
    uv = f.inverse(np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], 1))
    nx = uv[:, 0] / 0.55
    ny = (uv[:, 1] + 0.05) / 0.85
    nz = np.sqrt(np.clip(1 - nx**2 - ny**2, 0.02, 1))
    norm = np.sqrt(nx**2 + ny**2 + nz**2)
    lam = np.clip((nx * light[0] + ny * light[1] + nz * light[2]) / norm, 0, 1)
    shade = (light[3] + (1 - light[3]) * lam).reshape(mask.shape).astype(np.float32)
    m = mask.astype(np.float32) / 255
    factor = (1 - m + m * shade)[..., None]
    sub = img[y1:y2, x1:x2]
    sub[:] = np.clip(sub * factor + 0.5, 0, 255).astype(np.uint8)


def sample_light(rng: np.random.Generator) -> np.ndarray:
    """(lx, ly, lz, ambient): a light mostly from the front, a bit above, left or right."""
    d = np.array([rng.uniform(-0.8, 0.8), rng.uniform(-0.6, 0.15), 1.0])
    d /= np.linalg.norm(d)
    return np.concatenate([d, [rng.uniform(0.3, 0.6)]])


def _occlude(img: np.ndarray, rng: np.random.Generator, face: DrawnFace, scale: float) -> None:
    """A hand, a cup or a phone over part of the lower face or a cheek."""
    lm = face.landmarks5
    side = rng.integers(2)
    if rng.random() < 0.5:  # hand over the mouth corner / chin
        c = lm[3 + side] + rng.normal(0, 0.05, 2) * scale + np.array([0, 0.12 * scale])
        color = _bgr(np.clip(rng.normal(1, 0.05) * img[int(np.clip(lm[2, 1], 0, img.shape[0] - 1)),
                                                      int(np.clip(lm[2, 0], 0, img.shape[1] - 1))]
                             .astype(np.float64), 0, 255))
        _fill(img, _ellipse(c[0], c[1], 0.2 * scale, 0.14 * scale), color)
        for j in range(4):
            fx = c[0] - 0.15 * scale + j * 0.1 * scale
            _line(img, np.array([[fx, c[1]], [fx + 0.02 * scale, c[1] - 0.22 * scale]]),
                  color, 0.075 * scale)
    else:  # an object from the side
        w, h = rng.uniform(0.2, 0.32) * scale, rng.uniform(0.35, 0.6) * scale
        x0 = lm[3 + side, 0] + (0.2 * scale if side else -0.2 * scale - w)
        y0 = lm[2, 1] - rng.uniform(0, 0.2) * scale
        color = _bgr(rng.uniform(20, 230, 3))
        _fill(img, np.array([[x0, y0], [x0 + w, y0], [x0 + w, y0 + h], [x0, y0 + h]]), color)


# -- backgrounds and camera ---------------------------------------------------------------------
def background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Clutter: a smooth colour field, then rectangles, discs, lines and textured patches."""
    grid = rng.uniform(30, 230, (rng.integers(2, 5), rng.integers(2, 5), 3)).astype(np.float32)
    img = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(6, 22))):
        color = _bgr(rng.uniform(10, 245, 3))
        kind = rng.random()
        x, y = rng.uniform(-0.1, 1.1) * w, rng.uniform(-0.1, 1.1) * h
        size = rng.uniform(0.04, 0.45) * min(w, h)
        if kind < 0.45:
            ang = rng.normal(0, 0.05) if rng.random() < 0.8 else rng.uniform(0, np.pi)
            c, s_ = math.cos(ang), math.sin(ang)
            ww, hh = size * rng.uniform(0.3, 2.5), size * rng.uniform(0.3, 2.5)
            corners = np.array([[-ww, -hh], [ww, -hh], [ww, hh], [-ww, hh]]) / 2
            _fill(img, corners @ np.array([[c, s_], [-s_, c]]) + [x, y], color)
        elif kind < 0.65:
            _fill(img, _ellipse(x, y, size / 2, size / 2 * rng.uniform(0.5, 1.5), 32), color)
        elif kind < 0.85:
            x2, y2 = x + rng.normal(0, 0.4) * w, y + rng.normal(0, 0.4) * h
            _line(img, np.array([[x, y], [x2, y2]]), color, rng.uniform(1, 8))
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


def _encode(img: np.ndarray, ext: str) -> bytes:
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
    rng = item_rng(seed, split, index)
    side = 256
    img = background(rng, side, side)
    scale = rng.uniform(95, 140)
    pose = Pose(cx=side / 2 + rng.normal(0, 6), cy=side / 2 + rng.normal(0, 6), scale=scale,
                roll=rng.normal(0, 0.12), yaw=rng.normal(0, 0.16))
    face = draw_face(img, rng, sample_identity(rng), sample_expression(rng, label), pose, label,
                     sample_light(rng))
    if rng.random() < 0.05:
        _occlude(img, rng, face, scale)
    img = camera(img, rng)
    return align_face(img, face.landmarks5, size=CROP_SIZE), face


def _place(rng: np.random.Generator, w: int, h: int, n: int) -> list[Pose]:
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
        for pose in _place(rng, w, h, n):
            label = labels[rng.choice(len(labels), p=p / p.sum())]
            face = draw_face(img, rng, sample_identity(rng), sample_expression(rng, label), pose,
                             label, sample_light(rng))
            if rng.random() < 0.07:
                _occlude(img, rng, face, pose.scale)
            faces.append(face)
    return camera(img, rng), faces


@dataclass(frozen=True)
class _SceneSpec:
    index: int
    kind: str  # ok / no_face / broken
    broken: str | None
    relpath: str


def scene_relpath(seed: int, index: int, kind: str) -> str:
    """``batch-NN/cam-C/scene_IIIIII.ext``: nested like a camera dump; broken files are .jpg."""
    rng = item_rng(seed, "layout", index + 1)
    cam = int(rng.integers(1, 4))
    ext = "png" if kind != "broken" and rng.random() < PNG_SHARE else "jpg"
    return f"batch-{index // SCENES_PER_BATCH:02d}/cam-{cam}/scene_{index:06d}.{ext}"


def _plan_scenes(seed: int, n: int) -> list[_SceneSpec]:
    rng = item_rng(seed, "layout", 0)
    order = rng.permutation(n)
    n_broken = max(1, round(BROKEN_SHARE * n)) if n >= 10 else 0
    n_empty = max(1, round(NO_FACE_SHARE * n)) if n >= 10 else 0
    broken = {int(i): BROKEN_KINDS[j % len(BROKEN_KINDS)] for j, i in enumerate(order[:n_broken])}
    empty = {int(i) for i in order[n_broken:n_broken + n_empty]}
    specs = []
    for i in range(n):
        kind = "broken" if i in broken else "no_face" if i in empty else "ok"
        specs.append(_SceneSpec(i, kind, broken.get(i), scene_relpath(seed, i, kind)))
    return specs


def _broken_bytes(seed: int, spec: _SceneSpec) -> bytes:
    if spec.broken == "zero_byte":
        return b""
    if spec.broken == "text":
        return b"<html><body>404 Not Found</body></html>\n"
    img, _ = render_scene(seed, spec.index, with_faces=False)
    data = _encode(img, "jpg")
    sos = data.find(b"\xff\xda")  # start of scan: keep the headers, drop every pixel
    return data[: sos + 12]


def _scene_chunk(args: tuple[int, Path, list[_SceneSpec]]) -> list[dict[str, Any]]:
    seed, root, specs = args
    rows = []
    for spec in specs:
        path = root / spec.relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        faces: list[DrawnFace] = []
        if spec.kind == "broken":
            data = _broken_bytes(seed, spec)
        else:
            img, faces = render_scene(seed, spec.index, with_faces=spec.kind == "ok")
            data = _encode(img, spec.relpath.rsplit(".", 1)[1])
        path.write_bytes(data)
        kind = spec.kind if spec.kind != "ok" or faces else "no_face"
        rows.append({"relpath": spec.relpath, "kind": kind, "faces": [
            {"box": f.box.tolist(), "landmarks5": f.landmarks5.ravel().tolist(), "label": f.label}
            for f in faces]})
    return rows


def _labeled_chunk(args: tuple[int, Path, str, list[tuple[int, str]]]) -> list[int]:
    seed, root, split, items = args
    for index, label in items:
        crop, _ = render_labeled(seed, split, index, label)
        stem = f"{split}_{index:05d}" if split == "train" else f"{split}_{index:04d}"
        (root / ALIGNED_DIR / f"{stem}_aligned.jpg").write_bytes(_encode(crop, "jpg"))
    return [index for index, _ in items]


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already; cv2's own threads only contend


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


# -- the world ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorldSummary:
    """What :func:`generate_world` wrote and where."""

    root: Path
    labeled_dir: Path
    unlabeled_dir: Path
    truth_dir: Path
    seed: int
    train_images: int
    test_images: int
    scenes: int
    scenes_with_faces: int
    scenes_no_face: int
    broken_files: int
    faces: int
    faces_per_class: dict[str, int]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def _split_labels(seed: int, split: str, per_class: int) -> list[str]:
    labels = [c for c in CLASSES for _ in range(per_class)]
    rng = item_rng(seed, "split", 1 if split == "train" else 2)
    return [labels[i] for i in rng.permutation(len(labels))]


def generate_world(
    out: Path,
    seed: int = 7,
    labeled_per_class: int = 40,
    test_per_class: int = 30,
    unlabeled_images: int = 2000,
    workers: int | None = None,
) -> WorldSummary:
    """Write the demo world under ``out`` (replacing ``labeled/``, ``unlabeled/``, ``truth/``).

    ``labeled_per_class``/``test_per_class`` faces per class go to the RAF-DB tree;
    ``unlabeled_images`` scene files (about 5 % without a face, 0.5 % broken, at least one of
    each from 10 scenes on) go to ``unlabeled/``. ``workers`` processes render in parallel
    (default: one per CPU; 1 renders in this process); the bytes do not depend on it.
    """
    start = time.monotonic()
    out = Path(out)
    workers = max(1, workers or os.cpu_count() or 1)
    labeled, unlabeled, truth = out / "labeled", out / "unlabeled", out / "truth"
    for d in (labeled, unlabeled, truth):
        if d.exists():
            shutil.rmtree(d)
    (labeled / ALIGNED_DIR).mkdir(parents=True)
    (labeled / "EmoLabel").mkdir(parents=True)
    unlabeled.mkdir(parents=True)
    truth.mkdir(parents=True)

    train = _split_labels(seed, "train", labeled_per_class)
    test = _split_labels(seed, "test", test_per_class)
    lines = [f"train_{i:05d}.jpg {CANONICAL_TO_RAFDB[c]}" for i, c in enumerate(train, 1)]
    lines += [f"test_{i:04d}.jpg {CANONICAL_TO_RAFDB[c]}" for i, c in enumerate(test, 1)]
    (labeled / LABEL_FILE).write_text("\n".join(lines) + "\n")

    specs = _plan_scenes(seed, unlabeled_images)
    jobs: list[tuple[Callable, tuple, int]] = []
    for split, labels in (("train", train), ("test", test)):
        items = list(enumerate(labels, 1))
        jobs += [(_labeled_chunk, (seed, labeled, split, c), len(c)) for c in _chunks(items, 16)]
    jobs += [(_scene_chunk, (seed, unlabeled, c), len(c)) for c in _chunks(specs, 8)]

    scene_rows: list[dict[str, Any]] = []
    total = len(train) + len(test) + len(specs)

    def run_all() -> Iterator[tuple[int, Any]]:
        if workers == 1:
            for fn, args, n in jobs:
                yield n, fn(args)
            return
        # spawn, not fork: forking a process that runs threads (a Prefect server, torch)
        # can deadlock the children on a lock held at fork time.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
            futures = [(pool.submit(fn, args), n) for fn, args, n in jobs]
            for fut, n in futures:
                yield n, fut.result()

    done = 0
    for n, result in track(run_all(), "synth world", total=len(jobs), unit="chunks"):
        done += n
        if result and isinstance(result[0], dict):
            scene_rows.extend(result)
    assert done == total

    _write_truth(truth, scene_rows)
    faces = [f for r in scene_rows for f in r["faces"]]
    per_class = {c: sum(f["label"] == c for f in faces) for c in CLASSES}
    kinds = [r["kind"] for r in scene_rows]
    summary = WorldSummary(
        root=out, labeled_dir=labeled, unlabeled_dir=unlabeled, truth_dir=truth, seed=seed,
        train_images=len(train), test_images=len(test), scenes=len(specs),
        scenes_with_faces=kinds.count("ok"), scenes_no_face=kinds.count("no_face"),
        broken_files=kinds.count("broken"), faces=len(faces), faces_per_class=per_class,
        seconds=round(time.monotonic() - start, 2),
    )
    meta = {
        "generator_version": GENERATOR_VERSION, "seed": seed,
        "labeled_per_class": labeled_per_class, "test_per_class": test_per_class,
        "unlabeled_images": unlabeled_images, "classes": list(CLASSES),
        "counts": {k: v for k, v in summary.to_dict().items()
                   if k not in ("root", "labeled_dir", "unlabeled_dir", "truth_dir", "seed",
                                "seconds")},
        "unlabeled_class_weights": UNLABELED_CLASS_WEIGHTS,
        "truth_box": {"canonical": BOX_CANONICAL, "rotated_share": BOX_ROTATED_SHARE},
        "jpeg_quality": JPEG_QUALITY,
    }
    (out / "world.json").write_text(json.dumps(meta, indent=2) + "\n")
    log.info("synth world: %d train, %d test, %d scenes (%d faces) in %.1fs under %s",
             len(train), len(test), len(specs), len(faces), summary.seconds, out)
    return summary


FACES_SCHEMA = pa.schema([
    ("relpath", pa.string()), ("face_index", pa.int32()),
    ("x1", pa.float32()), ("y1", pa.float32()), ("x2", pa.float32()), ("y2", pa.float32()),
    ("landmarks5", pa.list_(pa.float32())), ("label", pa.string()),
])
IMAGES_SCHEMA = pa.schema([("relpath", pa.string()), ("n_faces", pa.int32()),
                           ("kind", pa.string())])


def _write_truth(truth: Path, rows: list[dict[str, Any]]) -> None:
    faces: dict[str, list] = {name: [] for name in FACES_SCHEMA.names}
    for r in rows:
        for i, f in enumerate(r["faces"]):
            faces["relpath"].append(r["relpath"])
            faces["face_index"].append(i)
            for k, v in zip(("x1", "y1", "x2", "y2"), f["box"], strict=True):
                faces[k].append(v)
            faces["landmarks5"].append(f["landmarks5"])
            faces["label"].append(f["label"])
    pq.write_table(pa.table(faces, schema=FACES_SCHEMA), truth / "faces.parquet")
    images = {"relpath": [r["relpath"] for r in rows],
              "n_faces": [len(r["faces"]) for r in rows], "kind": [r["kind"] for r in rows]}
    pq.write_table(pa.table(images, schema=IMAGES_SCHEMA), truth / "images.parquet")
