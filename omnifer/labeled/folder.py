"""Image folders: ``ROOT/<class>/*`` (any class names, sorted or in the order given)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omnifer.errors import DatasetError
from omnifer.imaging.transforms import is_image_name
from omnifer.labeled.base import Collector, LabeledData, OnError, read_image


def list_images(root: Path) -> list[Path]:
    """Image files under ``root`` (recursive), sorted by relative path."""
    return sorted(p for p in root.rglob("*") if p.is_file() and is_image_name(p.name))


def read_image_folder(
    root: Path | str,
    size: int | None = None,
    classes: Sequence[str] | None = None,
    on_error: OnError = "raise",
) -> LabeledData:
    """``ROOT/<class>/*.png|jpg|…`` (any of :data:`omnifer.imaging.transforms.IMAGE_EXTENSIONS`):
    class = sub-folder name; classes sorted unless given.

    With ``classes`` given, folders must be among them and indices follow that order (so a
    test folder lines up with a model's classes even when a class has no images).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} not found")
    dirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
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
            col.add(read_image(path), classes.index(d), path.relative_to(root).as_posix())
    return col.finish(classes, f"folder:{root}")
