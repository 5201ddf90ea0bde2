"""Erasure requests: a face planted in three nights, curated, distilled and trained on, is
forgotten by its source; nothing in the catalog holds it afterwards (every Parquet, HTML, JSON
and PNG file is searched for its sha256s, face ids and crop bytes), what was derived from it is
stale or flagged, and it stays out of later crawls. Locally, on S3 (moto), and when the forget
is SIGKILLed at several points and run again.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from omnifer import storage
from omnifer.catalog import DataCatalog
from omnifer.catalog.compaction import compact_night
from omnifer.catalog.erasures import STATUS_ERASED, load_requests
from omnifer.catalog.runs import recorded_run
from omnifer.config import LabeledSpec, RetrainSettings, load_catalog
from omnifer.curation.curated import select_curated, undistilled_rows
from omnifer.curation.selection import SelectionPolicy
from omnifer.distill.config import make_config
from omnifer.distill.stage import distill_curated
from omnifer.erasure import find_erased_present, forget, make_rules
from omnifer.labels import CLASSES
from omnifer.models import versions
from omnifer.pipeline.ingest import summarize
from omnifer.report.build import build_report
from omnifer.storage.s3 import s3_client
from omnifer.testing.badinput import drawn_faces, encode_pil, to_pil
from omnifer.testing.faults import make_catalog, promote_tiny_model, run_night
from omnifer.training.retrain import retrain

REPO = Path(__file__).resolve().parents[1]
NIGHTS = ("2026-12-01", "2026-12-02", "2026-12-03")
LOOSE = SelectionPolicy(min_confidence=0.0, default_confidence=0.0, min_similarity=None,
                        require_flip_agreement=False)
TINY_DISTILL = {"iterations": 2, "ipc": 1, "batch_real": 4, "image_size": 16, "net_width": 8,
                "net_depth": 2, "device": "cpu"}
TINY_TRAIN = {"arch": "fercnn_tiny", "epochs": 1, "device": "cpu", "val_fraction": 0.0,
              "batch_size": 8}
REASON = "withdrawn by its publisher"


def _jpeg(seed: int) -> bytes:
    return encode_pil(to_pil(drawn_faces(1, 1, 192, seed)), "JPEG", quality=90)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three nights of sources: two bystanders a night, and the planted person's photo in the
    ``withdrawn/`` source every night (one photo, a byte apart each night: three contents, the
    same face); night 2 also holds night 1's exact bytes in another source. Plus a labeled
    image folder for retraining."""
    root = tmp_path_factory.mktemp("erasure-world")
    person = _jpeg(900)
    for k in range(3):
        (root / "others" / f"n{k}").mkdir(parents=True)
        for j in range(2):
            (root / "others" / f"n{k}" / f"face-{j}.jpg").write_bytes(_jpeg(100 + 10 * k + j))
        (root / "withdrawn" / f"n{k}").mkdir(parents=True)
        (root / "withdrawn" / f"n{k}" / "person.jpg").write_bytes(person + bytes(k))
    (root / "mirror").mkdir()
    (root / "mirror" / "copy.jpg").write_bytes(person)
    (root / "later").mkdir()
    (root / "later" / "holiday-2027.jpg").write_bytes(person + bytes(1))  # night 2's bytes
    for split, n in (("train", 2), ("test", 1)):
        for c, label in enumerate(CLASSES):
            folder = root / "labeled" / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"{i}.jpg").write_bytes(_jpeg(500 + 10 * c + i + (5 if split == "test"
                                                                            else 0)))
    return root


def _sources(world: Path, k: int) -> list[str]:
    out = [str(world / "others" / f"n{k}"), str(world / "withdrawn" / f"n{k}")]
    return out + ([str(world / "mirror")] if k == 1 else [])


