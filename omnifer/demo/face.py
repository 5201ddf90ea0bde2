"""Drawing one demo face: head, eyes, brows, nose, mouth, hair, shading (cv2 + numpy).

:func:`draw_face` renders a face into a scene in place and returns its truth
(:class:`omnifer.demo.identity.DrawnFace`). It draws in layers, back to front, each a function
below; the random numbers are drawn in a fixed order (neckline, then gaze and lids), so the
same item RNG gives the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from omnifer.demo.drawing import SHIFT, bgr, blend, ellipse, fill, fixed, line, roi
from omnifer.demo.identity import (
    EYE_Y,
    MOUTH_Y,
    NOSE_Y,
    DrawnFace,
    Frame,
    Identity,
    Pose,
    head_outline,
    truth_box,
)


@dataclass(frozen=True)
class _Canvas:
    """What every layer draws with: the image, the frame, the identity and its colours."""

    img: np.ndarray
    f: Frame
    ident: Identity

    @property
    def s(self) -> float:
        return self.f.pose.scale

    @property
    def skin(self) -> np.ndarray:
        return self.ident.skin

    @property
    def dark(self) -> np.ndarray:
        return self.ident.skin * 0.55

    @property
    def hair(self) -> tuple[float, float, float]:
        return bgr(self.ident.hair)


def draw_face(img: np.ndarray, rng: np.random.Generator, ident: Identity, expr: np.ndarray,
              pose: Pose, label: str, light: np.ndarray) -> DrawnFace:
    """Render one face into ``img`` (BGR uint8, in place) and return its truth."""
    c = _Canvas(img, Frame(pose), ident)
    brow_raise, brow_inner, eye_open, jaw, smile, stretch, lip_raise, nose_wr = expr
    mw, corner_y = _mouth_corners(ident, smile, stretch)
    skin_parts = _draw_head(c, rng)
    _draw_sockets(c)
    _draw_cheeks(c, smile, lip_raise, mw, corner_y)
    eye_centres = _draw_eyes(c, rng, eye_open, smile, nose_wr)
    _draw_brows(c, brow_raise, brow_inner)
    nose_tip = _draw_nose(c, nose_wr, light)
    _draw_mouth(c, jaw, stretch, lip_raise, brow_inner, mw, corner_y)
    _draw_front_hair(c)
    _draw_glasses(c)
    _shade(img, c.f, skin_parts, light)
    return _truth(c, label, expr, eye_centres, nose_tip, mw, corner_y)


def _mouth_corners(ident: Identity, smile: float, stretch: float) -> tuple[float, float]:
    """Mouth half-width and the corners' height (canonical units) for an expression."""
    mw = ident.mouth_w * (1 + 0.2 * stretch + 0.1 * max(smile, 0))
    corner_y = MOUTH_Y - 0.07 * smile + 0.01 * max(stretch, 0)
    return mw, corner_y


def _draw_head(c: _Canvas, rng: np.random.Generator) -> list[np.ndarray]:
    """Body, neck, hair behind the head, ears and head; returns the skin outlines to shade."""
    img, f, ident, skin, hair = c.img, c.f, c.ident, c.skin, c.hair
    # Body and neck (drawn straight into the scene; fillPoly clips at the border).
    neckline = rng.uniform(0.78, 0.95)
    body = np.array([[-0.2, neckline], [-0.8, 1.0], [-1.25, 1.3], [-1.45, 6], [1.45, 6],
                     [1.25, 1.3], [0.8, 1.0], [0.2, neckline]])
    fill(img, f(body, 0.0), bgr(ident.clothes))
    neck = np.array([[-0.21, 0.3], [-0.22, 0.7], [-0.2, neckline + 0.04], [0.2, neckline + 0.04],
                     [0.22, 0.7], [0.21, 0.3]])
    fill(img, f(neck, 0.0), bgr(skin * 0.78))
    if ident.hair_style == "long":
        back = np.concatenate([head_outline(ident, 1.12, 40)[20:],
                               [[ident.half_width * 1.2, 0.3], [ident.half_width * 1.25, 0.95],
                                [-ident.half_width * 1.25, 0.95], [-ident.half_width * 1.2, 0.3]]])
        fill(img, f(back, 0.0), hair)
    elif ident.hair_style == "bun":
        fill(img, f(ellipse(0, -ident.top - 0.12, 0.16, 0.13), 0.0), hair)
    ears = []
    for side in (-1, 1):
        ear = ellipse(side * ident.half_width * 0.97, 0.03, 0.07, 0.13, 20)
        ears.append(ear)
        fill(img, f(ear, 0.0), bgr(skin * 0.9))
    head = head_outline(ident)
    fill(img, f(head, 0.0), bgr(skin))
    return [head, *ears, neck]


