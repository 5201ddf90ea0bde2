"""A corpus of hostile and awkward image files, made by code (no committed binaries).

:func:`write_corpus` writes one file per :class:`Case` under a folder and says what each
must become in ``images`` (status, and the face count for the ones that decode), or that it
must become *no* row (``status`` None: system junk the crawler ignores, an entry listing
skips, ``no_row`` says which). Some cases only exist *after* the plan is written (a file
that vanishes between listing and reading, a file that becomes unreadable): :func:`sabotage`
applies them, so a test or the benchmark does ``write_corpus → plan → sabotage → process``.

The faces are drawn by :mod:`omnifer.demo` (YuNet finds them); a 6×5 grid gives thirty.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

GOOD_STATUSES = ("ok", "no_face")


@dataclass(frozen=True)
class Case:
    """One corpus file. ``name`` is bytes so that non-UTF-8 names can be written; it may
    hold folders (``b"@eaDir/x.jpg"``)."""

    key: str  # short id for tables
    name: bytes  # file name under the corpus root
    status: str | None  # expected images.status; None: the file must have no row
    n_faces: int | None = None  # expected faces when the image decodes
    after_plan: str | None = None  # "vanish" | "unreadable" | None
    no_row: str | None = None  # why there is no row: "ignored" (junk) | "skipped: <reason>"
    link_to: bytes | None = None  # written as a symlink to this (relative) target


def drawn_faces(n: int, cols: int, cell: int, seed: int) -> np.ndarray:
    """BGR image with ``n`` upright drawn faces on a grid of ``cell``-pixel squares."""
    from omnifer import demo

    rows = (n + cols - 1) // cols
    rng = np.random.default_rng(seed)
    img = np.full((rows * cell, cols * cell, 3), 200, np.uint8)
    labels = list(demo.UNLABELED_CLASS_WEIGHTS)
    for i in range(n):
        r, c = divmod(i, cols)
        pose = demo.Pose(cx=c * cell + cell / 2, cy=r * cell + cell * 0.45, scale=cell * 0.5,
                          roll=0.0, yaw=0.0)
        label = labels[i % len(labels)]
        demo.draw_face(img, rng, demo.sample_identity(rng), demo.sample_expression(rng, label),
                        pose, label, demo.sample_light(rng))
    return img


def to_pil(bgr: np.ndarray) -> Image.Image:
    """A BGR array as an RGB Pillow image."""
    return Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def encode_pil(img: Image.Image, fmt: str, **kw: object) -> bytes:
    """``img`` encoded as ``fmt`` (Pillow's save options in ``kw``)."""
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A ~100-byte PNG whose header claims ``width``×``height`` (a decompression bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def png_with_text(img: Image.Image, text_bytes: int, seed: int) -> bytes:
    """``img`` as PNG with a zTXt chunk whose text inflates to ``text_bytes`` bytes of
    incompressible noise (so the chunk itself is that big too): a valid PNG that Pillow's
    1 MB metadata limit refuses."""
    png = encode_pil(img, "PNG")
    noise = np.random.default_rng(seed).integers(1, 256, text_bytes, dtype=np.uint8).tobytes()
    body = b"Comment\x00\x00" + zlib.compress(noise, 1)
    chunk = (struct.pack(">I", len(body)) + b"zTXt" + body
             + struct.pack(">I", zlib.crc32(b"zTXt" + body) & 0xFFFFFFFF))
    ihdr_end = 8 + 25  # signature + IHDR chunk: metadata goes right after the header
    return png[:ihdr_end] + chunk + png[ihdr_end:]


def _heif_available() -> bool:
    from omnifer.imaging.decode import HEIF_AVAILABLE

    return HEIF_AVAILABLE


def corpus_files(seed: int = 0) -> list[tuple[Case, bytes | None]]:
    """Every case with its bytes (the after-plan cases get a good face image; None: a FIFO
    or a symlink)."""
    one = drawn_faces(1, 1, 256, seed)  # 256×256, one face
    face = to_pil(one)
    noise = np.random.default_rng(seed).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    jpeg = encode_pil(face, "JPEG", quality=92)
    png = encode_pil(face, "PNG")

    rgba = face.convert("RGBA")
    rgba.putalpha(Image.new("L", face.size, 255))
    gray16 = Image.fromarray(np.asarray(face.convert("L"), np.uint16) * 257)
    frames = [face, Image.new("RGB", face.size, (0, 0, 255))]
    # Stored sideways with EXIF "rotate 90° clockwise to display": only an EXIF-aware
    # decoder sees an upright face (YuNet misses faces lying on their side).
    sideways = face.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    thirty = to_pil(drawn_faces(30, 6, 110, seed + 1))

    def variant(i: int, fmt: str = "JPEG") -> bytes:  # a face, distinct bytes (no 'duplicate')
        return encode_pil(to_pil(drawn_faces(1, 1, 256, seed + 10 + i)), fmt, quality=90)

    heif = _heif_available()
    thumb = encode_pil(face.resize((96, 96)), "JPEG", quality=80)  # what NAS/macOS junk holds

    return [
        (Case("good_jpeg", b"good.jpg", "ok", 1), jpeg),
        (Case("empty", b"empty.jpg", "empty"), b""),
        (Case("truncated_jpeg", b"truncated.jpg", "corrupt"), jpeg[: len(jpeg) // 2]),
        (Case("truncated_png", b"truncated.png", "corrupt"), png[: len(png) // 2]),
        (Case("text_as_jpg", b"notes.jpg", "not_image"),
         b"this is a text file that calls itself a JPEG\n" * 20),
        (Case("png_bomb_50000x50000", b"bomb.png", "too_large"), png_claiming(50_000, 50_000)),
        (Case("cmyk_jpeg", b"cmyk.jpg", "ok", 1), encode_pil(face.convert("CMYK"), "JPEG")),
        (Case("png_16bit", b"gray16.png", "ok", 1), encode_pil(gray16, "PNG")),
        (Case("grayscale", b"gray.png", "ok", 1), encode_pil(face.convert("L"), "PNG")),
        (Case("rgba_png", b"rgba.png", "ok", 1), encode_pil(rgba, "PNG")),
        (Case("one_pixel", b"pixel.png", "no_face", 0),
         encode_pil(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG")),
        (Case("animated_gif", b"anim.gif", "ok", 1),
         encode_pil(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80)),
        (Case("exif_rotated", b"rotated.jpg", "ok", 1),
         encode_pil(sideways, "JPEG", quality=92, exif=exif.tobytes())),
        (Case("no_face", b"noface.png", "no_face", 0), encode_pil(to_pil(noise), "PNG")),
        (Case("thirty_faces", b"crowd.jpg", "ok", 30), encode_pil(thirty, "JPEG", quality=92)),
        (Case("vanished", b"vanish.jpg", "missing", after_plan="vanish"), variant(0)),
        (Case("unreadable", b"locked.jpg", "unreadable", after_plan="unreadable"), variant(1)),
        (Case("non_utf8_name", b"caf\xe9-\xff\xfe.jpg", "ok", 1), variant(2)),
        (Case("long_name", b"n" * 240 + b".jpg", "ok", 1), variant(3)),
        (Case("fifo", b"pipe.jpg", "unreadable"), None),  # a named pipe: open() would block
        # The type is in the bytes, not the name (phones export JPEGs named .HEIC).
        (Case("heic_named_jpeg", b"IMG_0001.HEIC", "ok", 1), variant(4)),
        (Case("jfif", b"photo.jfif", "ok", 1), variant(5)),
        (Case("no_extension", b"IMG_0003", "ok", 1), variant(6)),
        (Case("avif", b"face.avif", "ok", 1), variant(7, "AVIF")),
        (Case("heic", b"IMG_0002.heic", "ok" if heif else "unsupported", 1 if heif else None),
         variant(8, "HEIF") if heif else b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"),
        (Case("video", b"clip.mov", "not_image"),
         b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00qt  " + bytes(2000)),
        # Metadata over Pillow's limits must not cost the pixels (2 MB compressed zTXt).
        (Case("png_2mb_text_chunk", b"metadata.png", "ok", 1),
         png_with_text(to_pil(drawn_faces(1, 1, 256, seed + 19)), 2_000_000, seed)),
        # System junk: never a row, never a duplicate face.
        (Case("appledouble", b"._good.jpg", None, no_row="ignored"), thumb),
        (Case("macosx_fork", b"__MACOSX/._good.jpg", None, no_row="ignored"), thumb),
        (Case("synology_thumb", b"@eaDir/good.jpg/SYNOFILE_THUMB_M.jpg", None, no_row="ignored"),
         thumb),
        (Case("ds_store", b".DS_Store", None, no_row="ignored"), b"\x00\x00\x00\x01Bud1" * 64),
        (Case("thumbs_db", b"Thumbs.db", None, no_row="ignored"), b"\xd0\xcf\x11\xe0" * 128),
        (Case("desktop_ini", b"desktop.ini", None, no_row="ignored"),
         b"[.ShellClassInfo]\r\nIconResource=x\r\n"),
        (Case("notebook_checkpoint", b".ipynb_checkpoints/good-checkpoint.jpg", None,
              no_row="ignored"), jpeg),
        (Case("hidden_file", b".hidden.jpg", None, no_row="ignored"), variant(9)),
        # An odd entry: logged and counted by the listing, not a row, not a crash.
        (Case("dangling_symlink", b"gone-link.jpg", None, no_row="skipped: dangling_symlink",
              link_to=b"no-such-target.jpg"), None),
    ]


def write_corpus(root: Path, seed: int = 0) -> list[Case]:
    """Write the corpus under ``root`` (created); returns its cases."""
    root.mkdir(parents=True, exist_ok=True)
    cases = []
    for case, data in corpus_files(seed):
        path = os.path.join(os.fsencode(root), case.name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if case.link_to is not None:
            os.symlink(case.link_to, path)
        elif data is None:
            os.mkfifo(path)
        else:
            with open(path, "wb") as fh:
                fh.write(data)
        cases.append(case)
    return cases


def sabotage(root: Path, cases: list[Case]) -> None:
    """Apply the after-plan cases: delete 'vanish' files, make 'unreadable' ones unreadable.

    Unreadable: ``chmod 000`` for a normal user. Root reads any file whatever its mode, so
    under root the file is swapped for a directory of the same name (open() fails with
    EISDIR, the same path through the reader as EACCES).
    """
    for case in cases:
        path = os.path.join(os.fsencode(root), case.name)
        if case.after_plan == "vanish":
            os.unlink(path)
        elif case.after_plan == "unreadable":
            if os.geteuid() == 0:
                os.unlink(path)
                os.mkdir(path)
            else:
                os.chmod(path, 0)


def case_uri(root: Path, case: Case) -> str:
    """The ``source_uri`` a local source gives this case's file."""
    return Path(os.fsdecode(os.path.join(os.fsencode(root), case.name))).as_uri()