def _night(catalog: DataCatalog, world: Path, k: int) -> None:
    """One night as the nightly flow records it (run record, compaction, selection, report)
    without Prefect; night 2 stays as shard files (not compacted)."""
    date, run_id = NIGHTS[k], f"night-{k}"
    sources = _sources(world, k)
    with recorded_run(catalog, run_id, "nightly-ingest", date, {"sources": sources}) as run:
        result = run_night(catalog, sources, date, shard_size=2, run_id=run_id)
        assert result.failed == {}
        if k != 1:
            compact_night(catalog, date, run_id)
        version = versions.primitive_model(catalog)[0]
        chosen = select_curated(catalog, date, LOOSE, version, run_id)
        run.finish("completed", {**summarize(catalog, date), "model_version": version,
                                 "curated_version": chosen.curated_version})
    build_report(catalog, run_id=run_id)


@dataclass
class Planted:
    catalog: DataCatalog
    path: Path  # the catalog file
    sha256s: list[str]
    face_ids: list[str]
    crops: list[bytes]
    distilled: str


def _build(root: Path, world: Path, data_root: str | None = None) -> Planted:
    catalog, path = make_catalog(root, "cat", data_root)
    promote_tiny_model(catalog, root / "model-v1")
    for k in range(3):
        _night(catalog, world, k)
    distilled = distill_curated(catalog, make_config(TINY_DISTILL), run_id="distill-1")
    settings = RetrainSettings(recipe="all", train=TINY_TRAIN, distill=TINY_DISTILL,
                               labeled=LabeledSpec(path=str(world / "labeled"), format="folder"))
    retrained = retrain(catalog, settings, run_id="retrain-1", replace=True,
                        work_dir=root / "retrain-work")
    assert retrained.model_version == "v2" and retrained.promoted
    con = catalog.connect()
    prefix = (world / "withdrawn").as_uri() + "/"
    shas = sorted(r[0] for r in con.execute(
        "SELECT DISTINCT sha256 FROM images WHERE starts_with(source_uri, ?)", [prefix]).fetchall())
    faces = con.execute("SELECT face_id, crop FROM faces WHERE list_contains(?, image_sha256)",
                        [shas]).fetchall()
    assert len(shas) == 3 and len(faces) == 3  # the face, once a night
    curated = con.execute("SELECT count(*) FROM curated WHERE list_contains(?, face_id)",
                          [[f for f, _ in faces]]).fetchone()[0]
    assert curated == 3
    return Planted(catalog, path, shas, sorted(f for f, _ in faces), [c for _, c in faces],
                   distilled.distilled_version)


# -- looking everywhere -------------------------------------------------------------------------
def _files(root: str) -> dict[str, bytes]:
    """Every file under the catalog root (local folder or S3 prefix), hidden ones included."""
    if root.startswith("s3://"):
        bucket, _, prefix = root[5:].partition("/")
        s3 = s3_client()
        out = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        return out
    return {str(p.relative_to(root)): p.read_bytes() for p in Path(root).rglob("*") if p.is_file()}


def _cells(table: pa.Table):  # noqa: ANN202 - a generator of cell values
    for column in table.columns:
        for value in column.to_pylist():
            if isinstance(value, list):
                yield from value
            else:
                yield value


def leftovers(p: Planted) -> list[str]:
    """Where the planted person still is: ``file: what`` for every file that holds one of
    its sha256s or face ids (as text), or one of its crops (as bytes or base64). The
    ``erasures`` dataset keeps the sha256s on purpose and is not searched."""
    texts = [*p.sha256s, *p.face_ids]
    blobs = [*p.crops, *(base64.b64encode(c) for c in p.crops)]
    found = []
    for name, data in _files(p.catalog.catalog.root).items():
        if "/erasures/" in f"/{name}":
            continue
        if name.endswith((".parquet", ".parquet.tmp")):
            try:
                cells = list(_cells(pq.read_table(pa.BufferReader(data))))
            except pa.ArrowInvalid:  # a partial staged file: search its bytes
                cells = [data]
            for cell in cells:
                if isinstance(cell, str) and any(t in cell for t in texts):
                    found.append(f"{name}: {cell[:70]}")
                elif isinstance(cell, bytes) and any(b in cell for b in blobs if b):
                    found.append(f"{name}: crop bytes")
        elif any(t.encode() in data for t in texts) or any(b in data for b in blobs):
            found.append(f"{name}: raw")
    return found


