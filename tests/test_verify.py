"""Bookkeeping that outlives the data (issue 15, kind 8): ``omnifer catalog verify [--repair]``.

After a night's data folders were deleted, its shard markers still said "done": ingest and
``rerun --date D --force`` skipped every shard and rebuilt nothing. Here the deletion is
real (folders removed, a compacted file cut short), the rerun says the markers blocked it,
``verify`` finds each disagreement, ``--repair`` lets the rerun rebuild exactly what was
lost, and the rows then equal those of the first run, with no duplicates.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from omnifer import storage
from omnifer.catalog import DataCatalog, compaction
from omnifer.catalog.schemas import IMAGES
from omnifer.catalog.verify import verify_catalog
from omnifer.pipeline import ingest
from omnifer.sources import LocalSource

DATE = "2026-12-01"


def _pictures(folder: Path, n: int) -> Path:
    """``n`` small PNGs of distinct flat colours (no faces: no model needed)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        Image.new("RGB", (48, 40), colour).save(folder / f"p{i:02d}.png")
    return folder


def _night(catalog: DataCatalog, folder: Path) -> list[ingest.ShardResult]:
    params = ingest.IngestParams(model_version="v1", model_uri="unused-no-faces-here")
    plan = ingest.plan_ingest(catalog, [LocalSource(root=str(folder))], DATE, params,
                              shard_size=2)
    return [ingest.process_shard(catalog, plan, s, f"run-{plan.plan_id}") for s in plan.shards]


def _rows(catalog: DataCatalog) -> list[tuple]:
    return sorted(catalog.connect().execute(
        "SELECT source_uri, sha256, status, shard_id FROM images").fetchall())


def _kinds(report) -> dict[str, int]:
    return dict(sorted(report.counts().items()))


def test_deleted_night_is_found_repaired_and_rebuilt(
    data_catalog: DataCatalog, omnifer_home: Path, tmp_path: Path
) -> None:
    from omnifer.cli import app

    folder = _pictures(tmp_path / "pics", 6)
    first = _night(data_catalog, folder)
    assert len(first) == 3 and not any(r.skipped for r in first)
    compaction.compact_night(data_catalog, DATE, "compact-1")
    want = _rows(data_catalog)
    assert len(want) == 6
    assert verify_catalog(data_catalog).findings == []

    # -- the case: the night's data folders are deleted, the bookkeeping stays -------
    root = Path(data_catalog.catalog.root)
    for name in ("images", "faces", "scores"):
        shutil.rmtree(root / name / f"ingest_date={DATE}")
    again = _night(data_catalog, folder)  # an ingest of the night, as before the fix
    assert [r.skipped for r in again] == [True] * 3  # the markers still say done ...
    assert [r.missing_data for r in again] == [["images"]] * 3  # ... and now it is said
    assert _rows(data_catalog) == []

    report = verify_catalog(data_catalog)
    assert _kinds(report) == {"marker_without_data": 3, "state_missing_file": 3}
    assert report.nights == [DATE] and report.markers == 3
    assert all(not f.repaired for f in report.findings)
    runner = CliRunner()
    res = runner.invoke(app, ["catalog", "verify"])
    assert res.exit_code == 1, res.output
    assert "6 finding(s), 0 repaired, 6 unresolved" in res.output

    res = runner.invoke(app, ["catalog", "verify", "--repair"])
    assert res.exit_code == 0, (res.output, res.exception)
    assert "6 finding(s), 6 repaired, 0 unresolved" in res.output
    assert not list((root / "_shards" / f"ingest_date={DATE}").glob("*.json"))

    rebuilt = _night(data_catalog, folder)  # the rerun now rebuilds every shard
    assert [r.skipped for r in rebuilt] == [False] * 3
    assert _rows(data_catalog) == want
    assert verify_catalog(data_catalog).findings == []

    # -- part of a compacted night is lost: the shard is forgotten whole, then rebuilt once --
    compaction.compact_night(data_catalog, DATE, "compact-2")
    (compacted,) = data_catalog.partition_files("images", ingest_date=DATE)
    table = pq.read_table(compacted)
    victim = table["shard_id"][0].as_py()
    lost = table["source_uri"][0].as_py()
    pq.write_table(table.filter(pa.compute.not_equal(table["source_uri"], lost)), compacted)
    report = verify_catalog(data_catalog, dates=[DATE], repair=True)
    (finding,) = report.findings
    assert (finding.kind, finding.shard_id, finding.repaired) == ("marker_without_data",
                                                                  victim, True)
    assert "images has 1 of 2 rows" in finding.detail
    assert victim not in {r[3] for r in _rows(data_catalog)}  # its surviving row went too
    rebuilt = _night(data_catalog, folder)
    assert [r.shard_id for r in rebuilt if not r.skipped] == [victim]
    assert _rows(data_catalog) == want  # no row lost, none twice
    assert verify_catalog(data_catalog).findings == []


