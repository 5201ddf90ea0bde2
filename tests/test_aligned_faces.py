"""Sources of pre-aligned faces (``{"path": ..., "faces": "aligned"}``): no detection, the whole
image is one face, and everything downstream (rows, provenance, selection) is as usual.

Folders, S3 prefixes (moto on 127.0.0.1) and URL manifests (an HTTP server on 127.0.0.1).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from omnifer.catalog import DataCatalog
from omnifer.errors import SourceError
from omnifer.sources import parse_source, source_from_dict
from omnifer.testing.faults import face_folder, promote_tiny_model, run_night

DATE = "2026-12-01"
SIZES = (64, 100, 112, 250)  # RAF-DB's aligned set is 100 px, MS-Celeb/ArcFace crops 112


def _crops(root: Path, per_size: int = 2, seed: int = 0) -> dict[str, tuple[int, int]]:
    """Aligned demo faces written at several sizes (+ one non-square); name → (w, h)."""
    from omnifer.demo import render_labeled

    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, tuple[int, int]] = {}
    labels = ("happy", "sad", "surprise", "neutral")
    i = 0
    for size in SIZES:
        for _ in range(per_size):
            crop, _ = render_labeled(seed, "test", 900 + i, labels[i % len(labels)])
            name = f"s{size}/crop-{i:03d}.jpg"
            (root / name).parent.mkdir(exist_ok=True)
            cv2.imwrite(str(root / name), cv2.resize(crop, (size, size)))
            out[name] = (size, size)
            i += 1
    crop, _ = render_labeled(seed, "test", 900 + i, "angry")
    cv2.imwrite(str(root / "wide.png"), cv2.resize(crop, (120, 90)))
    out["wide.png"] = (120, 90)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(40))
    return out


def test_parse_aligned_sources_of_every_kind(tmp_path: Path) -> None:
    folder = parse_source(json.dumps({"path": str(tmp_path), "faces": "aligned"}))
    s3 = parse_source('{"path": "s3://crops/ms1m", "faces": "aligned"}')
    urls = parse_source({"path": "urls:m.csv", "faces": "aligned", "column": "link"})
    assert (folder.kind, folder.root, folder.faces) == ("local", str(tmp_path), "aligned")
    assert (s3.kind, s3.bucket, s3.prefix, s3.faces) == ("s3", "crops", "ms1m/", "aligned")
    assert (urls.kind, urls.column, urls.faces) == ("urls", "link", "aligned")
    assert parse_source(str(tmp_path)).faces == "detect"  # the default
    # plans store sources as JSON: the option survives the round trip
    assert source_from_dict(s3.model_dump(mode="json")) == s3
    for bad in ('{"path": "/x", "kind": "local"}', '{"path": "/x", "faces": "maybe"}',
                '{"path": "/x", "nope": 1}'):
        with pytest.raises(SourceError):
            parse_source(bad)


def _check_aligned_rows(catalog: DataCatalog, sizes: dict[str, tuple[int, int]],
                        prefix: str) -> None:
    con = catalog.connect()
    images = con.execute(
        "SELECT source_uri, status, n_faces, width, height, detector FROM images "
        "WHERE source_uri LIKE ? ORDER BY source_uri", [prefix + "%"]).fetchall()
    by_name = {uri[len(prefix):]: rest for uri, *rest in images}
    assert set(by_name) == set(sizes) | {"broken.jpg"}
    status, n_faces = by_name["broken.jpg"][:2]
    assert status not in ("ok", "no_face") and n_faces == 0  # a decode status, as usual
    for name, (w, h) in sizes.items():
        assert tuple(by_name[name]) == ("ok", 1, w, h, "aligned-input"), name
    faces = con.execute(
        "SELECT f.source_uri, f.bbox, f.face_size, f.det_score, f.detector, f.detector_version, "
        "f.crop, f.run_id, f.shard_id, s.label, s.status FROM faces f "
        "JOIN scores s USING (face_id) WHERE f.source_uri LIKE ?", [prefix + "%"]).fetchall()
    assert len(faces) == len(sizes)  # one face per image, each scored
    for uri, bbox, face_size, score, det, det_version, crop, run_id, shard, label, st in faces:
        w, h = sizes[uri[len(prefix):]]
        assert bbox == [0.0, 0.0, w, h] and face_size == min(w, h) and score == 1.0
        assert (det, det_version, st) == ("aligned-input", "resize-112", "ok")
        assert run_id and shard and label  # provenance and a score, as for detected faces
        img = cv2.imdecode(np.frombuffer(crop, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (112, 112, 3)


def test_aligned_folder_beside_a_detected_one(
    omnifer_home: Path, data_catalog: DataCatalog, tmp_path: Path
) -> None:
    from omnifer.curation.curated import select_curated
    from omnifer.curation.selection import SelectionPolicy
    from omnifer.models.versions import primitive_model

    promote_tiny_model(data_catalog, tmp_path / "v1")
    sizes = _crops(tmp_path / "crops")
    photos = face_folder(tmp_path / "photos", n=3, broken=0)
    aligned = json.dumps({"path": str(tmp_path / "crops"), "faces": "aligned"})
    night = run_night(data_catalog, [aligned, str(photos)], DATE, shard_size=5)
    assert night.failed == {} and night.committed == night.shards
    _check_aligned_rows(data_catalog, sizes, (tmp_path / "crops").as_uri() + "/")

    con = data_catalog.connect()
    detected = con.execute("SELECT DISTINCT detector FROM faces WHERE source_uri LIKE ?",
                           [photos.as_uri() + "%"]).fetchall()
    assert detected == [("yunet",)]  # the other source is still detected
    # A 112 px aligned crop goes through unchanged (up to JPEG): no warp, no re-crop.
    src = cv2.imread(str(tmp_path / "crops" / "s112" / "crop-004.jpg"))
    (crop,) = con.execute("SELECT crop FROM faces WHERE source_uri LIKE '%s112/crop-004.jpg'"
                          ).fetchone()
    got = cv2.imdecode(np.frombuffer(crop, np.uint8), cv2.IMREAD_COLOR)
    assert np.abs(got.astype(int) - src.astype(int)).mean() < 3

    # selection runs over aligned faces as over detected ones
    policy = SelectionPolicy(min_confidence=0.0, default_confidence=0.0,
                             require_flip_agreement=False)
    result = select_curated(data_catalog, DATE, policy, primitive_model(data_catalog)[0], "sel")
    assert result.selected == result.candidates >= len(sizes)


def test_aligned_s3_prefix_and_url_manifest_need_no_detector(
    s3_server: str, data_catalog: DataCatalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3
    from helpers_http import http_server

    # No detector model anywhere: an aligned-only night must not try to load one.
    monkeypatch.setenv("OMNIFER_HOME", str(tmp_path / "empty-home"))
    monkeypatch.setenv("OMNIFER_MODEL_MIRROR", str(tmp_path / "no-mirror"))
    monkeypatch.setenv("OMNIFER_S3_ENDPOINT_URL", s3_server)
    promote_tiny_model(data_catalog, tmp_path / "v1")
    sizes = _crops(tmp_path / "crops", per_size=1, seed=1)
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket="aligned-pool")
    for path in sorted((tmp_path / "crops").rglob("*.*")):
        key = "ms1m/" + path.relative_to(tmp_path / "crops").as_posix()
        client.put_object(Bucket="aligned-pool", Key=key, Body=path.read_bytes())

    one = cv2.imencode(".png", cv2.imread(str(tmp_path / "crops" / "s100" / "crop-001.jpg")))[1]
    with http_server(one.tobytes()) as server:
        manifest = tmp_path / "urls.csv"
        manifest.write_text(f"url\n{server.base_url}/img.png\n")
        sources = [json.dumps({"path": "s3://aligned-pool/ms1m", "faces": "aligned"}),
                   json.dumps({"path": f"urls:{manifest}", "faces": "aligned",
                               "allow_private": True})]
        night = run_night(data_catalog, sources, DATE, shard_size=4)
    assert night.failed == {} and night.committed == night.shards
    _check_aligned_rows(data_catalog, sizes, "s3://aligned-pool/ms1m/")
    con = data_catalog.connect()
    (row,) = con.execute("SELECT f.bbox, f.detector FROM faces f JOIN images i "
                         "ON f.image_sha256 = i.sha256 WHERE i.source_uri LIKE 'http%'"
                         ).fetchall()
    assert row == ([0.0, 0.0, 100.0, 100.0], "aligned-input")
