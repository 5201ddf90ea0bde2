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
    cols = ["Usage", "Image name", "neutral", "happiness", "surprise", "sadness", "anger",
            "disgust", "fear", "contempt", "unknown", "NF"]
    votes = [  # (usage, image name, votes); what each mode does with the row is in the test
        ("Training", "fer0.png", [0, 8, 2, 0, 0, 0, 0, 0, 0, 0]),  # happy everywhere
        ("Training", "fer1.png", [1, 0, 0, 0, 0, 0, 0, 0, 0, 9]),  # NF: never a face
        ("Training", "fer2.png", [2, 0, 0, 0, 0, 0, 0, 6, 2, 0]),  # contempt
        ("PrivateTest", "fer3.png", [0, 0, 0, 0, 10, 0, 0, 0, 0, 0]),  # angry (test)
        ("Training", "", [10, 0, 0, 0, 0, 0, 0, 0, 0, 0]),  # no image name
        ("Training", "fer5.png", [5, 5, 0, 0, 0, 0, 0, 0, 0, 0]),  # the 5/5 tie
        ("Training", "fer6.png", [4, 3, 0, 0, 0, 0, 0, 0, 0, 3]),  # neutral 4 of 10 votes
        ("Training", "fer7.png", [4, 0, 0, 0, 0, 0, 0, 0, 6, 0]),  # unknown wins
        ("Training", "fer8.png", [0, 0, 6, 1, 1, 1, 1, 0, 0, 0]),  # singles dropped: surprise
        ("Training", "fer9.png", [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]),  # single votes only
        ("Training", "fer10.png", [3, 3, 2, 2, 0, 0, 0, 0, 0, 0]),  # 4 emotions to reach 75 %
        ("Training", "fer11.png", [3, 0, 0, 0, 0, 0, 0, 0, 0, 3]),  # NF tied at the top
    ]
    pix = " ".join(["128"] * (48 * 48))
    with open(folder / "fer2013.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["emotion", "pixels", "Usage"])
        w.writerows([("0", pix, usage) for usage, _, _ in votes])
    with open(folder / "fer2013new.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for usage, name, v in votes:
            w.writerow([usage, name, *v])


def test_ferplus_follows_its_own_label_protocol(tmp_path: Path) -> None:
    """FERPlus's reader (github.com/microsoft/FERPlus src/ferplus.py): single votes dropped,
    majority = more than half of the votes (unknown/NF votes count), rows failing excluded."""
    _ferplus(tmp_path / "fer")
    old, new = tmp_path / "fer" / "fer2013.csv", tmp_path / "fer" / "fer2013new.csv"

    def labels(data) -> dict[str, str]:
        return {n: data.classes[i] for n, i in zip(data.names, data.hard_labels(), strict=True)}

    major = read_ferplus(old, new, "train")
    assert major.classes == CLASSES and major.images.shape[1:] == (48, 48, 3)
    # The 5/5 tie used to become neutral; 4 of 10 votes is no majority either.
    assert labels(major) == {"fer0.png": "happy", "fer8.png": "surprise"}
    assert major.meta["label_mode"] == "majority"
    assert major.meta["dropped_by_rule"] == {
        "no_image": 1, "single_votes_only": 1, "not_face": 2, "unknown": 1, "no_majority": 3,
        "tie": 0, "too_spread": 0, "contempt": 1}
    assert major.meta["dropped"] == 9

    plural = read_ferplus(old, new, "train", label_mode="plurality")
    assert labels(plural) == {"fer0.png": "happy", "fer6.png": "neutral",
                              "fer8.png": "surprise"}
    assert plural.meta["dropped_by_rule"]["tie"] == 2  # fer5, fer10

    prob = read_ferplus(old, new, "train", label_mode="probability")
    assert prob.is_soft and prob.targets.shape == (4, 7)
    assert prob.meta["dropped_by_rule"]["too_spread"] == 1  # fer10: more than 3 emotions
    soft = {n: dict(zip(prob.classes, t.round(4).tolist(), strict=True))
            for n, t in zip(prob.names, prob.targets, strict=True)}
    assert soft["fer0.png"]["happy"] == 1.0  # 8 of 10 votes cover 75 %: surprise left out
    assert soft["fer5.png"]["neutral"] == soft["fer5.png"]["happy"] == 0.5
    assert soft["fer6.png"]["neutral"] == pytest.approx(4 / 7, abs=1e-4)  # NF not a class
    assert set(soft) == {"fer0.png", "fer5.png", "fer6.png", "fer8.png"}
    np.testing.assert_allclose(prob.targets.sum(axis=1), 1.0, rtol=1e-6)
    assert read_ferplus(old, new, "train", label_mode="soft").names == prob.names

    with_c = read_ferplus(old, new, "train", include_contempt=True)
    assert with_c.classes == CLASSES_WITH_CONTEMPT
    assert labels(with_c)["fer2.png"] == "contempt"
    assert with_c.meta["dropped_by_rule"]["contempt"] == 0
    test = read_dataset(tmp_path / "fer", "ferplus", "test", size=16)
    assert test.classes[int(test.targets[0])] == "angry" and test.images.shape[1] == 16
    assert len(read_dataset(tmp_path / "fer", "ferplus", "train", label_mode="plurality")) == 3
    with pytest.raises(DatasetError, match="label mode"):
        read_ferplus(old, new, "train", label_mode="vote")  # type: ignore[arg-type]


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
    assert data.meta["dropped_by_rule"] == {"none": 1, "uncertain": 0, "no_face": 0,
                                            "contempt": 1, "invalid_code": 0}
    eight = read_affectnet(root / "training.csv", root, include_contempt=True, size=16)
    assert [eight.classes[i] for i in eight.targets] == ["angry", "contempt"]
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


def test_cli_train_ferplus_says_what_each_rule_dropped(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from omnifer.cli import app

    _ferplus(tmp_path / "fer")
    cfg = tmp_path / "train.yaml"
    cfg.write_text("arch: fercnn_tiny\ninput_size: 16\nbatch_size: 4\npatience: 0\nthreads: 1\n")
    res = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "fer"), "--format",
                                   "ferplus", "--label-mode", "plurality", "--epochs", "1",
                                   "--config", str(cfg), "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, (res.output, res.exception)
    text = " ".join(res.output.split())
    # 11 training rows: 3 kept, 8 dropped, each by its rule (rules that dropped none unsaid)
    assert ("(plurality): kept 3 rows, dropped 8: no_image 1, single_votes_only 1, not_face 2, "
            "unknown 1, tie 2, contempt 1 training") in text