def _draw_sockets(c: _Canvas) -> None:
    img, f, ident, s, dark = c.img, c.f, c.ident, c.s, c.dark
    # Eye sockets: a soft darker region, the strongest cue a detector looks for.
    for side in (-1, 1):
        sock = ellipse(side * ident.eye_dx, EYE_Y - 0.02, ident.eye_w * 1.7, 0.085, 24)
        blend(img, f(sock), 0.22, lambda d, p=f(sock): d.fill(p, bgr(dark)), blur=0.05 * s)


def _draw_cheeks(c: _Canvas, smile: float, lip_raise: float, mw: float, corner_y: float) -> None:
    img, f, s, skin, dark = c.img, c.f, c.s, c.skin, c.dark
    # Cheeks raised (smile) and nasolabial folds.
    fold = float(np.clip(0.15 + 0.45 * max(smile, 0) + 0.5 * max(lip_raise, 0), 0, 0.8))
    for side in (-1, 1):
        pts = np.array([[side * 0.085, NOSE_Y + 0.0], [side * (0.12 + 0.02 * smile), 0.27],
                        [side * (mw + 0.035), corner_y + 0.05]])
        blend(img, f(pts), fold, lambda d, p=f(pts): d.line(p, bgr(dark), 0.012 * s),
               blur=0.006 * s)
    if smile > 0.2:
        for side in (-1, 1):
            cheek = ellipse(side * 0.24, 0.13, 0.09, 0.06, 20)
            blend(img, f(cheek), 0.25 * smile, lambda d, p=f(cheek): d.fill(
                p, bgr(skin * np.array([0.9, 0.9, 1.08]))), blur=0.03 * s)


def _draw_eyes(c: _Canvas, rng: np.random.Generator, eye_open: float, smile: float,
               nose_wr: float) -> list[np.ndarray]:
    """Eyes (almond, iris, lash line, crease); returns the eye centres (canonical units)."""
    img, f, ident, s, dark = c.img, c.f, c.ident, c.s, c.dark
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
        fill(img, pts, bgr(np.array([235, 240, 245]) * rng.uniform(0.85, 1.0)))
        box = roi(img, pts, 2)
        if box is not None:
            x1, y1, x2, y2 = box
            sub = img[y1:y2, x1:x2]
            layer = sub.copy()
            mask = np.zeros(sub.shape[:2], np.uint8)
            off = np.array([x1, y1])
            fill(mask, pts - off, (255,))
            ic = f(np.array([[ex + gaze[0], ey + gaze[1] - 0.1 * (up - low)]]))[0] - off
            fill(layer, ellipse(*ic, 0.045 * s, 0.045 * s, 24), bgr(ident.iris))
            fill(layer, ellipse(*ic, 0.019 * s, 0.019 * s, 16), (12, 12, 12))
            fill(layer, ellipse(*(ic + np.array([0.012, -0.012]) * s), 0.008 * s, 0.008 * s, 10),
                  (250, 250, 250))
            m = mask[..., None].astype(np.float32) / 255
            sub[:] = np.clip(sub * (1 - m) + layer * m + 0.5, 0, 255).astype(np.uint8)
        upper = almond[:14]
        line(img, f(upper), (20, 20, 25), 0.022 * s)
        blend(img, f(almond[13:]), 0.45,
               lambda d, p=f(np.concatenate([almond[13:], almond[:1]])): d.line(
                   p, bgr(dark), 0.01 * s))
        crease = np.stack([ex + 0.9 * ew * np.cos(t), ey - (up + 0.035) * np.sin(t) - 0.01], 1)
        blend(img, f(crease), 0.35, lambda d, p=f(crease): d.line(p, bgr(dark), 0.01 * s))
        eye_centres.append(np.array([ex, ey]))
    return eye_centres


