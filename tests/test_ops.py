"""Operations for real: fail a shard on purpose, rerun it, retry failed rows, query S3.

Failures are caused, not mocked: a folder where a shard's Parquet file must go (the commit's
rename fails), source files that vanish between listing and reading, a retry whose commit
cannot stage its file. Each test fixes the cause, then checks the catalog against one clean
run of the same world (same rows, no duplicates) and the provenance of what ran again.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from omnifer.catalog import DataCatalog, runs
from omnifer.catalog.schemas import FACES, IMAGES, SCORES
from omnifer.config import load_catalog, load_settings
from omnifer.errors import StorageError
from omnifer.models import versions
from omnifer.pipeline import ingest, retry
from omnifer.sources import parse_source
from omnifer.testing.faults import catalog_rows

REPO = Path(__file__).resolve().parents[1]
DATE = "2026-11-30"


def _catalog(tmp_path: Path, name: str, model: Path | None,
             monkeypatch: pytest.MonkeyPatch) -> DataCatalog:
    """A fresh catalog under tmp_path, made the current one (OMNIFER_CATALOG), model promoted."""
    raw = yaml.safe_load((REPO / "data_catalog.yaml").read_text())
    raw["root"] = str(tmp_path / name)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("OMNIFER_CATALOG", str(path))
    monkeypatch.delenv("OMNIFER_CATALOG_ROOT", raising=False)
    catalog = DataCatalog(load_catalog(path))
    if model is not None:
        versions.register_version(catalog, model, "v1", metrics={"accuracy": 0.5})
        versions.record_event(catalog, "v1", "promoted", {"accuracy": 0.5})
    return catalog


def _preplan(catalog: DataCatalog, source: str, shard_size: int = 4) -> ingest.IngestPlan:
    """Write the night's plan as the flow would, so the test knows the shard ids up front
    (the flow resumes an unfinished plan instead of listing again)."""
    settings = load_settings()
    version, uri = versions.primitive_model(catalog)
    params = ingest.IngestParams(**settings.ingest.model_dump(exclude={"shard_size", "workers"}),
                                 model_version=version, model_uri=uri)
    return ingest.plan_ingest(catalog, [parse_source(source)], DATE, params, shard_size)


def _rows(catalog: DataCatalog) -> dict[str, list[tuple]]:
    """The night's content, minus what legitimately differs per run (run ids, times, files)."""
    return catalog_rows(catalog, {
        "images": "source_uri, sha256, status, n_faces",
        "faces": "face_id, image_sha256, face_index, bbox",
        "scores": "face_id, status, label, round(confidence, 4)",
        "curated": "face_id, label, curated_version",
    })


