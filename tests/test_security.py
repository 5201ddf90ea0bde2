"""Security at the level of a whole shard: what URL sources may fetch, paths that try to leave
their root, credentials that must never reach logs, rows or reports, and model files that
must load without running pickle code. (Unit-level checks of the same guards live in
``test_sources.py``.)"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from pathlib import Path

import pytest
from helpers_http import http_server

from omnifer.catalog import DataCatalog, runs
from omnifer.errors import ModelFileError
from omnifer.models.versions import primitive_model
from omnifer.pipeline import ingest
from omnifer.sources import LocalSource, UrlManifestSource, url_identity
from omnifer.testing.badinput import drawn_faces, encode_pil, to_pil
from omnifer.testing.faults import promote_tiny_model, run_night, tiny_checkpoint

DATE = "2026-11-29"
REPO = Path(__file__).resolve().parents[1]
FACE_JPEG = encode_pil(to_pil(drawn_faces(1, 1, 192, 5)), "JPEG", quality=90)


@pytest.fixture(scope="module")
def web():
    with http_server(FACE_JPEG) as server:
        yield server


@pytest.fixture()
def promoted(omnifer_home: Path, data_catalog: DataCatalog, tmp_path: Path) -> DataCatalog:
    promote_tiny_model(data_catalog, tmp_path / "model")
    return data_catalog


def _shard(catalog: DataCatalog, spec, uris: list[str]) -> dict[str, tuple]:
    """Process one hand-made shard of ``uris`` from ``spec``; rows by source_uri."""
    version, uri = primitive_model(catalog)
    params = ingest.IngestParams(model_version=version, model_uri=uri)
    shard = ingest.ShardSpec(shard_id=f"sec-{abs(hash(tuple(uris))) % 10**8}",
                             ingest_date=DATE,
                             objects=[ingest.ObjectRef(source=0, uri=u) for u in uris])
    plan = ingest.IngestPlan(plan_id="sec", ingest_date=DATE,
                             sources=[spec.model_dump(mode="json")], params=params,
                             shards=[shard])
    ingest.process_shard(catalog, plan, shard, "security")
    rows = catalog.connect().execute(
        "SELECT source_uri, status, error, sha256 FROM images WHERE shard_id = ?",
        [shard.shard_id]).fetchall()
    return {r[0]: r[1:] for r in rows}


# -- URL sources ---------------------------------------------------------------------------------
def test_url_policy_in_a_shard(promoted: DataCatalog, web) -> None:
    base = web.base_url
    strict = UrlManifestSource(manifest="unused.csv")  # defaults: no private addresses
    before = sum(web.hits.values())
    rows = _shard(promoted, strict, [f"{base}/img.png", "http://localhost:9/x.jpg",
                                     "http://169.254.169.254/latest/meta-data/",
                                     "http://10.0.0.1/x.jpg", "http://[::1]:9/x.jpg"])
    assert {s for s, *_ in rows.values()} == {"forbidden_url"}
    assert sum(web.hits.values()) == before  # refused before any connection

    allowed = UrlManifestSource(manifest="unused.csv", allow_private=True, max_redirects=3,
                                max_bytes=100_000, retries=1, backoff_s=0.01, timeout_s=5)
    rows = _shard(promoted, allowed, [
        f"{base}/img.png", f"{base}/redirect/2", f"{base}/redirect/9", f"{base}/to-file",
        f"{base}/big", f"{base}/big-stream", "ftp://127.0.0.1/x.jpg", "gopher://127.0.0.1/x",
        "file:///etc/passwd", "/etc/passwd", "../../etc/passwd",
    ])
    status = {u.replace(base, ""): s for u, (s, *_) in rows.items()}
    assert status == {
        "/img.png": "ok", "/redirect/2": "duplicate",  # same bytes, three hops: allowed
        "/redirect/9": "fetch_failed",  # more than 3 redirects
        "/to-file": "forbidden_url",  # a redirect to file:// is refused
        "/big": "too_large", "/big-stream": "too_large",  # capped, with or without length
        "ftp://127.0.0.1/x.jpg": "forbidden_url", "gopher://127.0.0.1/x": "forbidden_url",
        "file:///etc/passwd": "forbidden_url", "/etc/passwd": "forbidden_url",
        "../../etc/passwd": "forbidden_url",
    }
    assert "more than 3 redirects" in rows[f"{base}/redirect/9"][1]


# -- paths that try to leave their root ----------------------------------------------------------
def test_local_paths_cannot_escape_their_root(promoted: DataCatalog, tmp_path: Path) -> None:
    root = tmp_path / "src"
    root.mkdir()
    (root / "ok.jpg").write_bytes(FACE_JPEG)
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"outside the root")
    (root / "link.jpg").symlink_to(secret)
    spec = LocalSource(root=str(root))
    from omnifer.sources import list_objects

    listed = [o.uri for o in list_objects(spec)]
    assert listed == [(root / "ok.jpg").as_uri()]  # the escaping symlink is not even listed

    # A plan edited by hand (or a hostile manifest) cannot point outside the root either.
    uris = [(root / "ok.jpg").as_uri(), (root / "link.jpg").as_uri(), secret.as_uri(),
            root.as_uri() + "/../secret.jpg", "file:///etc/passwd", "/etc/passwd"]
    rows = _shard(promoted, spec, uris)
    assert rows[uris[0]][0] == "ok"
    for uri in uris[1:]:
        status, error, sha = rows[uri]
        assert status == "forbidden_url" and "outside the source folder" in error, uri
        assert sha is None  # not a byte was read


# -- credentials ---------------------------------------------------------------------------------
SECRETS = ("user:pass", "token=abc", "Sup3rS3cret", "SIGs3cr3tVALUE", "AKIAEXAMPLEKEY",
           "KEYs3cr3t")


def test_credentials_never_reach_logs_rows_or_reports(
    promoted: DataCatalog, web, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = web.base_url.rsplit(":", 1)[1]
    host = f"127.0.0.1:{port}"
    manifest = tmp_path / "urls.csv"
    urls = [
        f"http://user:pass@{host}/auth?token=abc&size=2",  # fetched with its credentials
        f"http://admin:Sup3rS3cret@{host}/nope.jpg?X-Amz-Signature=SIGs3cr3tVALUE"
        f"&X-Amz-Credential=AKIAEXAMPLEKEY",  # 404
        f"http://{host}/always503?api_key=KEYs3cr3t",  # retried (logged), then fails
    ]
    manifest.write_text("url\n" + "\n".join(urls) + "\n")
    source = json.dumps({"kind": "urls", "manifest": str(manifest), "allow_private": True,
                         "retries": 1, "backoff_s": 0.01})
    caplog.set_level(logging.DEBUG)
    record = runs.start(promoted, "sec-run", "nightly-ingest", DATE, {"sources": [source]})
    result = run_night(promoted, [source], DATE, shard_size=10, run_id="sec-run")
    summary = ingest.summarize(promoted, DATE)
    runs.finish(promoted, record, "completed", summary)

    assert result.failed == {}
    statuses = dict(promoted.connect().execute("SELECT source_uri, status FROM images")
                    .fetchall())
    # Shown without secrets, identified by a key of the full URL (see url_identity).
    assert statuses == {url_identity(urls[0]): "ok", url_identity(urls[1]): "missing",
                        url_identity(urls[2]): "fetch_failed"}
    assert [u.split("#")[0] for u in sorted(statuses)] == [
        f"http://{host}/always503", f"http://{host}/auth?size=2", f"http://{host}/nope.jpg"]
    assert "retrying" in caplog.text  # the retry was logged…
    texts = {"logs": caplog.text, "summary": json.dumps(summary, default=str),
             "run record": json.dumps(runs.get_run(promoted, "sec-run"), default=str)}
    catalog_root = Path(promoted.aux_uri("x")).parent
    for path in catalog_root.rglob("*"):  # every committed byte: Parquet, plans, markers
        if path.is_file():
            texts[str(path)] = path.read_bytes().decode("latin-1")
    for where, text in texts.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} leaked into {where}"


# -- model files without pickle ------------------------------------------------------------------
class _Boom:
    """Unpickling this runs ``Path(marker).touch()``: the code a hostile model file carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.marker,))