def _draw_brows(c: _Canvas, brow_raise: float, brow_inner: float) -> None:
    img, f, ident, s, dark = c.img, c.f, c.ident, c.s, c.dark
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
        fill(img, f(brow), bgr(ident.hair * 0.8 + 8))
    if brow_inner < -0.25:  # frown lines
        for side in (-1, 1):
            pts = np.array([[side * 0.035, EYE_Y - 0.16], [side * 0.03, EYE_Y - 0.05]])
            blend(img, f(pts), min(0.7, -brow_inner * 0.6),
                   lambda d, p=f(pts): d.line(p, bgr(dark), 0.01 * s))
    if brow_raise > 0.3:  # forehead lines
        for j in range(3):
            y = EYE_Y - 0.27 - 0.055 * j - 0.05 * brow_raise
            t = np.linspace(-1, 1, 9)
            pts = np.stack([0.22 * t, y + 0.025 * t**2], 1)
            blend(img, f(pts), min(0.55, brow_raise * 0.45),
                   lambda d, p=f(pts): d.line(p, bgr(dark), 0.009 * s))


def _draw_nose(c: _Canvas, nose_wr: float, light: np.ndarray) -> np.ndarray:
    """Bridge shadow, nostrils, tip highlight, wrinkles; returns the nose tip (canonical)."""
    img, f, ident, s, skin, dark = c.img, c.f, c.ident, c.s, c.skin, c.dark
    # Nose: bridge shadow on the side away from the light, nostrils, tip highlight.
    nose_tip = np.array([0.0, NOSE_Y])
    nostril_y = NOSE_Y + 0.02 - 0.02 * max(nose_wr, 0)
    shadow_side = -1 if light[0] > 0 else 1
    bridge = np.array([[shadow_side * 0.03, EYE_Y + 0.0], [shadow_side * 0.04, NOSE_Y - 0.04],
                       [shadow_side * 0.06, nostril_y]])
    blend(img, f(bridge, 0.15), 0.4, lambda d, p=f(bridge, 0.15): d.line(
        p, bgr(dark), 0.022 * s), blur=0.01 * s)
    wing = np.array([[-ident.nose_w - 0.01, nostril_y - 0.03], [-ident.nose_w - 0.02, nostril_y],
                     [-ident.nose_w * 0.4, nostril_y + 0.025], [0, nostril_y + 0.02],
                     [ident.nose_w * 0.4, nostril_y + 0.025], [ident.nose_w + 0.02, nostril_y],
                     [ident.nose_w + 0.01, nostril_y - 0.03]])
    blend(img, f(wing, 0.3), 0.55, lambda d, p=f(wing, 0.3): d.line(
        p, bgr(dark), 0.012 * s), blur=0.004 * s)
    for side in (-1, 1):
        nost = ellipse(side * ident.nose_w * 0.55, nostril_y + 0.005, 0.018, 0.01, 12)
        fill(img, f(nost, 0.3), bgr(skin * 0.3))
    hl = ellipse(0.0, NOSE_Y - 0.02, 0.022, 0.028, 12)
    blend(img, f(hl, 0.42), 0.3, lambda d, p=f(hl, 0.42): d.fill(p, bgr(skin * 1.2 + 20)),
           blur=0.01 * s)
    if nose_wr > 0.3:
        for j in range(2):
            pts = np.array([[-0.04, EYE_Y + 0.06 + 0.03 * j], [0.0, EYE_Y + 0.05 + 0.03 * j],
                            [0.04, EYE_Y + 0.06 + 0.03 * j]])
            blend(img, f(pts, 0.3), min(0.6, nose_wr * 0.5),
                   lambda d, p=f(pts, 0.3): d.line(p, bgr(dark), 0.008 * s))
    return nose_tip


