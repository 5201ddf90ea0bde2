"""FERPlus: FER2013 pixels + the FERPlus votes, row by row.

Vote columns ``neutral happiness surprise sadness anger disgust fear contempt unknown NF`` →
``neutral happy surprise sad angry disgust fear contempt``; rows whose majority vote is
``unknown`` or ``NF`` are dropped, and so are ``contempt`` rows unless ``include_contempt``
(then the classes are :data:`omnifer.labels.CLASSES_WITH_CONTEMPT`).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from omnifer.errors import DatasetError
from omnifer.labeled.base import Collector, LabeledData
from omnifer.labels import CLASSES, CLASSES_WITH_CONTEMPT

log = logging.getLogger(__name__)


FERPLUS_VOTE_COLUMNS: tuple[str, ...] = (
    "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
    "unknown", "NF",
)
FERPLUS_TO_CANONICAL: dict[str, str] = {
    "neutral": "neutral", "happiness": "happy", "surprise": "surprise", "sadness": "sad",
    "anger": "angry", "disgust": "disgust", "fear": "fear", "contempt": "contempt",
}
FERPLUS_SPLITS: dict[str, str] = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}

def read_ferplus(
    fer2013_csv: Path | str,
    fer2013new_csv: Path | str,
    split: str = "train",
    include_contempt: bool = False,
    label_mode: Literal["majority", "soft"] = "majority",
    size: int | None = None,
) -> LabeledData:
    """FERPlus: FER2013 pixels + the FERPlus votes, row by row.

    ``split``: ``train`` (Training), ``val`` (PublicTest), ``test`` (PrivateTest) or ``all``.
    ``label_mode="majority"`` gives the most-voted class (first in column order on ties);
    ``"soft"`` gives the vote distribution over the kept classes. Rows whose majority is
    ``unknown``/``NF``, rows with no image name in fer2013new, and (without
    ``include_contempt``) contempt-majority rows are dropped; contempt votes are then removed
    from the distribution before normalising.
    """
    old_path, new_path = Path(fer2013_csv), Path(fer2013new_csv)
    for p in (old_path, new_path):
        if not p.is_file():
            raise DatasetError(f"FERPlus file {p} not found")
    if split != "all" and split not in FERPLUS_SPLITS:
        raise DatasetError(f"FERPlus split must be one of train, val, test, all; got {split!r}")
    classes = CLASSES_WITH_CONTEMPT if include_contempt else CLASSES
    vote_names = [c for c in FERPLUS_VOTE_COLUMNS[:8] if include_contempt or c != "contempt"]
    to_class = np.array([classes.index(FERPLUS_TO_CANONICAL[c]) for c in vote_names])
    col = Collector(f"FERPlus {new_path}", size, "raise")
    dropped = 0
    with open(old_path, newline="") as f_old, open(new_path, newline="") as f_new:
        old_rows, new_rows = csv.DictReader(f_old), csv.DictReader(f_new)
        need_old, need_new = {"pixels", "Usage"}, {"Usage", *FERPLUS_VOTE_COLUMNS}
        if not need_old <= set(old_rows.fieldnames or ()):
            raise DatasetError(f"{old_path}: needs columns {sorted(need_old)}")
        if not need_new <= set(new_rows.fieldnames or ()):
            raise DatasetError(f"{new_path}: needs columns {sorted(need_new)}")
        for i, (old, new) in enumerate(zip(old_rows, new_rows, strict=False)):
            if split != "all" and old["Usage"] != FERPLUS_SPLITS[split]:
                continue
            if not (new.get("Image name") or "").strip():
                dropped += 1
                continue
            try:
                votes_all = np.array([float(new[c] or 0) for c in FERPLUS_VOTE_COLUMNS])
            except ValueError:
                raise DatasetError(f"{new_path}: row {i + 2} has non-numeric votes") from None
            top = FERPLUS_VOTE_COLUMNS[int(votes_all.argmax())]
            if votes_all.sum() <= 0 or top in ("unknown", "NF") or (
                top == "contempt" and not include_contempt
            ):
                dropped += 1
                continue
            votes = np.array([votes_all[FERPLUS_VOTE_COLUMNS.index(c)] for c in vote_names])
            pix = np.array(old["pixels"].split(), dtype=np.float32)
            if pix.size != 48 * 48:
                raise DatasetError(f"{old_path}: row {i + 2} has {pix.size} pixels, not 48×48")
            img = cv2.cvtColor(pix.reshape(48, 48).clip(0, 255).astype(np.uint8),
                               cv2.COLOR_GRAY2BGR)
            if label_mode == "soft":
                target: object = np.zeros(len(classes), np.float32)
                target[to_class] = votes / votes.sum()  # type: ignore[index]
            else:
                target = int(to_class[int(votes.argmax())])
            col.add(img, target, new["Image name"].strip() or f"row{i}")
    log.info("FERPlus %s: kept %d rows, dropped %d (unknown/NF/contempt/no image)", split,
             len(col.images), dropped)
    data = col.finish(classes, f"ferplus:{new_path}:{split}", soft=label_mode == "soft")
    data.meta["dropped"] = dropped
    return data