# -- a planted catalog, built once per module and copied per test --------------------------
@pytest.fixture(scope="module")
def template(omnifer_home: Path, world: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> Planted:
    return _build(tmp_path_factory.mktemp("erasure-template"), world)


def _copy(t: Planted, dest: Path) -> Planted:
    shutil.copytree(t.catalog.catalog.root, dest / "data")
    raw = yaml.safe_load(t.path.read_text())
    raw["root"] = str(dest / "data")
    path = dest / "cat.yaml"
    path.write_text(yaml.safe_dump(raw))
    return Planted(DataCatalog(load_catalog(path)), path, t.sha256s, t.face_ids, t.crops,
                   t.distilled)


# -- the behaviour ------------------------------------------------------------------------------
def _check_forgotten(p: Planted, world: Path, result_request: str) -> None:
    catalog = p.catalog
    assert leftovers(p) == []
    assert find_erased_present(catalog) == []
    (request,) = load_requests(catalog)
    assert request.request_id == result_request and request.state == "done"
    assert request.reason == REASON and request.done_at >= request.requested_at
    assert [r.rule for r in request.rules] == ["source_prefix"]
    assert request.sha256s == p.sha256s and set(p.face_ids) <= set(request.face_ids)
    assert request.stale_distilled == [p.distilled] and request.flagged_models == ["v2"]
    assert len(request.reports) == 3  # each night's report showed the face
    con = catalog.connect()
    # Bystanders untouched: 6 faces, 2 a night, scored and curated.
    assert con.execute("SELECT count(*) FROM faces").fetchone()[0] == 6
    assert con.execute("SELECT count(*) FROM curated").fetchone()[0] == 6
    assert con.execute("SELECT count(*) FROM images").fetchone()[0] == 6
    # Distilled: the stale version and its grids are gone; the next distillation rebuilds
    # from the remaining curated faces, under a new version.
    assert con.execute("SELECT count(*) FROM distilled").fetchone()[0] == 0
    assert storage.list_files(catalog.distilled_grids_uri(p.distilled)) == []
    assert undistilled_rows(catalog) == 6
    rebuilt = distill_curated(catalog, make_config(TINY_DISTILL), run_id="distill-2")
    assert rebuilt.distilled_version != p.distilled and not rebuilt.skipped
    assert rebuilt.curated_rows == 6
    # The model is flagged, in the registry, `omnifer models list` and the rebuilt reports.
    assert versions.flagged_versions(catalog) == {"v2": [request.request_id]}
    for uri in request.reports:
        page = storage.read_bytes(uri).decode()
        assert "trained on erased data" in page and "data-k='model:v2:trained_on_erased'" in page
    # The next crawl: the same bytes under a new name, and the withdrawn source listed again.
    version = versions.primitive_model(catalog)[0]
    sources = [str(world / "later"), str(world / "withdrawn")]
    assert run_night(catalog, sources, "2026-12-09", shard_size=4).failed == {}
    rows = catalog.connect().execute(
        "SELECT source_uri, status, sha256, n_faces FROM images WHERE ingest_date = "
        "'2026-12-09' ORDER BY source_uri").fetchall()
    assert len(rows) == 4 and {r[1] for r in rows} == {STATUS_ERASED}
    assert all(r[2] is None and r[3] == 0 for r in rows)
    assert catalog.connect().execute("SELECT count(*) FROM faces WHERE ingest_date = "
                                     "'2026-12-09'").fetchone()[0] == 0
    assert version == "v2"
    assert leftovers(p) == []


@pytest.mark.slow
def test_forget_a_source_reaches_every_night_and_everything_derived(
    template: Planted, world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from omnifer.cli import app

    p = _copy(template, tmp_path)
    assert len(leftovers(p)) > 10  # the search finds the person before the erasure
    monkeypatch.setenv("OMNIFER_CATALOG", str(p.path))
    runner = CliRunner()
    prefix = str(world / "withdrawn")

    dry = runner.invoke(app, ["forget", "--source-prefix", prefix, "--dry-run"])
    assert dry.exit_code == 0, (dry.output, dry.exception)
    for night in NIGHTS:
        assert f"faces\t{night}\t1" in dry.output and f"curated\t{night}\t1" in dry.output
    assert "images\t2026-12-02\t2" in dry.output  # the mirror's copy of the same bytes
    assert p.distilled in dry.output and "v2 (" in dry.output
    assert load_requests(p.catalog) == [] and len(leftovers(p)) > 10  # nothing was done

    res = runner.invoke(app, ["forget", "--source-prefix", prefix, "--reason", REASON])
    assert res.exit_code == 0, (res.output, res.exception)
    request_id = res.output.split("request ")[1].split(":")[0]
    listed = runner.invoke(app, ["models", "list"])
    assert "trained_on_erased" in listed.output and request_id in listed.output
    check = runner.invoke(app, ["erasures", "check"])
    assert check.exit_code == 0 and "no erased content" in check.output
    _check_forgotten(p, world, request_id)

    again = runner.invoke(app, ["forget", "--source-prefix", prefix, "--reason", REASON])
    assert again.exit_code == 0 and request_id in again.output  # nothing new: no new request
    assert len(load_requests(p.catalog)) == 1


@pytest.mark.slow
def test_forget_on_s3(omnifer_home: Path, world: Path, s3_server: str, tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    s3.create_bucket(Bucket="erasure")
    monkeypatch.setenv("OMNIFER_S3_ENDPOINT_URL", s3_server)
    p = _build(tmp_path, world, data_root="s3://erasure/cat")
    assert len(leftovers(p)) > 10
    result = forget(p.catalog, make_rules([str(world / "withdrawn")]), REASON)
    assert result.state == "done" and result.removed["faces"] == {n: 1 for n in NIGHTS}
    _check_forgotten(p, world, result.request_id)


# -- faults -------------------------------------------------------------------------------------
def _state(p: Planted) -> dict[str, list]:
    """Everything a forget decides, minus times, run ids and the request id."""
    con = p.catalog.connect()
    out = {name: sorted(con.execute(sql).fetchall(), key=repr) for name, sql in {
        "images": "SELECT ingest_date, source_uri, sha256, status, n_faces FROM images",
        "faces": "SELECT ingest_date, face_id, image_sha256, crop FROM faces",
        "scores": "SELECT ingest_date, face_id, model_version, label FROM scores",
        "curated": "SELECT ingest_date, face_id, curated_version, label FROM curated",
        "distilled": "SELECT distilled_version, class, index FROM distilled",
        "models": "SELECT model_version, event, json_extract_string(metrics, '$.why') "
                  "FROM models",
    }.items()}
    out["erasures"] = [(r.state, r.sha256s, r.face_ids, r.curated_versions, r.stale_distilled,
                        r.flagged_models, len(r.reports)) for r in load_requests(p.catalog)]
    out["reports"] = sorted(u.rsplit("_reports/", 1)[1]
                            for u in storage.list_files(p.catalog.reports_uri(), ".html"))
    return out


CLEAN: dict[str, dict] = {}


@pytest.mark.slow
@pytest.mark.parametrize("mode", [
    "step:requested",  # the request is recorded; nothing else
    "replace:4",  # curated: night 1 rewritten, nights 2 and 3 not
    "after-link:4",  # faces: night 1 switched, the files it replaced still on disk
    "replace:13",  # images: night 2's merged file staged, not in place
    "replace:17",  # rows gone (state applied), one report rebuilt of three
])
def test_a_forget_killed_anywhere_then_run_again_ends_exactly_as_a_clean_one(
    mode: str, template: Planted, world: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if "state" not in CLEAN:  # one uninterrupted forget of the same catalog, once
        reference = _copy(template, tmp_path / "clean")
        forget(reference.catalog, make_rules([str(world / "withdrawn")]), REASON)
        CLEAN["state"] = _state(reference)
    clean = CLEAN["state"]

    p = _copy(template, tmp_path / "killed")
    monkeypatch.setenv("OMNIFER_CATALOG", str(p.path))
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "helpers_forget.py"), mode, str(p.path),
         str(world / "withdrawn")],
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}, cwd=REPO, capture_output=True,
        text=True, timeout=300)
    assert proc.returncode == -9, proc.stdout + proc.stderr[-3000:]  # really killed
    (open_request,) = load_requests(p.catalog)
    assert open_request.state in ("requested", "applied")

    result = forget(p.catalog, make_rules([str(world / "withdrawn")]), REASON)
    assert result.resumed and result.request_id == open_request.request_id
    assert _state(p) == clean
    assert leftovers(p) == [] and find_erased_present(p.catalog) == []


