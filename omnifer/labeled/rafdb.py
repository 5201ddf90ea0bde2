"""RAF-DB basic: ``EmoLabel/list_patition_label.txt`` + ``Image/aligned/*_aligned.jpg``.

Labels ``1 Surprise 2 Fear 3 Disgust 4 Happiness 5 Sadness 6 Anger 7 Neutral`` map through
:data:`omnifer.labels.RAFDB_TO_CANONICAL` into :data:`omnifer.labels.CLASSES`.
"""

from __future__ import annotations

from pathlib import Path

from omnifer.errors import DatasetError
from omnifer.labeled.base import Collector, LabeledData, OnError, read_image
from omnifer.labels import CLASSES, RAFDB_TO_CANONICAL


def read_rafdb(
    root: Path | str, split: str = "train", size: int | None = None, on_error: OnError = "raise"
) -> LabeledData:
    """RAF-DB basic: ``EmoLabel/list_patition_label.txt`` + ``Image/aligned/*_aligned.jpg``.

    ``split`` is ``train`` or ``test`` (the file-name prefix). Labels 1..7 map through
    :data:`RAFDB_TO_CANONICAL` into :data:`CLASSES`.
    """
    root = Path(root)
    if split not in ("train", "test"):
        raise DatasetError(f"RAF-DB split must be 'train' or 'test', got {split!r}")
    list_file = root / "EmoLabel" / "list_patition_label.txt"
    if not list_file.is_file():
        raise DatasetError(f"RAF-DB label list {list_file} not found (expected the RAF-DB "
                           "basic layout: EmoLabel/, Image/aligned/)")
    col = Collector(f"RAF-DB {root} ({split})", size, on_error)
    for lineno, line in enumerate(list_file.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) not in RAFDB_TO_CANONICAL:
            raise DatasetError(f"{list_file}:{lineno}: expected '<name>.jpg <1-7>', got {line!r}")
        name, code = parts[0], int(parts[1])
        if not name.startswith(split + "_"):
            continue
        stem = Path(name).stem
        path = root / "Image" / "aligned" / f"{stem}_aligned.jpg"
        label = CLASSES.index(RAFDB_TO_CANONICAL[code])
        col.add(read_image(path), label, f"Image/aligned/{path.name}")
    return col.finish(CLASSES, f"rafdb:{root}:{split}")
