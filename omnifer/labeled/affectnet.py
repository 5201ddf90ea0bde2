"""AffectNet manual annotations (``training.csv`` / ``validation.csv``).

``expression``: ``0 Neutral 1 Happy 2 Sad 3 Surprise 4 Fear 5 Disgust 6 Anger 7 Contempt``;
codes 8 (None), 9 (Uncertain), 10 (Non-face) are not expressions and are dropped, contempt as
FERPlus (7 or 8 classes), counts per rule in ``meta``.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from pathlib import Path

from omnifer.errors import DatasetError
from omnifer.labeled.base import Collector, LabeledData, OnError, drop_counts_text, read_image
from omnifer.labels import CLASSES, CLASSES_WITH_CONTEMPT

log = logging.getLogger(__name__)


AFFECTNET_TO_CANONICAL: dict[int, str] = {
    0: "neutral", 1: "happy", 2: "sad", 3: "surprise", 4: "fear", 5: "disgust", 6: "angry",
    7: "contempt",
}
AFFECTNET_CROP_SIZE = 112  # = omnifer.faces.align.CROP_SIZE (not imported: insightface)

AFFECTNET_DROP_RULES: dict[int, str] = {8: "none", 9: "uncertain", 10: "no_face"}
"""AffectNet ``expression`` codes that are not expressions (the dataset's README: 8 None,
9 Uncertain, 10 No-Face): their rows are never training or test faces."""


def read_affectnet(
    csv_path: Path | str,
    images_root: Path | str,
    include_contempt: bool = False,
    size: int = AFFECTNET_CROP_SIZE,
    on_error: OnError = "raise",
) -> LabeledData:
    """AffectNet manual annotations (``training.csv`` / ``validation.csv``).

    Each row: ``subDirectory_filePath`` under ``images_root``, the face box ``face_x, face_y,
    face_width, face_height`` (cropped, clipped to the image) and ``expression``: ``0 Neutral
    1 Happy 2 Sad 3 Surprise 4 Fear 5 Disgust 6 Anger 7 Contempt`` are kept (contempt only
    with ``include_contempt``: the 8-class protocol; without, the 7-class one), codes 8–10
    are dropped (:data:`AFFECTNET_DROP_RULES`), any other code is ``invalid_code``. Crops are
    resized to ``size``. ``meta``: ``dropped`` and ``dropped_by_rule`` (``none``,
    ``uncertain``, ``no_face``, ``contempt``, ``invalid_code``). Raises DatasetError for a
    missing CSV or column, a non-numeric field, or (``on_error="raise"``) a bad image.
    """
    csv_path, images_root = Path(csv_path), Path(images_root)
    if not csv_path.is_file():
        raise DatasetError(f"AffectNet CSV {csv_path} not found")
    classes = CLASSES_WITH_CONTEMPT if include_contempt else CLASSES
    col = Collector(f"AffectNet {csv_path}", size, on_error)
    dropped: Counter[str] = Counter()
    need = {"subDirectory_filePath", "expression", "face_x", "face_y", "face_width",
            "face_height"}
    with open(csv_path, newline="") as fh:
        rows = csv.DictReader(fh)
        if not need <= set(rows.fieldnames or ()):
            raise DatasetError(f"{csv_path}: needs columns {sorted(need)}")
        for i, row in enumerate(rows):
            try:
                code = int(row["expression"])
                x, y, w, h = (int(float(row[k])) for k in
                              ("face_x", "face_y", "face_width", "face_height"))
            except ValueError:
                raise DatasetError(f"{csv_path}: row {i + 2} has a non-numeric field") from None
            name = AFFECTNET_TO_CANONICAL.get(code)
            if name is None or name not in classes:
                dropped[AFFECTNET_DROP_RULES.get(code, name or "invalid_code")] += 1
                continue
            rel = row["subDirectory_filePath"]
            img = read_image(images_root / rel)
            crop = None
            if img is not None:
                x0, y0 = max(x, 0), max(y, 0)
                x1, y1 = min(x + w, img.shape[1]), min(y + h, img.shape[0])
                crop = img[y0:y1, x0:x1] if x1 > x0 and y1 > y0 else None
            why = "" if img is None or crop is not None else f" (empty face box {x},{y},{w},{h})"
            col.add(crop, classes.index(name), rel, why)
    by_rule = {r: dropped.get(r, 0)
               for r in ("none", "uncertain", "no_face", "contempt", "invalid_code")}
    if by_rule["invalid_code"]:
        log.warning("AffectNet %s: %d rows have an expression code outside 0-10", csv_path.name,
                    by_rule["invalid_code"])
    log.info("AffectNet %s: kept %d rows, dropped %d: %s", csv_path.name, len(col.images),
             sum(by_rule.values()), drop_counts_text(by_rule))
    data = col.finish(classes, f"affectnet:{csv_path}")
    data.meta.update(dropped=sum(by_rule.values()), dropped_by_rule=by_rule)
    return data