def test_rules_from_options_and_lists(tmp_path: Path) -> None:
    from omnifer.erasure import read_rule_file
    from omnifer.errors import ConfigError

    folder = tmp_path / "src"
    folder.mkdir()
    sha, face = "ab" * 32, "cd" * 16
    listing = tmp_path / "list.txt"
    listing.write_text(f"# withdrawn\n{sha}\nface_id:{face}\n{folder}\n\ns3://b/p/x\n")
    rules = read_rule_file(listing)
    assert [(r.rule, r.value) for r in rules] == [
        ("sha256", sha), ("face_id", face), ("source_prefix", folder.as_uri() + "/"),
        ("source_prefix", "s3://b/p/x")]
    both = make_rules([str(folder)], [sha.upper()], [], listing)
    assert len(both) == 4  # deduplicated, hex lower-cased
    with pytest.raises(ConfigError, match="sha256"):
        make_rules([], ["12ab"])
    with pytest.raises(ConfigError, match="say what to forget"):
        make_rules()


def test_forget_a_face_and_a_photo_keeps_the_rest_and_blocks_them(
    omnifer_home: Path, world: Path, tmp_path: Path,
) -> None:
    """A face request removes that face's rows only (the photo's row stays, as do the other
    faces); a sha256 request removes the photo, its faces and what was made from them; both
    keep them out of later crawls, and a compaction after the fact brings nothing back."""
    catalog, _ = make_catalog(tmp_path, "cat")
    promote_tiny_model(catalog, tmp_path / "model")
    sources = [str(world / "others" / "n0"), str(world / "withdrawn" / "n0")]
    assert run_night(catalog, sources, NIGHTS[0], shard_size=2).failed == {}
    select_curated(catalog, NIGHTS[0], LOOSE, "v1", "select-1")
    con = catalog.connect()
    faces = con.execute("SELECT face_id, image_sha256, source_uri FROM faces "
                        "ORDER BY source_uri").fetchall()
    assert len(faces) == 3
    (bystander, bystander_sha, _), (other, other_sha, _), (person, person_sha, _) = faces

    result = forget(catalog, make_rules(face_ids=[bystander]), "asked by the person")
    assert result.removed == {"curated": {NIGHTS[0]: 1}, "scores": {NIGHTS[0]: 1},
                              "faces": {NIGHTS[0]: 1}}
    con = catalog.connect()
    assert con.execute("SELECT count(*) FROM images WHERE sha256 = ?",
                       [bystander_sha]).fetchone()[0] == 1  # the photo stays
    assert {r[0] for r in con.execute("SELECT face_id FROM faces").fetchall()} == {other, person}

    result = forget(catalog, make_rules(sha256s=[person_sha]), "asked by the person")
    assert result.removed["images"] == {NIGHTS[0]: 1}
    con = catalog.connect()
    assert con.execute("SELECT count(*) FROM images").fetchone()[0] == 2
    assert {r[0] for r in con.execute("SELECT face_id FROM scores").fetchall()} == {other}
    assert {r[0] for r in con.execute("SELECT face_id FROM curated").fetchall()} == {other}

    # Both erased faces come back the next night under other names: neither is kept.
    again = tmp_path / "again"
    again.mkdir()
    shutil.copy(world / "withdrawn" / "n0" / "person.jpg", again / "renamed.jpg")
    bystander_file = next(p for p in (world / "others" / "n0").iterdir()
                          if p.as_uri() == faces[0][2])
    (again / "bystander.jpg").write_bytes(bystander_file.read_bytes() + b"\0")
    assert run_night(catalog, [str(again)], NIGHTS[1], shard_size=4).failed == {}
    con = catalog.connect()
    rows = dict(con.execute("SELECT source_uri, status FROM images WHERE ingest_date = ?",
                            [NIGHTS[1]]).fetchall())
    assert rows[(again / "renamed.jpg").as_uri()] == STATUS_ERASED
    # New bytes (a byte appended): new content, so a new face id; the old one stays out.
    assert con.execute("SELECT count(*) FROM faces WHERE face_id IN (?, ?)",
                       [bystander, person]).fetchone()[0] == 0
    compact_night(catalog, NIGHTS[0], "compact-late")
    assert find_erased_present(catalog) == []
    assert json.loads(json.dumps([r.state for r in load_requests(catalog)])) == ["done", "done"]


