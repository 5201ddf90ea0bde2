"""Read a labeled dataset by format name (what the CLI and retraining use)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omnifer.errors import DatasetError
from omnifer.labeled.affectnet import AFFECTNET_CROP_SIZE, read_affectnet
from omnifer.labeled.base import LabeledData
from omnifer.labeled.ferplus import LabelMode, read_ferplus
from omnifer.labeled.folder import read_image_folder
from omnifer.labeled.rafdb import read_rafdb

FORMATS = ("rafdb", "ferplus", "affectnet", "folder")


def read_dataset(
    path: Path | str, fmt: str, split: str = "train", size: int | None = None,
    classes: Sequence[str] | None = None, label_mode: LabelMode = "majority",
    include_contempt: bool | None = None,
) -> LabeledData:
    """Read ``path`` in format ``fmt`` (one of :data:`FORMATS`).

    * ``rafdb``: the RAF-DB root. * ``ferplus``: a folder with ``fer2013.csv`` and
      ``fer2013new.csv``. * ``affectnet``: a CSV (images under its folder) or a folder with
      ``training.csv`` (split train) / ``validation.csv`` (other splits).
    * ``folder``: ``ROOT/<class>/…``, or ``ROOT/<split>/<class>/…`` when ``ROOT/<split>``
      exists.

    ``label_mode``: FERPlus's protocol (:data:`omnifer.labeled.ferplus.FERPLUS_MODES`; ignored
    by the other formats). ``include_contempt``: FERPlus / AffectNet contempt rows (8
    classes); None means "when ``classes`` holds contempt" (e.g. a model trained with it).
    Raises DatasetError for an unknown format (and whatever the reader raises).
    """
    path = Path(path)
    if include_contempt is None:
        include_contempt = classes is not None and "contempt" in classes
    if fmt == "rafdb":
        return read_rafdb(path, split, size=size)
    if fmt == "ferplus":
        folder = path.parent if path.is_file() else path
        return read_ferplus(folder / "fer2013.csv", folder / "fer2013new.csv", split,
                            include_contempt=include_contempt, label_mode=label_mode,
                            size=size)
    if fmt == "affectnet":
        if path.is_file():
            return read_affectnet(path, path.parent, include_contempt=include_contempt,
                                  size=size or AFFECTNET_CROP_SIZE)
        name = "training.csv" if split == "train" else "validation.csv"
        images = path / "Manually_Annotated_Images"
        return read_affectnet(path / name, images if images.is_dir() else path,
                              include_contempt=include_contempt,
                              size=size or AFFECTNET_CROP_SIZE)
    if fmt == "folder":
        root = path / split if (path / split).is_dir() else path
        return read_image_folder(root, size=size, classes=classes)
    raise DatasetError(f"unknown dataset format {fmt!r}; expected one of {', '.join(FORMATS)}")