def test_model_files_load_without_running_pickle_code(tmp_path: Path) -> None:
    from omnifer.models.checkpoints import WEIGHTS_FILE, load_checkpoint
    from omnifer.models.modelfiles import sha256_file

    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    marker = tmp_path / "pwned"
    weights = ckpt / WEIGHTS_FILE
    weights.write_bytes(pickle.dumps({"state": _Boom(marker)}))
    card = json.loads((ckpt / "card.json").read_text())
    card["files"][WEIGHTS_FILE] = sha256_file(weights)  # the card vouches for it
    (ckpt / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match="cannot read"):
        load_checkpoint(ckpt)
    assert not marker.exists()


def test_no_pickle_loading_in_the_library() -> None:
    """torch.load only with weights_only=True; no pickle/joblib/np.load(allow_pickle)."""
    offenders = []
    for path in sorted((REPO / "omnifer").rglob("*.py")):
        text = path.read_text()
        for match in re.finditer(r"torch\.load\(([^)]*)\)", text, re.S):
            if "weights_only=True" not in match.group(1):
                offenders.append(f"{path.name}: torch.load without weights_only=True")
        if re.search(r"^\s*(import pickle|from pickle|import joblib|import dill)", text, re.M):
            offenders.append(f"{path.name}: imports a pickle loader")
        if "allow_pickle=True" in text or "pickle.load" in text:
            offenders.append(f"{path.name}: loads pickles")
    assert offenders == []


def test_fetch_errors_name_no_credentials_even_when_refused(promoted: DataCatalog) -> None:
    spec = UrlManifestSource(manifest="unused.csv")
    rows = _shard(promoted, spec, ["http://127.0.0.1:9/x.jpg"])
    assert all("forbidden_url" == s for s, *_ in rows.values())
    assert os.environ.get("AWS_SECRET_ACCESS_KEY", "unset-secret") not in json.dumps(
        [list(r) for r in rows.values()])