def test_an_ingest_that_overlaps_a_forget_does_not_bring_rows_back(
    omnifer_home: Path, world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A shard that read the withdrawn source before the request and commits after the whole
    forget is done: its commit finds the new request and removes what it just wrote."""
    import threading

    from omnifer.pipeline import ingest
    from omnifer.sources import parse_source

    catalog, _ = make_catalog(tmp_path, "cat")
    promote_tiny_model(catalog, tmp_path / "model")
    assert run_night(catalog, _sources(world, 0), NIGHTS[0], shard_size=4).failed == {}
    version, uri = versions.primitive_model(catalog)
    plan = ingest.plan_ingest(catalog, [parse_source(s) for s in _sources(world, 1)], NIGHTS[1],
                              ingest.IngestParams(model_version=version, model_uri=uri), 8)
    (shard,) = plan.shards
    scored, release = threading.Event(), threading.Event()
    real = ingest.score_faces

    def slow_scoring(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        scored.set()
        assert release.wait(120)
        return real(*args, **kwargs)

    monkeypatch.setattr(ingest, "score_faces", slow_scoring)
    results: list = []
    worker = threading.Thread(target=lambda: results.append(
        ingest.process_shard(catalog, plan, shard, "overlap")))
    worker.start()
    assert scored.wait(120)  # the shard has read and detected its images, nothing committed
    result = forget(catalog, make_rules([str(world / "withdrawn")]), REASON)
    assert result.state == "done" and result.removed["faces"] == {NIGHTS[0]: 1}
    release.set()
    worker.join(120)
    assert results and results[0].faces == 3  # it did find the person's face
    con = catalog.connect()
    withdrawn = (world / "withdrawn").as_uri()
    for name in ("images", "faces"):
        assert con.execute(f"SELECT count(*) FROM {name} WHERE starts_with(source_uri, ?)",
                           [withdrawn]).fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM faces WHERE ingest_date = ?",
                       [NIGHTS[1]]).fetchone()[0] == 2  # the bystanders stay
    assert con.execute("SELECT count(*) FROM scores").fetchone()[0] == 4
    assert find_erased_present(catalog) == []


@pytest.mark.slow
def test_a_flagged_primitive_model_is_replaced_when_configured(
    template: Planted, world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from omnifer.config import load_settings

    p = _copy(template, tmp_path)
    monkeypatch.setenv("OMNIFER_ERASURE__RETRAIN", "true")
    monkeypatch.setenv("OMNIFER_RETRAIN__RECIPE", "all")
    monkeypatch.setenv("OMNIFER_RETRAIN__LABELED", json.dumps(
        {"path": str(world / "labeled"), "format": "folder"}))
    monkeypatch.setenv("OMNIFER_RETRAIN__TRAIN", json.dumps(TINY_TRAIN))
    monkeypatch.setenv("OMNIFER_RETRAIN__DISTILL", json.dumps(TINY_DISTILL))
    assert versions.primitive_model(p.catalog)[0] == "v2"  # trained on the person
    result = forget(p.catalog, make_rules([str(world / "withdrawn")]), REASON,
                    settings=load_settings())
    assert result.state == "done" and result.retrained_model == "v3"
    assert versions.primitive_model(p.catalog)[0] == "v3"
    (request,) = load_requests(p.catalog)
    assert request.retrained_model == "v3" and request.state == "done"
    assert versions.flagged_versions(p.catalog) == {"v2": [request.request_id]}
    registered = versions.history(p.catalog, "v3")
    lineage = json.loads(registered["train_datasets"])
    assert request.request_id in lineage["erasures"] and lineage["teacher"] is None
    assert lineage["distilled"] not in (None, p.distilled)  # distilled again, without her
    assert lineage["curated"] == sorted(request.curated_versions)
    assert leftovers(p) == [] and find_erased_present(p.catalog) == []
