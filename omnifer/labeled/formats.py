"""Read a labeled dataset by format name (what the CLI and retraining use)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omnifer.errors import DatasetError
from omnifer.labeled.affectnet import AFFECTNET_CROP_SIZE, read_affectnet
from omnifer.labeled.base import LabeledData
from omnifer.labeled.ferplus import read_ferplus
from omnifer.labeled.folder import read_image_folder
from omnifer.labeled.rafdb import read_rafdb

FORMATS = ("rafdb", "ferplus", "affectnet", "folder")


def read_dataset(
    path: Path | str, fmt: str, split: str = "train", size: int | None = None,
    classes: Sequence[str] | None = None,
) -> LabeledData:
    """Read ``path`` in format ``fmt`` (one of :data:`FORMATS`).

    * ``rafdb``: the RAF-DB root. * ``ferplus``: a folder with ``fer2013.csv`` and
      ``fer2013new.csv``. * ``affectnet``: a CSV (images under its folder) or a folder with
      ``training.csv`` (split train) / ``validation.csv`` (other splits).
    * ``folder``: ``ROOT/<class>/…``, or ``ROOT/<split>/<class>/…`` when ``ROOT/<split>``
      exists.
    """
    path = Path(path)
    if fmt == "rafdb":
        return read_rafdb(path, split, size=size)
    if fmt == "ferplus":
        folder = path.parent if path.is_file() else path
        return read_ferplus(folder / "fer2013.csv", folder / "fer2013new.csv", split, size=size)
    if fmt == "affectnet":
        if path.is_file():
            return read_affectnet(path, path.parent, size=size or AFFECTNET_CROP_SIZE)
        name = "training.csv" if split == "train" else "validation.csv"
        images = path / "Manually_Annotated_Images"
        return read_affectnet(path / name, images if images.is_dir() else path,
                              size=size or AFFECTNET_CROP_SIZE)
    if fmt == "folder":
        root = path / split if (path / split).is_dir() else path
        return read_image_folder(root, size=size, classes=classes)
    raise DatasetError(f"unknown dataset format {fmt!r}; expected one of {', '.join(FORMATS)}")
