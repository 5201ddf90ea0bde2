"""Labeled data readers on tiny files in each dataset's real layout (made here)."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from omnifer.errors import DatasetError
from omnifer.labeled import (
    LabeledData,
    hard_labels,
    read_affectnet,
    read_dataset,
    read_ferplus,
    read_image_folder,
    read_rafdb,
)
from omnifer.labels import CLASSES, CLASSES_WITH_CONTEMPT


def _img(value: int, size: int = 20) -> np.ndarray:
    return np.full((size, size, 3), value, np.uint8)


def _rafdb(root: Path, rows: list[tuple[str, int]], skip_image: str | None = None) -> Path:
    (root / "EmoLabel").mkdir(parents=True)
    (root / "Image" / "aligned").mkdir(parents=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text(
        "".join(f"{name} {code}\n" for name, code in rows))
    for i, (name, _) in enumerate(rows):
        if name != skip_image:
            stem = Path(name).stem
            cv2.imwrite(str(root / "Image" / "aligned" / f"{stem}_aligned.jpg"), _img(10 * i))
    return root


def test_rafdb_maps_labels_and_splits(tmp_path: Path) -> None:
    rows = [("train_00001.jpg", 4), ("train_00002.jpg", 7), ("test_0001.jpg", 1),
            ("train_00003.jpg", 6)]
    root = _rafdb(tmp_path / "raf", rows)
    train = read_rafdb(root, "train")
    assert train.classes == CLASSES
    assert [train.classes[i] for i in train.targets] == ["happy", "neutral", "angry"]
    assert train.names[0] == "Image/aligned/train_00001_aligned.jpg"
    assert train.images.shape == (3, 20, 20, 3) and train.images.dtype == np.uint8
    test = read_rafdb(root, "test", size=8)
    assert test.images.shape == (1, 8, 8, 3)
    assert test.classes[int(test.targets[0])] == "surprise"


def test_rafdb_missing_image_raises_or_skips(tmp_path: Path) -> None:
    rows = [("train_00001.jpg", 4), ("train_00002.jpg", 5)]
    root = _rafdb(tmp_path / "raf", rows, skip_image="train_00002.jpg")
    with pytest.raises(DatasetError, match="train_00002_aligned.jpg"):
        read_rafdb(root, "train")
    data = read_rafdb(root, "train", on_error="skip")
    assert len(data) == 1 and data.skipped == 1
    with pytest.raises(DatasetError, match="list_patition_label"):
        read_rafdb(tmp_path / "nowhere")


def _ferplus(folder: Path) -> None:
    folder.mkdir()
    pix = " ".join(["128"] * (48 * 48))
    old = [("3", pix, "Training"), ("0", pix, "Training"), ("0", pix, "Training"),
           ("0", pix, "PrivateTest"), ("0", pix, "Training")]
    with open(folder / "fer2013.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["emotion", "pixels", "Usage"])
        w.writerows(old)
    cols = ["Usage", "Image name", "neutral", "happiness", "surprise", "sadness", "anger",
            "disgust", "fear", "contempt", "unknown", "NF"]
    votes = [
        ("Training", "fer0.png", [0, 8, 2, 0, 0, 0, 0, 0, 0, 0]),  # happy
        ("Training", "fer1.png", [1, 0, 0, 0, 0, 0, 0, 0, 0, 9]),  # NF: dropped
        ("Training", "fer2.png", [2, 0, 0, 0, 0, 0, 0, 6, 2, 0]),  # contempt: dropped
        ("PrivateTest", "fer3.png", [0, 0, 0, 0, 10, 0, 0, 0, 0, 0]),  # angry (test)
        ("Training", "", [10, 0, 0, 0, 0, 0, 0, 0, 0, 0]),  # no image name: dropped
    ]
    with open(folder / "fer2013new.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for usage, name, v in votes:
            w.writerow([usage, name, *v])


def test_ferplus_majority_soft_and_contempt(tmp_path: Path) -> None:
    _ferplus(tmp_path / "fer")
    old, new = tmp_path / "fer" / "fer2013.csv", tmp_path / "fer" / "fer2013new.csv"
    train = read_ferplus(old, new, "train")
    assert train.names == ["fer0.png"] and train.classes == CLASSES
    assert train.classes[int(train.targets[0])] == "happy"
    assert train.images.shape == (1, 48, 48, 3)
    soft = read_ferplus(old, new, "train", label_mode="soft")
    assert soft.is_soft and soft.targets.shape == (1, 7)
    np.testing.assert_allclose(soft.targets[0, CLASSES.index("happy")], 0.8)
    np.testing.assert_allclose(soft.targets[0, CLASSES.index("surprise")], 0.2)
    assert soft.hard_labels().tolist() == [CLASSES.index("happy")]
    with_c = read_ferplus(old, new, "train", include_contempt=True)
    assert with_c.classes == CLASSES_WITH_CONTEMPT
    assert [with_c.classes[i] for i in with_c.targets] == ["happy", "contempt"]
    test = read_dataset(tmp_path / "fer", "ferplus", "test", size=16)
    assert test.classes[int(test.targets[0])] == "angry" and test.images.shape[1] == 16


def test_affectnet_crops_face_box_and_drops_codes(tmp_path: Path) -> None:
    root = tmp_path / "aff"
    (root / "1").mkdir(parents=True)
    img = np.zeros((60, 80, 3), np.uint8)
    img[10:30, 40:70] = 255  # the face box is white, the rest black
    cv2.imwrite(str(root / "1" / "a.png"), img)
    cv2.imwrite(str(root / "1" / "b.png"), img)
    with open(root / "training.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
                    "facial_landmarks", "expression", "valence", "arousal"])
        w.writerow(["1/a.png", 40, 10, 30, 20, "", 6, 0, 0])  # angry
        w.writerow(["1/b.png", 40, 10, 30, 20, "", 8, 0, 0])  # none: dropped
        w.writerow(["1/b.png", 40, 10, 30, 20, "", 7, 0, 0])  # contempt: dropped
    data = read_affectnet(root / "training.csv", root, size=16)
    assert len(data) == 1 and data.meta["dropped"] == 2
    assert data.classes[int(data.targets[0])] == "angry"
    assert data.images.shape == (1, 16, 16, 3) and data.images.min() == 255
    assert len(read_dataset(root, "affectnet", "train", size=16)) == 1


def test_image_folder_any_classes(tmp_path: Path) -> None:
    for cls, n in (("zebra", 2), ("apple", 1)):
        (tmp_path / "ds" / cls).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(tmp_path / "ds" / cls / f"{i}.png"), _img(50 * i))
    data = read_image_folder(tmp_path / "ds")
    assert data.classes == ("apple", "zebra")
    assert data.targets.tolist() == [0, 1, 1]
    assert data.names == ["apple/0.png", "zebra/0.png", "zebra/1.png"]
    forced = read_image_folder(tmp_path / "ds", classes=["zebra", "cat", "apple"])
    assert forced.targets.tolist() == [2, 0, 0]
    cv2.imwrite(str(tmp_path / "ds" / "apple" / "big.png"), _img(9, size=30))
    with pytest.raises(DatasetError, match="different sizes"):
        read_image_folder(tmp_path / "ds")
    assert read_image_folder(tmp_path / "ds", size=12).images.shape == (4, 12, 12, 3)
    (tmp_path / "ds" / "apple" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="bad.png"):
        read_image_folder(tmp_path / "ds", size=12)
    assert read_image_folder(tmp_path / "ds", size=12, on_error="skip").skipped == 1


def test_labeled_data_helpers() -> None:
    soft = np.array([[0.2, 0.8], [0.6, 0.4]], np.float32)
    assert hard_labels(soft).tolist() == [1, 0]
    data = LabeledData(np.zeros((2, 4, 4, 3), np.uint8), np.array([1, 0]), ("a", "b"),
                       ["x", "y"])
    np.testing.assert_array_equal(data.soft_targets(), [[0, 1], [1, 0]])
    remapped = data.remapped(["b", "c", "a"])
    assert remapped.targets.tolist() == [0, 2]
    with pytest.raises(DatasetError):
        data.remapped(["a"])
    assert data.digest() != data.subset([1, 0]).digest()
