"""Who a demo face is and how it looks: identity, expression, pose, and its truth.

An expression is a vector of eight action parameters (:data:`ACTIONS`) drawn from the class
prototype plus noise, a random intensity and sometimes a blend with a neighbouring class, so
some faces are genuinely ambiguous. Geometry is in canonical face units (face width cheek to
cheek; y down; origin near the nose), mapped to pixels by :class:`Frame`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from omnifer.demo.drawing import mix

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
    skin = mix(_SKIN_RGB[i], _SKIN_RGB[i + 1], t - i)[::-1] + rng.normal(0, 6, 3)
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
        e = mix(e, np.array(PROTOTYPES[other]) * rng.uniform(*INTENSITY_RANGE),
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


class Frame:
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


@dataclass
class DrawnFace:
    """What the renderer knows about a face it drew: its truth."""

    label: str
    landmarks5: np.ndarray  # (5, 2) image px, template order
    box: np.ndarray  # (4,) x1 y1 x2 y2 image px
    expression: np.ndarray = field(repr=False)


def head_outline(ident: Identity, grow: float = 1.0, n: int = 64) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    s = np.sin(t)
    centre = -0.07
    x = ident.half_width * np.cos(t) * (1 - ident.jaw * np.clip(s, 0, None) ** 1.6)
    y = np.where(s > 0, ident.chin - centre, ident.top) * s
    return np.stack([x * grow, centre + y * grow], axis=1)


def truth_box(frame: Frame) -> np.ndarray:
    """The detector-style box of a face: :data:`BOX_CANONICAL` around the face, axis-aligned."""
    x1, y1, x2, y2 = BOX_CANONICAL
    corners = frame(np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]]), depth=0.0)
    centre = frame(np.array([[(x1 + x2) / 2, (y1 + y2) / 2]]), depth=0.0)[0]
    half = np.array([x2 - x1, y2 - y1]) * frame.pose.scale / 2
    hull_half = (corners.max(axis=0) - corners.min(axis=0)) / 2
    half = half + BOX_ROTATED_SHARE * (hull_half - half)
    return np.concatenate([centre - half, centre + half])
