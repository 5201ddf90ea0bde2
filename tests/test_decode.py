"""decode_image on every awkward case, each made in the test with Pillow/numpy/zlib."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from omnifer.errors import DecodeError
from omnifer.imaging.decode import decode_image


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims width×height (8-bit RGB); its pixel data is bogus."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def _status(data: bytes, **kw) -> str:
    with pytest.raises(DecodeError) as info:
        decode_image(data, **kw)
    assert str(info.value)  # every failure says why
    return info.value.status


def test_plain_jpeg_and_png_are_bgr() -> None:
    img = Image.new("RGB", (30, 20), (255, 0, 0))  # red
    for fmt in ("PNG", "JPEG"):
        out = decode_image(_save(img, fmt))
        assert out.image.shape == (20, 30, 3) and out.image.dtype == np.uint8
        assert (out.width, out.height, out.format) == (30, 20, fmt.lower())
        assert out.image[10, 15, 2] > 240 and out.image[10, 15, 0] < 15  # B, G, R order
        assert out.image.flags["C_CONTIGUOUS"] and not out.orientation_applied


def test_empty_text_and_truncated() -> None:
    assert _status(b"") == "empty"
    assert _status(b"this is not a picture, even if the file is called x.jpg") == "not_image"
    jpeg = _save(_noise(64, 64), "JPEG")
    png = _save(_noise(64, 64), "PNG")
    assert _status(jpeg[: len(jpeg) // 2]) == "corrupt"
    assert _status(png[: len(png) // 2]) == "corrupt"
    assert _status(png[:20]) == "corrupt"  # cut inside the header


def test_too_large_is_refused_from_the_header() -> None:
    started = time.perf_counter()
    assert _status(_png_claiming(50_000, 50_000)) == "too_large"  # beyond Pillow's own guard
    assert _status(_png_claiming(10_000, 5_000)) == "too_large"  # 50 MP > our 40 MP default
    assert time.perf_counter() - started < 0.5  # no pixel was decoded
    assert _status(_save(_noise(20, 10), "PNG"), max_pixels=199) == "too_large"
    assert decode_image(_save(_noise(20, 10), "PNG"), max_pixels=200).width == 20


def test_known_but_undecoded_format_is_unsupported() -> None:
    assert _status(_save(_noise(8, 8), "PPM")) == "unsupported"


def test_cmyk_jpeg() -> None:
    out = decode_image(_save(Image.new("CMYK", (16, 8), (255, 0, 0, 0)), "JPEG"))  # cyan
    assert out.image.shape == (8, 16, 3)
    b, g, r = out.image[4, 8].astype(int)
    assert b > 200 and g > 200 and r < 50


def test_16_bit_png_is_scaled_to_8_bit() -> None:
    arr = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    img = Image.fromarray(arr)
    assert img.mode == "I;16"
    out = decode_image(_save(img, "PNG"))
    assert out.image.shape == (1, 4, 3)
    assert out.image[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (out.image[..., 0] == out.image[..., 2]).all()


def test_grayscale_alpha_palette_and_one_pixel() -> None:
    gray = decode_image(_save(Image.new("L", (5, 4), 77), "PNG"))
    assert gray.image.shape == (4, 5, 3) and (gray.image == 77).all()

    rgba = Image.new("RGBA", (2, 1), (0, 0, 255, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 0))  # fully transparent → white
    out = decode_image(_save(rgba, "PNG")).image
    assert out[0, 0].tolist() == [255, 0, 0] and out[0, 1].tolist() == [255, 255, 255]

    pal = Image.new("P", (2, 1), 0)
    pal.putpalette([0, 255, 0, 9, 9, 9])
    pal.putpixel((1, 0), 1)
    out = decode_image(_save(pal, "PNG", transparency=1)).image
    assert out[0, 0].tolist() == [0, 255, 0] and out[0, 1].tolist() == [255, 255, 255]

    one = decode_image(_save(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"))
    assert one.image.shape == (1, 1, 3) and one.image[0, 0].tolist() == [3, 2, 1]


def test_animated_gif_gives_the_first_frame() -> None:
    frames = [Image.new("RGB", (6, 6), c) for c in [(255, 0, 0), (0, 0, 255)]]
    data = _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    out = decode_image(data)
    assert out.format == "gif" and out.image[3, 3].tolist() == [0, 0, 255]  # red in BGR


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 20))  # white stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    out = decode_image(_save(img, "JPEG", exif=exif.tobytes()))
    assert out.orientation_applied
    assert out.image.shape == (40, 20, 3) and (out.width, out.height) == (20, 40)
    assert out.image[:10].mean() > 200 and out.image[-10:].mean() < 50  # left → top

    plain = decode_image(_save(img, "JPEG"))
    assert plain.image.shape == (20, 40, 3) and not plain.orientation_applied


# -- issue 15: the bytes decide, metadata limits never cost the pixels --------------------------
def test_png_with_a_2mb_text_chunk_decodes_but_the_pixel_guard_stays() -> None:
    from omnifer.testing.badinput import png_with_text

    img = _noise(40, 30, seed=3)
    data = png_with_text(img, 2_000_000, seed=1)  # zTXt: ~2 MB compressed, 2 MB of text
    assert len(data) > 2_000_000
    with pytest.raises(ValueError, match="MAX_TEXT_CHUNK"):  # what Pillow alone says
        Image.open(io.BytesIO(data)).load()
    out = decode_image(data)
    assert out.format == "png"
    np.testing.assert_array_equal(out.image[:, :, ::-1], np.asarray(img))  # same pixels
    # Stripping metadata must not get a decompression bomb past the pixel-count guard.
    bomb = _png_claiming(50_000, 50_000)
    text = png_with_text(Image.new("RGB", (1, 1)), 2_000_000, seed=2)
    (length,) = struct.unpack(">I", text[33:37])  # the zTXt chunk right after IHDR
    chunk = text[33 : 45 + length]
    assert chunk[4:8] == b"zTXt"
    assert _status(bomb[:33] + chunk + bomb[33:]) == "too_large"


def test_heic_and_avif_decode_by_content_whatever_the_name() -> None:
    from omnifer.imaging.decode import HEIF_AVAILABLE, sniff

    img = Image.new("RGB", (48, 32), (200, 40, 20))
    for fmt, name in (("AVIF", "avif"), ("HEIF", "heif")):
        if fmt == "HEIF" and not HEIF_AVAILABLE:
            continue
        out = decode_image(_save(img, fmt, quality=95))
        assert out.format == name and (out.width, out.height) == (48, 32)
        assert np.abs(out.image[16, 24].astype(int) - [20, 40, 200]).max() < 12  # BGR
    # A decoder this install lacks, or not an image at all: the reason names what it is.
    heic_head = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"
    assert sniff(heic_head) == ("unsupported", "HEIF/HEIC image: no HEIF decoder installed "
                                "(pip install pillow-heif)")
    assert sniff(b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00qt  ")[0] == "not_image"
    assert "PDF" in sniff(b"%PDF-1.7\n")[1]
    assert _status(b"%PDF-1.7\n" + bytes(100)) == "not_image"
