"""Planted answers for deduplication and decontamination: near-copies and look-alikes.

A crawl meets the same photo again re-encoded, resized, slightly cropped or brightened (re-uploads,
thumbnails, filters); it meets photos of the labeled test split; and it meets *other* photos of
the same person with another expression, which are not duplicates (they are exactly what
expression recognition learns from). This module makes all three from the demo world, seeded,
so that tests and ``benchmarks/closed_loop.py`` know which faces must be merged and which not:

* :func:`near_copy` – one photo → the encoded bytes of a transformed copy (:data:`COPY_KINDS`);
* :func:`same_identity_photos` – one drawn identity with several expressions, one photo each;
* :func:`render_labeled_photo` (re-exported from :mod:`omnifer.demo.scene`) – the photo a
  labeled (e.g. test-split) face was cut from.
"""

from __future__ import annotations

import cv2
import numpy as np

from omnifer.demo.face import draw_face
from omnifer.demo.identity import DrawnFace, Pose, sample_expression, sample_identity
from omnifer.demo.scene import (
    background,
    camera,
    encode_image,
    item_rng,
    render_labeled_photo,
    sample_light,
)

__all__ = ["COPY_KINDS", "near_copy", "render_labeled_photo", "same_identity_photos"]

COPY_KINDS: tuple[str, ...] = ("reencoded", "resized", "cropped", "brightened", "combined")
"""How :func:`near_copy` changes a photo: JPEG quality 45–65; scaled by 0.55–0.8 or 1.25–1.5;
3–7 % cut from each side; brighter and more contrasted (×1.1–1.25, +10–30); all of these."""


def _crop(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    top, bottom = (int(round(h * rng.uniform(0.03, 0.07))) for _ in range(2))
    left, right = (int(round(w * rng.uniform(0.03, 0.07))) for _ in range(2))
    return np.ascontiguousarray(img[top:h - bottom, left:w - right])


def _resize(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    f = rng.uniform(0.55, 0.8) if rng.random() < 0.6 else rng.uniform(1.25, 1.5)
    h, w = img.shape[:2]
    size = (max(16, int(round(w * f))), max(16, int(round(h * f))))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC)


def _brighten(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return cv2.convertScaleAbs(img, alpha=rng.uniform(1.1, 1.25), beta=rng.uniform(10, 30))


def near_copy(image: np.ndarray, kind: str, rng: np.random.Generator) -> bytes:
    """The encoded bytes (JPEG) of a near-copy of ``image`` (H×W×3 uint8 BGR).

    ``kind`` is one of :data:`COPY_KINDS`; the bytes always differ from the original's, so the
    image-level sha256 check cannot catch the copy and only face-level deduplication can.
    Raises ``ValueError`` on an unknown kind.
    """
    if kind not in COPY_KINDS:
        raise ValueError(f"unknown copy kind {kind!r}; known: {', '.join(COPY_KINDS)}")
    quality = 92
    img = image
    if kind in ("cropped", "combined"):
        img = _crop(img, rng)
    if kind in ("resized", "combined"):
        img = _resize(img, rng)
    if kind in ("brightened", "combined"):
        img = _brighten(img, rng)
    if kind in ("reencoded", "combined"):
        quality = int(rng.integers(45, 66))
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - cv2 only fails on empty images
        raise RuntimeError("cv2.imencode failed")
    return buf.tobytes()


def same_identity_photos(
    seed: int, index: int, labels: list[str], size: tuple[int, int] = (480, 400),
) -> list[tuple[bytes, DrawnFace]]:
    """One drawn identity, one JPEG photo per expression in ``labels`` (and its truth).

    The person, the lighting and the framing are the same in every photo (a burst of shots);
    the background, a little of the pose and the expression change. Faces are about 150 px
    wide, centred. These faces must *not* be merged by deduplication: they differ in exactly
    what the pseudo-labels are about.
    """
    rng = item_rng(seed, "scene", 1_000_000 + index)
    ident = sample_identity(rng)
    light = sample_light(rng)
    w, h = size
    base = Pose(cx=w / 2, cy=h * 0.45, scale=rng.uniform(150, 180), roll=rng.normal(0, 0.08),
                yaw=rng.normal(0, 0.1))
    out = []
    for label in labels:
        img = background(rng, w, h)
        pose = Pose(cx=base.cx + rng.normal(0, 8), cy=base.cy + rng.normal(0, 6),
                    scale=base.scale * rng.uniform(0.95, 1.05),
                    roll=base.roll + rng.normal(0, 0.03), yaw=base.yaw + rng.normal(0, 0.04))
        face = draw_face(img, rng, ident, sample_expression(rng, label), pose, label, light)
        out.append((encode_image(camera(img, rng), "jpg"), face))
    return out
