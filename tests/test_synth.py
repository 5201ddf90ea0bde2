"""The demo face world: deterministic, in the RAF-DB layout, truthful, and detectable by YuNet."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from omnifer import demo as synth
from omnifer.demo.truth import iou
from omnifer.labels import CLASSES, RAFDB_TO_CANONICAL

SMALL = {"labeled_per_class": 5, "test_per_class": 2, "unlabeled_images": 40}


def _decodes(data: bytes) -> bool:
    """cv2 decodes it (cv2 raises on an empty buffer instead of returning None)."""
    return bool(data) and cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, synth.WorldSummary]:
    out = tmp_path_factory.mktemp("world")
    return out, synth.generate_world(out, seed=5, workers=2, **SMALL)


def test_same_seed_same_bytes_whatever_the_workers(world, tmp_path: Path) -> None:
    out, _ = world
    again = synth.generate_world(tmp_path / "again", seed=5, workers=1, **SMALL)
    assert again.faces > 0
    assert _digest(out) == _digest(tmp_path / "again")
    other = synth.generate_world(tmp_path / "other", seed=6, workers=1, **SMALL)
    a, b = _digest(out), _digest(tmp_path / "other")
    assert other.scenes == 40
    assert a["labeled/EmoLabel/list_patition_label.txt"] != b[
        "labeled/EmoLabel/list_patition_label.txt"]
    assert a["truth/faces.parquet"] != b["truth/faces.parquet"]
    assert a["labeled/Image/aligned/train_00001_aligned.jpg"] != b[
        "labeled/Image/aligned/train_00001_aligned.jpg"]


def test_labeled_tree_is_rafdb_basic(world) -> None:
    out, summary = world
    root = out / "labeled"
    lines = (root / "EmoLabel" / "list_patition_label.txt").read_text().splitlines()
    counts: dict[str, Counter[str]] = {"train": Counter(), "test": Counter()}
    for line in lines:
        name, code = line.split()
        split, number = name.removesuffix(".jpg").split("_")
        assert len(number) == (5 if split == "train" else 4)
        counts[split][RAFDB_TO_CANONICAL[int(code)]] += 1
        img = cv2.imread(str(root / "Image" / "aligned" / f"{split}_{number}_aligned.jpg"))
        assert img is not None and img.shape == (112, 112, 3)
    assert counts["train"] == {c: 5 for c in CLASSES}
    assert counts["test"] == {c: 2 for c in CLASSES}
    assert summary.train_images == 35 and summary.test_images == 14
    assert len(list((root / "Image" / "aligned").iterdir())) == 49


def test_truth_matches_the_scenes(world) -> None:
    out, summary = world
    unlabeled = out / "unlabeled"
    images = pq.read_table(out / "truth" / "images.parquet").to_pylist()
    faces = pq.read_table(out / "truth" / "faces.parquet").to_pylist()
    files = {str(p.relative_to(unlabeled)) for p in unlabeled.rglob("*") if p.is_file()}
    assert files == {r["relpath"] for r in images} and len(files) == 40
    assert all(len(Path(f).parts) == 3 for f in files)  # batch-NN/cam-C/scene_IIIIII.ext
    per_image = Counter(f["relpath"] for f in faces)
    kinds = Counter(r["kind"] for r in images)
    assert kinds["broken"] >= 1 and kinds["no_face"] >= 1 and kinds["ok"] >= 30
    for r in images:
        assert r["n_faces"] == per_image.get(r["relpath"], 0)
        assert (r["kind"] == "ok") == (r["n_faces"] > 0)
        assert r["n_faces"] <= 3
        path = unlabeled / r["relpath"]
        if r["kind"] == "broken":
            assert not _decodes(path.read_bytes())
            with pytest.raises(Exception):  # noqa: B017 - PIL raises several types
                with Image.open(path) as im:
                    im.load()
            continue
        img = cv2.imread(str(path))
        assert img is not None
        h, w = img.shape[:2]
        for f in (f for f in faces if f["relpath"] == r["relpath"]):
            assert 0 <= f["x1"] < f["x2"] <= w and 0 <= f["y1"] < f["y2"] <= h
            assert 60 <= f["x2"] - f["x1"] <= 280  # 70–220 px upright; roll widens the box
            lm = np.array(f["landmarks5"]).reshape(5, 2)
            assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]  # image-left first
            assert (f["x1"] <= lm[:, 0]).all() and (lm[:, 0] <= f["x2"]).all()
            assert f["label"] in CLASSES
    assert sum(per_image.values()) == summary.faces
    assert {"jpg", "png"} >= {f.rsplit(".", 1)[1] for f in files}
    meta = json.loads((out / "world.json").read_text())
    assert meta["seed"] == 5 and meta["classes"] == list(CLASSES)
    assert meta["generator_version"] == synth.GENERATOR_VERSION


def test_broken_kinds_are_all_made() -> None:
    specs = synth.plan_scenes(1, 2000)
    broken = [s for s in specs if s.kind == "broken"]
    assert len(broken) == 10 and {s.broken for s in broken} == set(synth.BROKEN_KINDS)
    assert sum(s.kind == "no_face" for s in specs) == 100
    assert 0.05 < np.mean([s.relpath.endswith(".png") for s in specs]) < 0.15
    for s in broken:
        data = synth.broken_bytes(1, s)
        assert not _decodes(data)
        assert (data == b"") == (s.broken == "zero_byte")


def test_yunet_finds_the_true_faces(yunet_model_path: Path) -> None:
    det = cv2.FaceDetectorYN.create(str(yunet_model_path), "", (320, 320), 0.5, 0.3, 5000)
    found = total = 0
    landmark_errors = []
    for i in range(60):
        img, faces = synth.render_scene(11, i)
        img = cv2.imdecode(np.frombuffer(synth.encode_image(img, "jpg"), np.uint8),
                           cv2.IMREAD_COLOR)
        det.setInputSize((img.shape[1], img.shape[0]))
        _, rows = det.detect(img)
        rows = np.zeros((0, 15), np.float32) if rows is None else rows
        boxes = np.c_[rows[:, :2], rows[:, :2] + rows[:, 2:4]]
        total += len(faces)
        if not len(rows) or not faces:
            continue
        m = iou(boxes, np.array([f.box for f in faces]))
        for j, face in enumerate(faces):
            k = int(m[:, j].argmax())
            if m[k, j] >= 0.5:
                found += 1
                side = face.box[2] - face.box[0]
                err = np.linalg.norm(rows[k, 4:14].reshape(5, 2) - face.landmarks5, axis=1)
                landmark_errors.append(err.mean() / side)
    recall = found / total
    print(f"YuNet recall {found}/{total} = {recall:.3f}; landmark error "
          f"median {np.median(landmark_errors):.3f} of the box side")
    assert total >= 80
    assert recall >= 0.9
    assert np.median(landmark_errors) < 0.08


def test_expressions_overlap_but_differ() -> None:
    """Class prototypes are apart, yet samples of neighbours come close (planted ambiguity)."""
    rng = np.random.default_rng(0)
    samples = {c: np.stack([synth.sample_expression(rng, c) for _ in range(300)]) for c in CLASSES}
    means = np.stack([samples[c].mean(0) for c in CLASSES])
    nearest = [int(np.argmin(((means - x) ** 2).sum(1))) for c in CLASSES for x in samples[c]]
    truth = [i for i in range(len(CLASSES)) for _ in range(300)]
    acc = float(np.mean(np.array(nearest) == np.array(truth)))
    assert 0.6 < acc < 0.98, acc


def test_cli_synth(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    import omnifer.cli.synth  # noqa: F401  (registers the command)
    from omnifer.cli._app import app

    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "w"), "--seed", "2",
                                      "--labeled-per-class", "1", "--test-per-class", "1",
                                      "--unlabeled-images", "3", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "unlabeled" in result.output and (tmp_path / "w" / "world.json").exists()
    assert len(list((tmp_path / "w" / "unlabeled").rglob("*.*"))) == 3
