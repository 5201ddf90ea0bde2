"""Both registered detectors on real photos that ship with installed packages.

``skimage.data.astronaut()`` has one face, insightface's ``t1`` six; the model files come from
conftest's ``omnifer_home`` (fetched from the local mirror).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from omnifer.errors import ModelFileError
from omnifer.faces import Detection, available_detectors, create_detector, detect_and_align, face_id

DETECTORS = ["yunet", "scrfd"]


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])  # RGB → BGR


@pytest.fixture(scope="module")
def group() -> np.ndarray:
    import insightface

    return insightface.data.get_image("t1")  # already BGR (cv2.imread)


@pytest.fixture(scope="module", params=DETECTORS)
def detector(request: pytest.FixtureRequest, omnifer_home: Path):
    return create_detector(request.param, model_home=omnifer_home)


def _check(dets: list[Detection], image: np.ndarray) -> None:
    h, w = image.shape[:2]
    for d in dets:
        assert d.bbox.shape == (4,) and d.bbox.dtype == np.float32
        assert d.landmarks5.shape == (5, 2) and d.landmarks5.dtype == np.float32
        assert 0 < d.score <= 1
        x1, y1, x2, y2 = d.bbox
        assert x1 < x2 and y1 < y2 and x2 > 0 and y2 > 0 and x1 < w and y1 < h
        xs, ys = d.landmarks5[:, 0], d.landmarks5[:, 1]
        assert ((xs >= x1) & (xs <= x2) & (ys >= y1) & (ys <= y2)).all(), "landmark outside box"
        # template order: eyes and mouth corners left to right as seen in the image
        assert xs[0] < xs[1] and xs[3] < xs[4] and ys[2] > ys[0]


def test_detectors_find_the_faces(detector, astronaut: np.ndarray, group: np.ndarray) -> None:
    for image, expected in ((astronaut, 1), (group, 5)):
        detector.detect(image)  # warm-up
        started = time.perf_counter()
        dets = detector.detect(image)
        ms = (time.perf_counter() - started) * 1000
        print(f"{detector.version}: {len(dets)} faces in {image.shape[1]}×{image.shape[0]} "
              f"in {ms:.0f} ms")
        assert len(dets) >= expected
        _check(dets, image)
    assert detector.name in DETECTORS and detector.version.startswith(detector.name)


def test_detect_and_align_crops_sorted_and_filtered(detector, group: np.ndarray) -> None:
    faces = detect_and_align(group, detector, min_face_size=32, min_score=0.6)
    assert len(faces) >= 5
    assert [f.face_index for f in faces] == list(range(len(faces)))
    assert all(f.crop.shape == (112, 112, 3) and f.crop.dtype == np.uint8 for f in faces)
    assert all(f.crop.std() > 10 for f in faces)  # a face, not a blank warp
    scores = [round(f.detection.score, 4) for f in faces]
    assert scores == sorted(scores, reverse=True)
    again = detect_and_align(group, detector)  # deterministic
    assert [f.detection.bbox.tolist() for f in again] == [f.detection.bbox.tolist() for f in faces]

    sizes = sorted(f.detection.size for f in faces)
    cut = (sizes[0] + sizes[-1]) / 2
    kept = detect_and_align(group, detector, min_face_size=int(cut) + 1)
    assert 0 < len(kept) < len(faces) and all(f.detection.size > cut for f in kept)
    assert detect_and_align(group, detector, min_face_size=10_000) == []
    assert detect_and_align(group, detector, min_score=1.01) == []
    big = detect_and_align(group, detector, crop_size=224)
    assert big[0].crop.shape == (224, 224, 3)


def test_no_faces_in_blank_or_tiny_images(detector) -> None:
    for shape in [(480, 640, 3), (1, 1, 3), (7, 3, 3)]:
        assert detector.detect(np.full(shape, 128, np.uint8)) == []
    with pytest.raises(ValueError, match="H×W×3 uint8"):
        detector.detect(np.zeros((10, 10), np.uint8))


def test_max_side_downscales_and_maps_boxes_back(group: np.ndarray, omnifer_home: Path) -> None:
    full = create_detector("yunet", model_home=omnifer_home, max_side=4096).detect(group)
    small = create_detector("yunet", model_home=omnifer_home, max_side=640).detect(group)
    assert len(small) >= 5
    for d in small:  # every downscaled box lands on a full-resolution box
        best = max(_iou(d.bbox, f.bbox) for f in full)
        assert best > 0.7


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.parametrize("name", DETECTORS)
def test_missing_model_file_is_one_clear_error(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty_home = tmp_path / "home"
    with pytest.raises(ModelFileError, match="put it in") as info:
        create_detector(name, model_home=empty_home)
    assert str(empty_home / "models") in str(info.value)
    monkeypatch.setenv("OMNIFER_HOME", str(empty_home))  # the default home too
    with pytest.raises(ModelFileError, match=str(empty_home / "models")):
        create_detector(name)


def test_registry() -> None:
    described = available_detectors()
    assert set(DETECTORS) <= set(described)
    assert "non-commercial" in described["scrfd"]
    with pytest.raises(ValueError, match="unknown detector 'nope'; known: scrfd, yunet"):
        create_detector("nope")


def test_face_id_is_stable_and_rounded() -> None:
    sha = "ab" * 32
    fid = face_id(sha, np.array([10.2, 20.4, 110.0, 130.0], np.float32))
    assert len(fid) == 32 and int(fid, 16) >= 0
    assert fid == face_id(sha, [9.8, 19.6, 110.3, 129.7])  # float noise → same face
    assert fid != face_id(sha, [12, 20, 110, 130])
    assert fid != face_id("cd" * 32, [10, 20, 110, 130])
    assert face_id(sha, [-0.3, 0, 1, 1]) == face_id(sha, [0.3, 0, 1, 1])  # no "-0"