def _assert_no_duplicates(catalog: DataCatalog) -> None:
    con = catalog.connect()
    for name, key in [("images", "source_uri"), ("faces", "face_id"), ("scores", "face_id"),
                      ("curated", "face_id")]:
        n, distinct = con.execute(f"SELECT count(*), count(DISTINCT {key}) FROM {name}").fetchone()
        assert n == distinct, f"duplicate rows in {name}"


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rerun_redoes_only_the_failed_shards(
    prefect_harness, ops_world: Path, ops_model: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows.ingest import nightly_ingest
    from omnifer.cli import app

    monkeypatch.setenv("COLUMNS", "250")  # rich wraps tables at 80 columns otherwise
    source = str(ops_world / "unlabeled")
    clean = _catalog(tmp_path, "clean", ops_model, monkeypatch)
    nightly_ingest(date=DATE, sources=[source], shard_size=4, workers=2)
    want = _rows(clean)

    broken = _catalog(tmp_path, "broken", ops_model, monkeypatch)
    plan = _preplan(broken, source)
    assert len(plan.shards) == 6
    doomed = sorted(s.shard_id for s in plan.shards[1::3])
    # The cause: a folder sits where each doomed shard's faces file must be renamed to.
    obstacles = [Path(broken.file_uri("faces", f"part-{sid}.parquet", ingest_date=DATE))
                 for sid in doomed]
    for path in obstacles:
        path.mkdir(parents=True)

    state = nightly_ingest(date=DATE, sources=[source], shard_size=4, workers=2,
                           return_state=True)
    assert state.is_failed()
    first_id = str(state.state_details.flow_run_id)
    first = runs.get_run(broken, first_id)
    assert first["state"] == "failed"
    assert first["summary"]["plan_id"] == plan.plan_id
    assert sorted(first["stages"]["shards"]["failed_ids"]) == doomed
    markers = Path(broken.aux_uri("_shards", f"ingest_date={DATE}"))
    committed = sorted(p.stem for p in markers.iterdir())
    assert len(committed) == 4 and not set(committed) & set(doomed)

    runner = CliRunner()
    res = runner.invoke(app, ["runs"])
    assert res.exit_code == 0, res.output
    assert first_id in res.output and "shards: failed (shards=6 done=4 skipped=0 failed=2 " \
        in res.output

    for path in obstacles:  # the fix
        path.rmdir()
    marker_times = {p.name: p.stat().st_mtime_ns for p in markers.iterdir()}
    res = runner.invoke(app, ["rerun", first_id[:8]])  # a unique prefix of the id will do
    assert res.exit_code == 0, (res.output, res.exception)
    assert "4 committed shard(s) skipped, 2 ran again, 0 failed" in _flat(res.output)

    (second,) = [r for r in runs.list_runs(broken) if r["run_id"] != first_id]
    assert second["flow"] == "nightly-ingest"
    assert second["state"] == "completed"
    assert second["parameters"] == first["parameters"]
    assert second["resumes"] == first_id  # the two records are linked
    assert runs.get_run(broken, first_id)["resumed_by"] == second["run_id"]
    assert sorted(second["stages"]["shards"]["ran_ids"]) == doomed
    assert second["stages"]["shards"]["skipped"] == 4
    # Only the failed shards were processed again: their rows carry the rerun's id, the
    # committed shards' rows and markers are untouched.
    con = broken.connect()
    run_of = dict(con.execute("SELECT shard_id, list(DISTINCT run_id) FROM images "
                              "GROUP BY shard_id").fetchall())
    assert run_of == {s.shard_id: [second["run_id"] if s.shard_id in doomed else first_id]
                      for s in plan.shards}
    for name, mtime in marker_times.items():
        assert (markers / name).stat().st_mtime_ns == mtime
    # The rows equal one clean run, with no duplicates.
    assert _rows(broken) == want
    _assert_no_duplicates(broken)

    # A completed run has nothing to rerun; an unknown one is one clear error.
    res = runner.invoke(app, ["rerun", second["run_id"]])
    assert res.exit_code == 0 and "nothing to rerun" in res.output
    res = runner.invoke(app, ["rerun", "no-such-run"])
    assert res.exit_code != 0 and "no run id starts with 'no-such-run'" in str(res.exception)


def _rewrite(path: Path, schema: pa.Schema, change) -> int:
    """Apply ``change(row) -> row | None`` to every row of one Parquet file; rows changed."""
    rows = pq.read_table(path, schema=schema).to_pylist()
    out, changed = [], 0
    for row in rows:
        new = change(dict(row))
        changed += new != row
        if new is not None:
            out.append(new)
    pq.write_table(pa.Table.from_pylist(out, schema=schema), path)
    return changed


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_retry_failed_fetch_detect_and_score(
    prefect_harness, ops_world: Path, ops_model: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows.ingest import nightly_ingest
    from omnifer.cli import app

    monkeypatch.setenv("COLUMNS", "250")
    world = tmp_path / "unlabeled"
    shutil.copytree(ops_world / "unlabeled", world)  # copy2: same mtimes, same versions
    clean = _catalog(tmp_path, "clean", ops_model, monkeypatch)
    nightly_ingest(date=DATE, sources=[str(world)], shard_size=4, workers=2)
    want = _rows(clean)
    with_faces = [r[0] for r in clean.connect().execute(
        "SELECT source_uri, shard_id FROM images WHERE status = 'ok' ORDER BY shard_id, "
        "source_uri").fetchall()]
    assert len(with_faces) >= 6

    # -- fetch: three files vanish between listing and reading, then come back ------------
    broken = _catalog(tmp_path, "broken", ops_model, monkeypatch)
    plan = _preplan(broken, str(world))
    # One image from each of three shards: after the flow's compaction they share one images
    # file per dataset, which the retry flow's parallel shard tasks must all update.
    first_of_shard = {}
    for uri, shard_id in clean.connect().execute(
            "SELECT source_uri, shard_id FROM images WHERE status = 'ok' ORDER BY ALL").fetchall():
        first_of_shard.setdefault(shard_id, uri)
    picked = sorted(first_of_shard.values())[:3]
    assert len(picked) == 3
    victims = [Path(u.removeprefix("file://")) for u in picked]
    away = tmp_path / "away"
    away.mkdir()
    for i, path in enumerate(victims):
        path.rename(away / f"{i}")
    summary = nightly_ingest(date=DATE, sources=[str(world)], shard_size=4, workers=2)
    assert summary["images_by_status"].get("missing") == 3
    assert _rows(broken) != want
    for i, path in enumerate(victims):
        (away / f"{i}").rename(path)  # rename keeps the mtime: the same object version

    # A retry that crashes at its commit (its staging folder is a file) leaves no half state:
    # the images rows still say missing, and the next retry writes the same files again.
    staging = Path(broken.uri("images")) / "_staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.write_text("in the way")
    with pytest.raises(StorageError):
        retry.retry_failed(broken, "fetch", "crashed-retry", DATE)
    assert len(retry.find_failed(broken, "fetch", DATE)) >= 1
    staging.unlink()

    runner = CliRunner()
    res = runner.invoke(app, ["retry-failed", "--stage", "fetch", "--date", DATE])
    assert res.exit_code == 0, (res.output, res.exception)
    (retry_run,) = [r for r in runs.list_runs(broken) if r["flow"] == "retry-failed"]
    assert retry_run["state"] == "completed"
    assert retry_run["stages"]["retry"]["recovered"] == 3
    assert _rows(broken) == want
    _assert_no_duplicates(broken)
    con = broken.connect()
    retried = con.execute("SELECT source_uri FROM images WHERE run_id = ?",
                          [retry_run["run_id"]]).fetchall()
    assert sorted(r[0] for r in retried) == picked
    assert retry.find_failed(broken, "fetch") == []
    res = runner.invoke(app, ["retry-failed", "--stage", "fetch"])
    assert res.exit_code == 0 and "no rows with a failed fetch stage" in res.output
    # Markers keep true counts after the retry.
    marker_faces = sum(ingest.shard_done(broken, s).faces for s in plan.shards)
    assert marker_faces == len(want["faces"])

    # -- detect: plant what a failed detection leaves (status, no faces, no scores) --------
    target = with_faces[-1]
    shard = con.execute("SELECT shard_id, sha256 FROM images WHERE source_uri = ?",
                        [target]).fetchone()
    sid, sha = shard

    def night(name: str, schema: pa.Schema, change) -> int:
        # The flow compacted the night: the shard's rows live in one file per dataset.
        files = broken.partition_files(name, ingest_date=DATE)
        assert len(files) == 1 and "/compact-" in files[0]
        return _rewrite(Path(files[0]), schema, change)

    def fail_detect(row: dict) -> dict:
        if row["source_uri"] == target:
            row.update(status="detect_failed", error="RuntimeError: planted", n_faces=0)
        return row

    face_ids = {r[0] for r in con.execute("SELECT face_id FROM faces WHERE image_sha256 = ?",
                                          [sha]).fetchall()}
    assert face_ids
    assert night("images", IMAGES, fail_detect) == 1
    assert night("faces", FACES,
                 lambda r: None if r["face_id"] in face_ids else r) == len(face_ids)
    night("scores", SCORES, lambda r: None if r["face_id"] in face_ids else r)
    assert _rows(broken) != want
    res = runner.invoke(app, ["retry-failed", "--stage", "detect", "--date", DATE])
    assert res.exit_code == 0, (res.output, res.exception)
    assert _rows(broken) == want
    _assert_no_duplicates(broken)

    # -- score: plant failed score rows; the retry scores those faces again ----------------
    con = broken.connect()
    victims_scores = {r[0] for r in con.execute(
        "SELECT face_id FROM scores WHERE shard_id = ? ORDER BY face_id LIMIT 2",
        [sid]).fetchall()}

    def fail_score(row: dict) -> dict:
        if row["face_id"] in victims_scores:
            row.update(status="score_failed", error="RuntimeError: planted", label=None,
                       label_index=None, probs=None, confidence=None, margin=None)
        return row

    changed = sum(_rewrite(Path(p), SCORES, fail_score)
                  for p in broken.partition_files("scores", ingest_date=DATE))
    assert changed == len(victims_scores) > 0
    assert _rows(broken) != want
    assert [t.shard_id for t in retry.find_failed(broken, "score", DATE)] == [sid]
    res = runner.invoke(app, ["retry-failed", "--stage", "score"])
    assert res.exit_code == 0, (res.output, res.exception)
    assert _rows(broken) == want
    _assert_no_duplicates(broken)


def test_retry_failed_rejects_an_unknown_stage(data_catalog: DataCatalog) -> None:
    from omnifer.cli import app

    res = CliRunner().invoke(app, ["retry-failed", "--stage", "nope"])
    assert res.exit_code != 0 and "unknown stage 'nope'" in str(res.exception)
    res = CliRunner().invoke(app, ["retry-failed", "--stage", "detect"])
    assert res.exit_code == 0 and "no rows with a failed detect stage" in res.output


def test_sql_over_an_s3_catalog_prints_and_writes_csv_and_parquet(
    s3_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from omnifer.catalog import connect
    from omnifer.cli import app

    monkeypatch.setenv("OMNIFER_S3_ENDPOINT_URL", s3_server)
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="opslake")
    raw = yaml.safe_load((REPO / "data_catalog.yaml").read_text())
    raw["root"] = "s3://opslake/omnifer"
    path = tmp_path / "s3.yaml"
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("OMNIFER_CATALOG", str(path))
    catalog = DataCatalog(load_catalog(path))
    nights = {"2026-11-28": ["a", "b", "c"], "2026-11-29": ["d", "e"]}
    for night, names in nights.items():
        rows = [{"source_uri": f"s3://raw/{n}.jpg", "sha256": hashlib.sha256(n.encode())
                 .hexdigest(), "status": "ok" if n != "b" else "corrupt", "n_faces": 1}
                for n in names]
        catalog.write("images", "part-x.parquet", pa.Table.from_pylist(rows, schema=IMAGES),
                      ingest_date=night)
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3_server)
            .list_objects_v2(Bucket="opslake")["Contents"]]
    assert sorted(keys) == [f"omnifer/images/ingest_date={d}/part-x.parquet" for d in nights]

    query = ("SELECT ingest_date, status, count(*) AS n FROM images "
             "GROUP BY ALL ORDER BY ALL")
    expected = [("2026-11-28", "corrupt", 1), ("2026-11-28", "ok", 2), ("2026-11-29", "ok", 2)]
    runner = CliRunner()
    res = runner.invoke(app, ["sql", query])
    assert res.exit_code == 0, (res.output, res.exception)
    assert "2026-11-29" in res.output and "corrupt" in res.output
    for suffix in (".csv", ".parquet"):
        out = tmp_path / f"result{suffix}"
        res = runner.invoke(app, ["sql", query, "--out", str(out)])
        assert res.exit_code == 0, (res.output, res.exception)
        assert "wrote 3 rows" in res.output
        table = pacsv.read_csv(out) if suffix == ".csv" else pq.read_table(out)
        got = [(str(r["ingest_date"]), r["status"], r["n"]) for r in table.to_pylist()]
        assert got == expected
    # Python: the same views; every dataset is a view, empty ones included.
    con = connect()
    assert con.execute(query).fetchall() == expected
    assert con.execute("SELECT count(*) FROM curated").fetchone() == (0,)