def _draw_mouth(c: _Canvas, jaw: float, stretch: float, lip_raise: float, brow_inner: float,
                mw: float, corner_y: float) -> None:
    """Lips, opening, teeth, lip highlight, and the beard (which follows the lower lip)."""
    img, f, ident, s, hair = c.img, c.f, c.ident, c.s, c.hair
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
    fill(img, f(lips), bgr(ident.lips))
    if gap > 0.012:
        mouth = np.concatenate([np.stack([x, upper_inner], 1),
                                np.stack([x, lower_inner], 1)[::-1]])
        fill(img, f(mouth), (35, 25, 60))
        teeth_h = min(gap * 0.45, 0.04)
        xt = x * 0.8
        qt = 1 - (xt / mw) ** 2
        ut = corner_y + (upper_c - corner_y) * qt
        teeth = np.concatenate([np.stack([xt, ut], 1), np.stack([xt, ut + teeth_h * qt], 1)[::-1]])
        fill(img, f(teeth), (228, 235, 238))
        if lip_raise > 0.4 or (brow_inner < -0.4 and gap > 0.02):
            lt = corner_y + (lower_c - corner_y) * qt
            low_teeth = np.concatenate([np.stack([xt, lt - teeth_h * 0.6 * qt], 1),
                                        np.stack([xt, lt], 1)[::-1]])
            fill(img, f(low_teeth), (215, 222, 226))
    else:
        line(img, f(np.stack([x, (upper_inner + lower_inner) / 2], 1)), bgr(ident.lips * 0.45),
              0.012 * s)
    lip_hl = np.stack([x[6:15] * 0.9, (lower_outer[6:15] + lower_inner[6:15]) / 2 + 0.005], 1)
    blend(img, f(lip_hl), 0.25, lambda d, p=f(lip_hl): d.line(
        p, bgr(ident.lips * 1.3 + 20), 0.012 * s), blur=0.005 * s)
    if ident.beard:
        beard = np.concatenate([head_outline(ident, 1.0, 40)[3:18],
                                np.stack([x[::-1] * 1.2, lower_outer[::-1] + 0.02], 1)])
        blend(img, f(beard, 0.0), 0.75, lambda d, p=f(beard, 0.0): d.fill(p, hair))


def _draw_front_hair(c: _Canvas) -> None:
    img, f, ident, hair = c.img, c.f, c.ident, c.hair
    # Hair in front of the forehead.
    if ident.hair_style != "bald":
        outline = head_outline(ident, 1.05, 64)
        cap = outline[outline[:, 1] < -0.07 - 0.05]
        cap = cap[np.argsort(np.arctan2(cap[:, 1] + 0.07, cap[:, 0]))]
        hl_y = ident.hairline + (0.1 if ident.hair_style == "fringe" else 0.0)
        xs = np.linspace(cap[-1, 0], cap[0, 0], 15)
        curve = hl_y + 0.25 * (np.abs(xs) / ident.half_width) ** 2.5
        if ident.hair_style == "fringe":
            curve = hl_y + 0.06 * (np.abs(xs) / ident.half_width) ** 2
        hair_poly = np.concatenate([cap, np.stack([xs, curve], 1)])
        fill(img, f(hair_poly, 0.0), hair)


def _draw_glasses(c: _Canvas) -> None:
    img, f, ident, s = c.img, c.f, c.ident, c.s
    if ident.glasses:
        for side in (-1, 1):
            rim = ellipse(side * ident.eye_dx, EYE_Y, ident.eye_w * 1.55, 0.075, 24)
            cv2.polylines(img, [fixed(f(rim))], True, (25, 25, 25), max(1, round(0.014 * s)),
                          cv2.LINE_AA, SHIFT)
        line(img, f(np.array([[-ident.eye_dx + ident.eye_w * 1.55, EYE_Y - 0.01],
                               [ident.eye_dx - ident.eye_w * 1.55, EYE_Y - 0.01]])),
              (25, 25, 25), 0.014 * s)


def _truth(c: _Canvas, label: str, expr: np.ndarray, eye_centres: list[np.ndarray],
           nose_tip: np.ndarray, mw: float, corner_y: float) -> DrawnFace:
    """The face's truth: five landmarks in image pixels, its box, label and expression."""
    f = c.f
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


def _shade(img: np.ndarray, f: Frame, parts: list[np.ndarray], light: np.ndarray) -> None:
    """Sphere-like Lambert shading over the head: gives the face its 3-D gradients."""
    pts = np.concatenate([f(p, 0.0) for p in parts])
    box = roi(img, pts, 2)
    if box is None:
        return
    x1, y1, x2, y2 = box
    mask = np.zeros((y2 - y1, x2 - x1), np.uint8)
    for p in parts:
        fill(mask, f(p, 0.0) - [x1, y1], (255,))
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
