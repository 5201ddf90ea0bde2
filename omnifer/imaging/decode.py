"""Bytes → an H×W×3 uint8 BGR array, or a DecodeError whose status becomes the image row's.

Why Pillow is the decoder of record: ``Image.open`` reads only the header, so the pixel count
is checked *before* any pixel is decoded (a 50000×50000 PNG of a few bytes is refused without
allocating 7.5 GB), and it knows EXIF orientation, palettes, CMYK, 16-bit and animated files.
Only an allow-list of common photo formats is decoded: the rarer Pillow plugins add attack
surface and no faces. Every decoded image ends up 8-bit BGR (OpenCV's order) so detectors and
alignment see one layout.

The type is decided by the bytes (Pillow's own signature checks, then :func:`sniff` to name
what a file is when Pillow does not know it), never by the file name: ``IMG_0001.HEIC`` holding
a JPEG decodes as the JPEG it is, ``photo.jfif`` too. HEIC/HEIF decodes through the
``pillow-heif`` plugin (registered here when installed), AVIF through Pillow's own plugin
(Pillow >= 11.3 wheels); without them such a file is ``unsupported`` with the reason.

Metadata limits do not reject pixels: Pillow refuses a PNG whose text chunks decompress past
``PngImagePlugin.MAX_TEXT_CHUNK`` (1 MB) or add up past ``MAX_TEXT_MEMORY``, a guard against
zip bombs in *metadata*. Such a PNG is decoded again without its text/ICC chunks (they never
change a pixel), instead of raising Pillow's global limits for every reader in the process.
The pixel-count guard (``max_pixels``, checked from the header) is untouched.

This is the project's one decoder: ingest, ``omnifer score``/``train``/``evaluate``, the
labeled-data readers and ``omnifer distill`` all read through :func:`decode_image` or
:func:`read_image_file`, so a phone photo has the same upright pixels everywhere.

Status vocabulary (``DecodeError.status``):
``empty`` (no bytes), ``not_image`` (not an image format: text, video, PDF, ...),
``unsupported`` (an image format we do not decode, or a decoder this install lacks),
``too_large`` (more than ``max_pixels``), ``corrupt`` (truncated or broken data);
:func:`read_image_file` adds ``missing`` and ``unreadable`` (permissions, not a regular file).
"""

from __future__ import annotations

import io
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from omnifer.errors import DecodeError

DECODED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP", "TIFF", "HEIF",
                             "AVIF"})
"""Pillow format names we decode; MPO is the multi-picture JPEG many phones write, HEIF the
phones' HEIC (through pillow-heif)."""


