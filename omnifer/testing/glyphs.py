"""A chiral, non-face image world for tests and benchmarks: glyphs and arrows.

The classes come in mirror pairs (``b``/``d``, ``arrow_left``/``arrow_right``): a horizontally
flipped image of one class *is* an image of its partner. That is the case horizontal-flip
augmentation and flip test-time augmentation get wrong, and what the model card's ``hflip`` /
``flip_tta`` properties are for (:mod:`omnifer.models.checkpoints`).

Each image is ``size``×``size`` BGR: a noisy, tinted background, a few random distractor
strokes, and the class's glyph (``cv2.putText``, one of several Hershey fonts) or arrow
(``cv2.arrowedLine``) at a random position, scale, thickness, colour and small rotation,
then Gaussian noise. Everything is seeded by ``(seed, split, index)``.

:func:`write_glyph_world` writes the layout the rest of omnifer reads::

    ROOT/labeled/train/<class>/NNNN.png   a few labeled images per class (``--format folder``)
    ROOT/labeled/test/<class>/NNNN.png    the held-out test split
    ROOT/unlabeled/NNN/NNNNN.png          the pool to mine (a source, ``faces: aligned``)
    ROOT/truth.json                       unlabeled file (relative path) → its class
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

CLASSES: tuple[str, ...] = ("arrow_left", "arrow_right", "b", "d")
"""Two mirror pairs: flipping an image swaps ``arrow_left``/``arrow_right`` and ``b``/``d``."""

MIRROR: dict[str, str] = {"arrow_left": "arrow_right", "arrow_right": "arrow_left",
                          "b": "d", "d": "b"}

_SPLITS = {"train": 1, "test": 2, "unlabeled": 3}
_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
          cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_PLAIN)


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLITS[split], index]))


def glyph_image(label: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """One ``size``×``size``×3 uint8 BGR image of class ``label`` (see the module docstring).

    Drawn at 4× and shrunk (anti-aliasing); raises ValueError for an unknown label.
    """
    if label not in CLASSES:
        raise ValueError(f"unknown glyph class {label!r}; classes: {CLASSES}")
    big = size * 4
    dark = rng.random() < 0.5  # dark ink on a light ground, or light on dark
    ground = rng.uniform(150, 235) if dark else rng.uniform(20, 105)
    tint = ground + rng.normal(0, 12, 3)
    img = np.clip(tint + rng.normal(0, 12, (big, big, 3)), 0, 255).astype(np.uint8)
    ink = tuple(float(v) for v in np.clip(255 - tint + rng.normal(0, 25, 3), 0, 255))
    for _ in range(int(rng.integers(0, 3))):  # distractor strokes
        p1, p2 = rng.integers(0, big, 2), rng.integers(0, big, 2)
        col = tuple(float(v) for v in rng.uniform(0, 255, 3))
        cv2.line(img, (int(p1[0]), int(p1[1])), (int(p2[0]), int(p2[1])), col,
                 int(rng.integers(2, 5)), cv2.LINE_AA)
    thick = int(rng.integers(7, 13))
    scale = rng.uniform(0.65, 0.9)
    cx, cy = big / 2 + rng.normal(0, big * 0.08, 2)
    if label.startswith("arrow"):
        half = scale * big * 0.38
        dy = rng.normal(0, big * 0.04)
        tail, head = (cx + half, cy + dy), (cx - half, cy - dy)
        if label == "arrow_right":
            tail, head = head, tail
        cv2.arrowedLine(img, (int(tail[0]), int(tail[1])), (int(head[0]), int(head[1])), ink,
                        thick, cv2.LINE_AA, tipLength=rng.uniform(0.3, 0.5))
    else:
        font = _FONTS[int(rng.integers(len(_FONTS)))]
        font_scale = scale * big / 22.0 / (1.6 if font == cv2.FONT_HERSHEY_PLAIN else 1.0)
        (w, h), base = cv2.getTextSize(label, font, font_scale, thick)
        org = (int(cx - w / 2), int(cy + (h - base) / 2))
        cv2.putText(img, label, org, font, font_scale, ink, thick, cv2.LINE_AA)
    rot = cv2.getRotationMatrix2D((big / 2, big / 2), float(rng.normal(0, 8)), 1.0)
    img = cv2.warpAffine(img, rot, (big, big), borderMode=cv2.BORDER_REFLECT)
    small = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    small += rng.normal(0, 6, small.shape)
    return np.clip(small, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class GlyphWorld:
    """Where :func:`write_glyph_world` put things, and the unlabeled pool's answers."""

    root: Path
    labeled: Path  # ROOT/labeled (train/ and test/ inside)
    unlabeled: Path
    truth: dict[str, str]  # unlabeled path relative to ``unlabeled`` → class


def write_glyph_world(root: Path | str, labeled_per_class: int = 8, test_per_class: int = 40,
                      unlabeled: int = 400, size: int = 32, seed: int = 0) -> GlyphWorld:
    """Write a glyph world under ``root`` (layout in the module docstring); classes balanced.

    Deterministic in ``seed``; rewriting an existing world gives the same files.
    """
    root = Path(root)
    labeled = root / "labeled"
    for split, per_class in (("train", labeled_per_class), ("test", test_per_class)):
        for c, label in enumerate(CLASSES):
            folder = labeled / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                index = i * len(CLASSES) + c
                cv2.imwrite(str(folder / f"{i:04d}.png"),
                            glyph_image(label, _rng(seed, split, index), size))
    pool = root / "unlabeled"
    truth: dict[str, str] = {}
    for i in range(unlabeled):
        label = CLASSES[i % len(CLASSES)]
        rel = f"{i // 200:03d}/{i:05d}.png"
        (pool / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(pool / rel), glyph_image(label, _rng(seed, "unlabeled", i), size))
        truth[rel] = label
    (root / "truth.json").write_text(json.dumps(truth, indent=0, sort_keys=True))
    return GlyphWorld(root, labeled, pool, truth)
