"""Nightly compaction: a night's shard files become one file per dataset, with every row kept,
no row seen twice at any moment (crash included), on local disk and on S3."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from typer.testing import CliRunner

from omnifer import storage
from omnifer.catalog import compaction
from omnifer.errors import ConfigError
from omnifer.testing.faults import (
    catalog_rows,
    compare_rows,
    duplicate_keys,
    face_folder,
    make_catalog,
    promote_tiny_model,
    run_night,
)

REPO = Path(__file__).resolve().parents[1]
DATE = "2026-11-29"
SHARD = 3  # 6 faces + 1 broken file → 3 shards
CLEAN = {"lost": 0, "duplicated": 0, "changed": 0}
NIGHTLY = ("images", "faces", "scores")
EVERY_COLUMN = {"images": "* EXCLUDE (ingest_date)", "faces": "* EXCLUDE (ingest_date)",
                "scores": "* EXCLUDE (ingest_date)"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return face_folder(tmp_path_factory.mktemp("faces") / "in")


def _night_catalog(root: Path, folder: Path, name: str = "cat", data_root: str | None = None):
    catalog, path = make_catalog(root, name, data_root)
    promote_tiny_model(catalog, root / f"model-{name}")
    result = run_night(catalog, [str(folder)], DATE, SHARD)
    assert result.failed == {} and result.committed == 3
    return catalog, path


def _on_disk(catalog, name: str) -> list[str]:
    folder = catalog.file_uri(name, "x", ingest_date=DATE).rsplit("/", 1)[0]
    return [u.rsplit("/", 1)[-1] for u in storage.list_files(folder, ".parquet")]


def test_compaction_keeps_every_row_and_leaves_one_file_per_night(
    omnifer_home: Path, folder: Path, tmp_path: Path
) -> None:
    catalog, _ = _night_catalog(tmp_path, folder)
    before = catalog_rows(catalog, EVERY_COLUMN)
    assert all(len(_on_disk(catalog, n)) == 3 for n in NIGHTLY)

    results = compaction.compact_night(catalog, DATE, "compact-test")
    assert [(r.dataset, r.inputs) for r in results] == [(n, 3) for n in NIGHTLY]
    assert [r.rows for r in results] == [len(before[n]) for n in NIGHTLY]
    for name in NIGHTLY:
        (only,) = _on_disk(catalog, name)  # the shard files are gone from disk
        assert only.startswith(storage.COMPACTED_PREFIX)
        assert catalog.partition_files(name, ingest_date=DATE)[0].endswith(only)
    assert catalog_rows(catalog, EVERY_COLUMN) == before  # every column of every row
    assert {i.name: i.files for i in catalog.info()}["faces"] == 1

    again = compaction.compact_night(catalog, DATE, "compact-again")  # idempotent
    assert [r.skipped for r in again] == ["already one file"] * 3

    # More objects the same night: a second plan's shards land beside the compacted file,
    # are visible at once, and the next compaction merges them in.
    more = folder.parent / "more"
    shutil.copytree(folder, more)
    for i, path in enumerate(sorted(p for p in more.rglob("*.jpg"))):
        path.write_bytes(path.read_bytes() + bytes([i]))  # new content, same faces
    assert run_night(catalog, [str(folder), str(more)], DATE, SHARD).failed == {}
    grown = catalog_rows(catalog, EVERY_COLUMN)
    assert len(grown["faces"]) == 2 * len(before["faces"])
    assert duplicate_keys(catalog) == {"images": 0, "faces": 0, "scores": 0}
    results = compaction.compact_night(catalog, DATE, "compact-more")
    assert all(r.file and r.inputs > 1 for r in results)
    assert all(len(_on_disk(catalog, n)) == 1 for n in NIGHTLY)
    assert catalog_rows(catalog, EVERY_COLUMN) == grown


@pytest.mark.parametrize("point", ["before-switch", "after-switch"])
def test_a_compactor_killed_at_its_switch_loses_and_duplicates_nothing(
    point: str, omnifer_home: Path, folder: Path, tmp_path: Path
) -> None:
    catalog, cat_path = _night_catalog(tmp_path, folder)
    clean = catalog_rows(catalog)
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "helpers_faults.py"), f"compact-kill:{point}",
         str(cat_path), "-", DATE, str(SHARD)],
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}, cwd=REPO, capture_output=True,
        text=True, timeout=300)
    assert proc.returncode == -9, proc.stdout + proc.stderr[-2000:]  # really killed
    images = _on_disk(catalog, "images")
    # Both the merged file and the shard files are on disk: readers must see one of them.
    assert len(images) == 4 and sum(n.startswith(storage.COMPACTED_PREFIX) for n in images) == 1
    assert compare_rows(clean, catalog_rows(catalog)) == CLEAN
    assert duplicate_keys(catalog) == {"images": 0, "faces": 0, "scores": 0}

    results = compaction.compact_night(catalog, DATE, "compact-rerun")
    if point == "before-switch":  # nothing was switched: all three merge now
        assert [r.file is not None for r in results] == [True, True, True]
    else:  # images had switched: its replaced files are deleted, the others merge now
        assert [r.file is not None for r in results] == [False, True, True]
        assert results[0].removed == 3
    assert [len(_on_disk(catalog, n)) for n in NIGHTLY] == [1, 1, 1]
    assert compare_rows(clean, catalog_rows(catalog)) == CLEAN


def test_compaction_on_s3_and_from_the_cli(
    omnifer_home: Path, folder: Path, s3_server: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from omnifer.cli import app

    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    s3.create_bucket(Bucket="compact")
    monkeypatch.setenv("OMNIFER_S3_ENDPOINT_URL", s3_server)
    catalog, cat_path = _night_catalog(tmp_path, folder, data_root="s3://compact/cat")
    clean = catalog_rows(catalog, EVERY_COLUMN)
    monkeypatch.setenv("OMNIFER_CATALOG", str(cat_path))

    runner = CliRunner()
    res = runner.invoke(app, ["catalog", "compact", "--all"])
    assert res.exit_code == 0, (res.output, res.exception)
    assert res.output.count("compact-") == 3 and DATE in res.output
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="compact", Prefix="cat/faces/")
            .get("Contents", [])]
    parquet = [k for k in keys if k.endswith(".parquet")]
    assert len(parquet) == 1 and "/compact-" in parquet[0], keys  # no staging left either
    assert catalog_rows(catalog, EVERY_COLUMN) == clean

    res = runner.invoke(app, ["catalog", "compact", "--date", DATE])
    assert res.exit_code == 0 and res.output.count("already one file") == 3
    res = runner.invoke(app, ["catalog", "compact"])  # main() prints it as one line
    assert isinstance(res.exception, ConfigError) and "--date" in str(res.exception)
