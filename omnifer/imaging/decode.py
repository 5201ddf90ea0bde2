"""Bytes → an H×W×3 uint8 BGR array, or a DecodeError whose status becomes the image row's.

Why Pillow is the decoder of record: ``Image.open`` reads only the header, so the pixel count
is checked *before* any pixel is decoded (a 50000×50000 PNG of a few bytes is refused without
allocating 7.5 GB), and it knows EXIF orientation, palettes, CMYK, 16-bit and animated files.
Only an allow-list of common photo formats is decoded: the rarer Pillow plugins add attack
surface and no faces. Every decoded image ends up 8-bit BGR (OpenCV's order) so detectors and
alignment see one layout.

Status vocabulary (``DecodeError.status``):
``empty`` (no bytes), ``not_image`` (not a format Pillow knows), ``unsupported`` (a known
format we do not decode, or a decoder Pillow lacks), ``too_large`` (more than ``max_pixels``),
``corrupt`` (truncated or broken data).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from omnifer.errors import DecodeError

DECODED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP", "TIFF"})
"""Pillow format names we decode; MPO is the multi-picture JPEG many phones write."""

_EXIF_ORIENTATION = 0x0112
_WHITE = (255, 255, 255, 255)


@dataclass(frozen=True)
class DecodedImage:
    """``image`` H×W×3 uint8 BGR, upright; ``width``/``height`` are of that array."""

    image: np.ndarray
    width: int
    height: int
    format: str  # lower-case Pillow name: "jpeg", "png", "gif", ...
    orientation_applied: bool


def decode_image(data: bytes, max_pixels: int = 40_000_000) -> DecodedImage:
    """Decode ``data``; raises DecodeError(status, message) for every per-image problem."""
    if not data:
        raise DecodeError("empty", "zero bytes")
    img = _open(data)
    fmt = img.format or "unknown"
    if fmt not in DECODED_FORMATS:
        raise DecodeError("unsupported", f"format {fmt} is not decoded by omnifer")
    width, height = img.size
    if width * height > max_pixels:
        raise DecodeError(
            "too_large", f"{width}×{height} = {width * height} pixels > max_pixels {max_pixels}"
        )
    if width < 1 or height < 1:
        raise DecodeError("corrupt", f"header says {width}×{height}")
    try:
        img.load()  # first frame only for animated files
    except OSError as exc:
        status = "unsupported" if "decoder" in str(exc) else "corrupt"
        raise DecodeError(status, f"{fmt}: {exc}") from None
    except (ValueError, SyntaxError, EOFError, IndexError, TypeError) as exc:
        raise DecodeError("corrupt", f"{fmt}: {type(exc).__name__}: {exc}") from None
    img, rotated = _upright(img)
    try:
        bgr = _to_bgr(img)
    except (OSError, ValueError) as exc:
        raise DecodeError("unsupported", f"{fmt} mode {img.mode}: {exc}") from None
    return DecodedImage(bgr, bgr.shape[1], bgr.shape[0], fmt.lower(), rotated)


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise DecodeError("not_image", "not a recognised image format") from None
    except Image.DecompressionBombError as exc:
        # Pillow's own guard fires at 2× its MAX_IMAGE_PIXELS (~179 M), far above ours.
        raise DecodeError("too_large", str(exc)) from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError) as exc:
        raise DecodeError("corrupt", f"unreadable header: {type(exc).__name__}: {exc}") from None


def _upright(img: Image.Image) -> tuple[Image.Image, bool]:
    """Apply the EXIF orientation; a broken EXIF block is ignored rather than fatal."""
    try:
        orientation = int(img.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # malformed EXIF comes in many shapes; the pixels are still fine
        return img, False
    if orientation in (1, 0) or orientation > 8:
        return img, False
    try:
        return ImageOps.exif_transpose(img), True
    except Exception:
        return img, False


def _to_bgr(img: Image.Image) -> np.ndarray:
    """Any Pillow mode → H×W×3 uint8 BGR: alpha on white, 16-bit scaled to 8 bit."""
    mode = img.mode
    if mode.startswith("I") or mode == "F":  # 16-bit PNG ("I;16"), 32-bit int/float TIFF
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        gray = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba)
    rgb = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)  # 30× faster than a [..., ::-1] copy