def _register_heif() -> bool:
    """Register pillow-heif's HEIF/HEIC opener with Pillow once; False when not installed."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


HEIF_AVAILABLE = _register_heif()
try:
    from PIL import features as _features

    AVIF_AVAILABLE = bool(_features.check("avif"))
except Exception:  # an old Pillow without the feature name
    AVIF_AVAILABLE = False

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
    """Decode ``data`` (any supported format, decided by content) into upright BGR pixels.

    ``max_pixels``: the most width×height a header may claim (checked before decoding).
    Raises DecodeError(status, message) for every per-image problem (statuses: see the
    module docstring); never anything else for bad bytes.
    """
    if not data:
        raise DecodeError("empty", "zero bytes")
    try:
        return _decode(data, max_pixels)
    except DecodeError as exc:
        if exc.status != "corrupt" or not _metadata_limit(str(exc)) or not _is_png(data):
            raise
        stripped = _strip_png_metadata(data)
        if stripped == data:
            raise
        return _decode(stripped, max_pixels)


def read_image_file(path: str | os.PathLike[str], max_pixels: int = 40_000_000,
                    max_bytes: int = 200_000_000) -> DecodedImage:
    """Read and decode one image file (see :func:`decode_image`).

    Raises DecodeError with ``missing`` (no such file), ``unreadable`` (permissions, a folder,
    a FIFO or device: opened without blocking), ``too_large`` (more than ``max_bytes``) or any
    status of :func:`decode_image`.
    """
    path = Path(path)
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise DecodeError("unreadable", "not a regular file")
            if st.st_size > max_bytes:
                raise DecodeError("too_large", f"{st.st_size} bytes > max_bytes {max_bytes}")
            data = fh.read(max_bytes + 1)
    except FileNotFoundError:
        raise DecodeError("missing", "no such file") from None
    except OSError as exc:  # permissions, a folder, I/O errors
        raise DecodeError("unreadable", exc.strerror or str(exc)) from None
    if len(data) > max_bytes:
        raise DecodeError("too_large", f"more than max_bytes {max_bytes}")
    return decode_image(data, max_pixels=max_pixels)


def _decode(data: bytes, max_pixels: int) -> DecodedImage:
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
        status, what = sniff(data)
        raise DecodeError(status, what) from None
    except Image.DecompressionBombError as exc:
        # Pillow's own guard fires at 2× its MAX_IMAGE_PIXELS (~179 M), far above ours.
        raise DecodeError("too_large", str(exc)) from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError) as exc:
        raise DecodeError("corrupt", f"unreadable header: {type(exc).__name__}: {exc}") from None


# -- what a file is, by its bytes ---------------------------------------------------------------
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm",
                          b"hevs", b"mif1", b"msf1", b"mif2"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})


def sniff(data: bytes) -> tuple[str, str]:
    """(status, message) for bytes Pillow did not recognise, named by their magic bytes.

    Image formats this install cannot decode are ``unsupported`` with what to install;
    anything else is ``not_image`` with what it looks like (video, PDF, archive, text).
    """
    head = data[:64]
    if head[4:8] == b"ftyp":  # ISO base media: HEIF/AVIF stills, MP4/QuickTime video
        brands = {head[8:12]} | {head[i : i + 4] for i in range(16, min(len(head), 40), 4)}
        if brands & _AVIF_BRANDS:
            return "unsupported", ("AVIF image: this Pillow has no AVIF decoder "
                                   "(Pillow >= 11.3 wheels have one)")
        if brands & _HEIF_BRANDS:
            return "unsupported", ("HEIF/HEIC image: no HEIF decoder installed "
                                   "(pip install pillow-heif)")
        return "not_image", f"a video or media file (ISO base media, brand {head[8:12]!r})"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            status = "unsupported" if what.endswith("image") else "not_image"
            return status, f"not a decodable image: {what}"
    if head[:2] == b"\xff\x0a" or head[4:12] == b"JXL \r\n\x87\n":
        return "unsupported", "not a decodable image: JPEG XL image"
    text = head.lstrip()
    if text.startswith((b"<?xml", b"<svg")) and b"<svg" in data[:4096]:
        return "unsupported", "not a decodable image: SVG (vector) image"
    return "not_image", "not a recognised image format"


_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "PDF document"),
    (b"PK\x03\x04", "ZIP archive"),
    (b"\x1f\x8b", "gzip archive"),
    (b"Rar!", "RAR archive"),
    (b"7z\xbc\xaf", "7-Zip archive"),
    (b"\x1aE\xdf\xa3", "Matroska/WebM video"),
    (b"OggS", "Ogg media"),
    (b"ID3", "MP3 audio"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000 image"),
    (b"\xff\x4f\xff\x51", "JPEG 2000 image"),
)


# -- metadata that Pillow limits -------------------------------------------------------------
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_METADATA_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt", b"iCCP"})


def _is_png(data: bytes) -> bool:
    return data.startswith(_PNG_SIGNATURE)


def _metadata_limit(message: str) -> bool:
    """Whether Pillow refused the file for its metadata limits, not for its pixels."""
    return "MAX_TEXT_CHUNK" in message or "MAX_TEXT_MEMORY" in message


def _strip_png_metadata(data: bytes) -> bytes:
    """``data`` without its text and ICC chunks (the rest byte for byte): what a PNG whose
    metadata exceeds Pillow's limits is decoded from. Stops copying at a malformed chunk."""
    out = [_PNG_SIGNATURE]
    pos = len(_PNG_SIGNATURE)
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            break
        if kind not in _PNG_METADATA_CHUNKS:
            out.append(data[pos:end])
        pos = end
        if kind == b"IEND":
            return b"".join(out)
    out.append(data[pos:])
    return b"".join(out)


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