def test_data_without_marker_and_duplicate_keys_are_reported_not_changed(
    data_catalog: DataCatalog, omnifer_home: Path, tmp_path: Path
) -> None:
    folder = _pictures(tmp_path / "pics", 2)
    _night(data_catalog, folder)
    row = data_catalog.read("images").to_pylist()[0]
    # Rows of a shard that never committed and that no plan knows, repeating a listed object.
    stray = pa.Table.from_pylist([{**row, "shard_id": "nowhere"}], schema=IMAGES)
    data_catalog.write("images", "part-nowhere.parquet", stray, ingest_date=DATE)
    report = verify_catalog(data_catalog, repair=True)
    assert _kinds(report) == {"data_without_marker": 1, "duplicate_key": 1}
    assert all(not f.repaired for f in report.findings)
    orphan = next(f for f in report.findings if f.kind == "data_without_marker")
    assert orphan.shard_id == "nowhere" and "in no plan" in orphan.action
    dup = next(f for f in report.findings if f.kind == "duplicate_key")
    assert dup.dataset == "images" and "1 key(s)" in dup.detail
    assert storage.exists(data_catalog.file_uri("images", "part-nowhere.parquet",
                                                ingest_date=DATE))
    with pytest.raises(Exception, match="ISO date"):
        verify_catalog(data_catalog, dates=["2026/12/01"])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rerun_says_markers_blocked_it_and_rebuilds_after_repair(
    prefect_harness, ops_world: Path, ops_model: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The issue's example end to end: Prefect flow, faces and scores, the CLI."""
    import yaml

    from flows.ingest import nightly_ingest
    from omnifer.cli import app
    from omnifer.config import load_catalog
    from omnifer.models import versions
    from omnifer.testing.faults import catalog_rows

    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setenv("OMNIFER_INGEST__SHARD_SIZE", "4")  # reruns cut shards the same way
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "data_catalog.yaml")
                         .read_text())
    raw["root"] = str(tmp_path / "catalog")
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("OMNIFER_CATALOG", str(path))
    monkeypatch.delenv("OMNIFER_CATALOG_ROOT", raising=False)
    catalog = DataCatalog(load_catalog(path))
    versions.register_version(catalog, ops_model, "v1", metrics={"accuracy": 0.5})
    versions.record_event(catalog, "v1", "promoted", {"accuracy": 0.5})
    source = str(ops_world / "unlabeled")
    content = {"images": "source_uri, sha256, status, n_faces",
               "faces": "face_id, image_sha256, face_index",
               "scores": "face_id, model_version, label, round(confidence, 4)",
               "curated": "face_id, label, curated_version"}

    nightly_ingest(date=DATE, sources=[source], workers=2)
    want = catalog_rows(catalog, content)
    assert want["faces"] and want["scores"] and len(want["images"]) == 24

    root = Path(catalog.catalog.root)
    for name in ("images", "faces", "scores", "curated"):
        shutil.rmtree(root / name / f"ingest_date={DATE}")
    runner = CliRunner()
    res = runner.invoke(app, ["rerun", "--date", DATE, "--force"])
    assert res.exit_code == 0, (res.output, res.exception)
    out = " ".join(res.output.split())
    assert "6 committed shard(s) skipped, 0 ran again" in out
    assert "6 skipped shard(s) were blocked by their markers" in out
    assert "omnifer catalog verify --repair" in out
    assert catalog_rows(catalog, content)["images"] == []

    res = runner.invoke(app, ["catalog", "verify", "--date", DATE])
    assert res.exit_code == 1
    report = verify_catalog(catalog, dates=[DATE])
    # Every marker lost images, faces and scores (shards with faces) / images (without).
    assert report.counts() == {"state_missing_file": 3, "marker_without_data": 6}
    res = runner.invoke(app, ["catalog", "verify", "--repair"])
    assert res.exit_code == 0, (res.output, res.exception)

    res = runner.invoke(app, ["rerun", "--date", DATE, "--force"])
    assert res.exit_code == 0, (res.output, res.exception)
    assert "0 committed shard(s) skipped, 6 ran again" in " ".join(res.output.split())
    assert catalog_rows(catalog, content) == want
    assert verify_catalog(catalog).findings == []
