"""Image folders: ``ROOT/<class>/**/*`` (any class names, sorted or in the order given).

Every file counts whatever its name (the bytes decide the format, through
:func:`omnifer.imaging.decode.read_image_file`); system junk is never a class or an image
(:func:`omnifer.storage.ignore.ignored_name`: ``._name.png``, ``__MACOSX/``, ``@eaDir/``,
``Thumbs.db``, hidden entries, ...), the same rule as the crawler's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from omnifer.errors import DatasetError
from omnifer.labeled.base import Collector, LabeledData, OnError, read_image_why
from omnifer.storage.ignore import ignored_name

log = logging.getLogger(__name__)


def list_images(root: Path) -> list[Path]:
    """Every file under ``root`` (recursive) that is not system junk, whatever its name
    (the decoder decides by content), sorted by relative path.

    Junk folders (``@eaDir``, ``__MACOSX``, hidden ones) are not entered; a folder that
    cannot be read or an entry that vanishes is logged and left out, never raised.
    """
    root = Path(root)
    found: list[Path] = []

    def unreadable(exc: OSError) -> None:
        log.warning("%s: cannot list %s (%s); its files are left out", root,
                    os.fsencode(exc.filename or "").decode("utf-8", "backslashreplace"),
                    exc.strerror or exc)

    for folder, dirs, files in os.walk(root, onerror=unreadable):
        dirs[:] = sorted(d for d in dirs if ignored_name(d, folder=True) is None)
        for name in files:
            if ignored_name(name, folder=False) is not None:
                continue
            path = Path(folder, name)
            try:
                if not path.is_file():  # a dangling symlink, a FIFO, a socket
                    log.warning("%s: skipping %s: not a regular file", root,
                                _shown(path.relative_to(root)))
                    continue
            except OSError:
                continue
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _shown(path: Path) -> str:
    return str(path).encode("utf-8", "backslashreplace").decode()


def class_folders(root: Path) -> list[str]:
    """Sub-folder names of ``root`` that are classes: every folder but system junk, sorted.

    Raises DatasetError when ``root`` cannot be listed."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise DatasetError(f"cannot list image folder {root}: {exc.strerror or exc}") from None
    dirs = []
    for entry in entries:
        try:
            is_dir = entry.is_dir()
        except OSError:
            continue
        if is_dir and ignored_name(entry.name, folder=True) is None:
            dirs.append(entry.name)
    return dirs


def read_image_folder(
    root: Path | str,
    size: int | None = None,
    classes: Sequence[str] | None = None,
    on_error: OnError = "raise",
) -> LabeledData:
    """``ROOT/<class>/**``: class = sub-folder name; classes sorted unless given.

    With ``classes`` given, folders must be among them and indices follow that order (so a
    test folder lines up with a model's classes even when a class has no images). System
    junk (see the module docstring) is neither a class nor an image; any other file that
    does not decode follows ``on_error``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} not found")
    dirs = class_folders(root)
    if not dirs:
        raise DatasetError(f"{root} has no class sub-folders (expected ROOT/<class>/*.png)")
    if classes is None:
        classes = tuple(dirs)
    else:
        classes = tuple(classes)
        unknown = [d for d in dirs if d not in classes]
        if unknown:
            raise DatasetError(f"{root}: folders {unknown} are not among classes {list(classes)}")
    col = Collector(f"image folder {root}", size, on_error)
    for d in dirs:
        for path in list_images(root / d):
            img, why = read_image_why(path)
            col.add(img, classes.index(d), path.relative_to(root).as_posix(), why)
    return col.finish(classes, f"folder:{root}")
