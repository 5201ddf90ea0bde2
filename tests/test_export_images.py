"""``omnifer export``: curated sets, faces and distilled sets out of the catalog as image files.

The round trip: a night over aligned crops, curated, exported in RAF-DB's layout, read back
by ``omnifer train --format rafdb``: the same images and labels. Plus idempotence (a rerun
writes nothing), syncing a narrower export, the folder layout, distilled sets and an S3
catalog (moto on 127.0.0.1).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from omnifer.catalog import DataCatalog
from omnifer.curation.curated import select_curated
from omnifer.curation.export import export_images
from omnifer.curation.selection import SelectionPolicy
from omnifer.errors import ConfigError, DatasetError
from omnifer.testing.faults import make_catalog, promote_tiny_model, run_night

DATE = "2026-12-02"
LOOSE = SelectionPolicy(min_confidence=0.0, default_confidence=0.0, require_flip_agreement=False)


def _crops(root: Path, n: int = 14) -> Path:
    from omnifer.demo import render_labeled
    from omnifer.labels import CLASSES

    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        crop, _ = render_labeled(3, "test", 700 + i, CLASSES[i % len(CLASSES)])
        cv2.imwrite(str(root / f"c{i:03d}.jpg"), crop)
    return root


def _curated_night(catalog: DataCatalog, tmp_path: Path) -> str:
    from omnifer.models.versions import primitive_model

    promote_tiny_model(catalog, tmp_path / "v1")
    source = json.dumps({"path": str(_crops(tmp_path / "crops")), "faces": "aligned"})
    night = run_night(catalog, [source], DATE, shard_size=8)
    assert night.failed == {}
    return select_curated(catalog, DATE, LOOSE, primitive_model(catalog)[0],
                          "select").curated_version


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in root.rglob("*") if p.is_file()}


def test_rafdb_round_trip_through_omnifer_train(
    data_catalog: DataCatalog, tmp_path: Path
) -> None:
    from omnifer.cli import app
    from omnifer.labeled import read_rafdb

    version = _curated_night(data_catalog, tmp_path)
    con = data_catalog.connect()
    curated = {fid: (label, crop) for fid, label, crop in con.execute(
        "SELECT c.face_id, c.label, f.crop FROM curated c JOIN faces f USING (face_id)"
    ).fetchall()}
    assert len(curated) == 14

    out = tmp_path / "export"
    runner = CliRunner()
    res = runner.invoke(app, ["export", "curated", "--out", str(out), "--layout", "rafdb"])
    assert res.exit_code == 0, res.output
    assert (out / "EmoLabel" / "list_patition_label.txt").is_file()

    # What a RAF-DB reader sees is exactly the curated set: same pixels, same labels.
    data = read_rafdb(out, "train")
    assert len(data) == len(curated)
    for name, img, label in zip(data.names, data.images, data.hard_labels(), strict=True):
        fid = name.removeprefix("Image/aligned/train_").removesuffix("_aligned.jpg")
        want_label, crop = curated[fid]
        assert data.classes[label] == want_label
        assert np.array_equal(img, cv2.imdecode(np.frombuffer(crop, np.uint8), cv2.IMREAD_COLOR))
    with (out / "manifest.csv").open() as fh:
        manifest = list(csv.DictReader(fh))
    assert {r["face_id"] for r in manifest} == set(curated)
    assert all(r["version"] == version and r["source_uri"].startswith("file://")
               and 0 <= float(r["confidence"]) <= 1 for r in manifest)

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({"arch": "fercnn_tiny", "input_size": 32, "epochs": 1,
                                   "val_fraction": 0.0, "threads": 1}))
    res = runner.invoke(app, ["train", "--data", str(out), "--format", "rafdb", "--out",
                              str(tmp_path / "model"), "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    card = json.loads((tmp_path / "model" / "card.json").read_text())
    assert card["train_datasets"][0]["n"] == len(curated)
    assert card["hflip"] is True  # a face format: flips on by default

    # Idempotent: a rerun writes nothing and leaves every file as it was.
    before = _snapshot(out)
    again = export_images(data_catalog, "curated", out, "rafdb")
    assert (again.written, again.unchanged, again.removed) == (0, len(curated), 0)
    assert _snapshot(out) == before


def test_folder_layout_filters_sync_and_distilled(
    data_catalog: DataCatalog, tmp_path: Path
) -> None:
    import torch

    from omnifer.distill.config import DistillConfig
    from omnifer.distill.result import DistilledSet
    from omnifer.labeled import read_image_folder

    version = _curated_night(data_catalog, tmp_path)
    out = tmp_path / "folder"
    full = export_images(data_catalog, "curated", out, "folder", dates=[DATE])
    labels = {p.parent.name for p in out.rglob("*.jpg")}
    assert full.rows == 14 and full.written == 14 and full.versions == [version]
    assert len(read_image_folder(out)) == 14

    # A narrower rerun into the same folder removes what it no longer lists, nothing else.
    keep = sorted(labels)[0]
    (out / "NOTES.txt").write_text("mine")
    narrow = export_images(data_catalog, "curated", out, "folder",
                           where=f"label = '{keep}' AND confidence >= 0")
    assert narrow.removed == 14 - narrow.rows and narrow.written == 0
    assert {p.parent.name for p in out.rglob("*.jpg")} == {keep}
    assert (out / "NOTES.txt").read_text() == "mine"

    faces = export_images(data_catalog, "faces", tmp_path / "faces", "folder")
    assert faces.rows == 14  # every face is scored: its latest label

    with pytest.raises(DatasetError, match="--where"):
        export_images(data_catalog, "curated", out, where="no_such_column > 1")
    with pytest.raises(ConfigError):
        export_images(data_catalog, "faces", out, curated_versions=[version])

    # A distilled set: tensors back to 8-bit images, one file per synthetic image.
    gen = torch.Generator().manual_seed(0)
    dset = DistilledSet(torch.randn(6, 3, 16, 16, generator=gen),
                        torch.tensor([0, 0, 1, 1, 2, 2]), ["happy", "sad", "angry"],
                        DistillConfig(ipc=2, image_size=16), wall_time_s=0.0)
    data_catalog.write("distilled", "part-d-test.parquet",
                       dset.to_arrow(curated_version=version, distilled_version="d-test"))
    dist = export_images(data_catalog, "distilled", tmp_path / "dist", "folder",
                         curated_versions=[version])
    assert dist.rows == 6 and dist.versions == ["d-test"]
    pngs = sorted((tmp_path / "dist").rglob("*.png"))
    assert [p.parent.name for p in pngs] == ["angry"] * 2 + ["happy"] * 2 + ["sad"] * 2
    assert cv2.imread(str(pngs[0])).shape == (16, 16, 3)
    rafdb = export_images(data_catalog, "distilled", tmp_path / "dist-rafdb", "rafdb")
    assert rafdb.rows == 6


def test_export_from_an_s3_catalog(
    s3_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    monkeypatch.setenv("OMNIFER_S3_ENDPOINT_URL", s3_server)
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(
        Bucket="export-catalog")
    catalog, path = make_catalog(tmp_path, "s3cat", data_root="s3://export-catalog/omnifer")
    monkeypatch.setenv("OMNIFER_CATALOG", str(path))
    _curated_night(catalog, tmp_path)
    out = tmp_path / "from-s3"
    result = export_images(catalog, "curated", out, "rafdb", split="test")
    assert result.rows == 14
    names = (out / "EmoLabel" / "list_patition_label.txt").read_text().split()
    assert names[0].startswith("test_") and len(names) == 28
    assert os.path.getsize(out / "manifest.csv") > 0
