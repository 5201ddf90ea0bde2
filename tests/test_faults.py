"""Faults: a SIGKILLed worker, S3 answering 500/503 or stalling, a full or read-only catalog,
a tampered model file. After each, a rerun holds exactly the rows of one clean run."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest

from omnifer import storage
from omnifer.testing.faults import (
    FaultPlan,
    FaultProxy,
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


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return face_folder(tmp_path_factory.mktemp("faces") / "in")


@pytest.fixture(scope="module")
def clean_rows(omnifer_home: Path, folder: Path, tmp_path_factory: pytest.TempPathFactory):
    """Rows of one clean run over ``folder`` (the reference every fault is compared with)."""
    root = tmp_path_factory.mktemp("clean")
    catalog, _ = make_catalog(root, "clean")
    promote_tiny_model(catalog, root / "model")
    result = run_night(catalog, [str(folder)], DATE, SHARD)
    assert result.failed == {} and result.committed == 3
    rows = catalog_rows(catalog)
    assert len(rows["images"]) == 7 and len(rows["faces"]) == 6 and len(rows["scores"]) == 6
    return rows


def _new_catalog(tmp_path: Path, name: str = "cat", data_root: str | None = None):
    catalog, path = make_catalog(tmp_path, name, data_root)
    promote_tiny_model(catalog, tmp_path / f"model-{name}")
    return catalog, path


def _sub(mode: str, cat_path: Path, source: str, env: dict[str, str] | None = None,
         **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, str(REPO / "tests" / "helpers_faults.py"), mode, str(cat_path),
         source, DATE, str(SHARD)], env=env, cwd=REPO, capture_output=True, text=True,
        timeout=300, **kw)


def _visible_files_are_whole(root: Path) -> None:
    """Readers see only committed files, and every one of them is a whole Parquet file."""
    for name in ("images", "faces", "scores"):
        for uri in storage.list_files(str(root / name), ".parquet"):
            pq.read_metadata(uri)  # raises on a truncated file
    strays = [p for p in root.rglob("*") if p.is_file() and (p.name.endswith(".tmp")
                                                            or p.name.startswith(".tmp-"))]
    assert strays == [], strays


# -- SIGKILL -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", [
    "kill-staged:4",   # shard 2's first file staged, not renamed: nothing of shard 2 visible
    "kill-staged:6",   # shard 2's faces and scores committed, its images staged
    "kill-marker:2",   # shard 2 fully written, its marker not yet
])
def test_sigkill_mid_shard_then_rerun_equals_one_clean_run(
    mode: str, clean_rows, folder: Path, tmp_path: Path
) -> None:
    catalog, cat_path = _new_catalog(tmp_path)
    proc = _sub(mode, cat_path, str(folder))
    assert proc.returncode == -9, proc.stdout + proc.stderr[-2000:]  # really killed
    markers = list((tmp_path / "cat" / "_shards").rglob("*.json"))
    assert len(markers) == 1  # it died inside the second shard
    _visible_files_are_whole_but_staging(tmp_path / "cat")
    catalog.connect().execute("SELECT count(*) FROM images").fetchone()  # readable meanwhile

    again = run_night(catalog, [str(folder)], DATE, SHARD)
    assert again.failed == {} and again.shards == 3 and again.committed == 3
    assert compare_rows(clean_rows, catalog_rows(catalog)) == CLEAN
    assert duplicate_keys(catalog) == {"images": 0, "faces": 0, "scores": 0}


def _visible_files_are_whole_but_staging(root: Path) -> None:
    # A SIGKILL cannot run 'finally': the staged file stays in _staging/, which readers skip.
    for name in ("images", "faces", "scores"):
        for uri in storage.list_files(str(root / name), ".parquet"):
            assert "/_staging/" not in uri
            pq.read_metadata(uri)


# -- S3 answering 500 / 503 / slowly -------------------------------------------------------------
@pytest.fixture(scope="module")
def s3_source(s3_server: str, folder: Path):
    """The face folder in a moto bucket, behind a fault-injecting proxy."""
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket="faultsrc")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.put_object(Bucket="faultsrc", Key=f"night/{path.relative_to(folder)}",
                          Body=path.read_bytes())
    with FaultProxy(s3_server) as proxy:
        yield proxy


def _s3_spec(proxy: FaultProxy, **kw) -> str:
    return json.dumps({"kind": "s3", "bucket": "faultsrc", "prefix": "night/",
                       "endpoint_url": proxy.endpoint, "retries": 2, "timeout_s": 5, **kw})


def _object_get(method: str, path: str) -> bool:
    return method == "GET" and path.startswith("/faultsrc/night/")


@pytest.fixture(scope="module")
def s3_clean_rows(omnifer_home: Path, s3_source: FaultProxy,
                  tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("s3clean")
    catalog, _ = _new_catalog(root)
    s3_source.clear()
    result = run_night(catalog, [_s3_spec(s3_source)], DATE, SHARD)
    assert result.failed == {}
    return catalog_rows(catalog)


def test_s3_500_503_and_slowness_are_retried_with_backoff(
    s3_source: FaultProxy, s3_clean_rows, tmp_path: Path
) -> None:
    s3_source.clear()
    listing = s3_source.add(FaultPlan(match=lambda m, p: m == "GET" and "list-type" in p,
                                      fail_first=1))  # first matching plan applies
    # Every object read fails once (503 or 500), then is slow: within the retry budget.
    flaky = s3_source.add(FaultPlan(match=_object_get, fail_first=1, statuses=(503, 500),
                                    delay_first=2, delay_s=0.2, per_path=True))
    catalog, _ = _new_catalog(tmp_path)
    result = run_night(catalog, [_s3_spec(s3_source)], DATE, SHARD)
    s3_source.clear()
    assert result.failed == {}
    assert flaky.injected[503] == 4 and flaky.injected[500] == 3  # 7 objects, once each
    assert listing.injected[503] == 1 and flaky.injected["delay"] == 7
    assert compare_rows(s3_clean_rows, catalog_rows(catalog)) == CLEAN


def test_s3_answer_slower_than_the_timeout_is_retried(
    s3_source: FaultProxy, s3_clean_rows, tmp_path: Path
) -> None:
    s3_source.clear()
    slow = s3_source.add(FaultPlan(match=_object_get, delay_first=2, delay_s=1.5))
    catalog, _ = _new_catalog(tmp_path)
    result = run_night(catalog, [_s3_spec(s3_source, timeout_s=0.5)], DATE, SHARD)
    s3_source.clear()
    assert result.failed == {} and slow.injected["delay"] == 2
    assert compare_rows(s3_clean_rows, catalog_rows(catalog)) == CLEAN


def test_s3_persistent_failure_fails_that_shard_only_then_rerun_is_clean(
    s3_source: FaultProxy, s3_clean_rows, tmp_path: Path
) -> None:
    s3_source.clear()
    key = "/faultsrc/night/cam-1/face-003.jpg"
    down = s3_source.add(FaultPlan(match=lambda m, p: m == "GET" and p.startswith(key),
                                   fail_always=True, statuses=(503,)))
    catalog, _ = _new_catalog(tmp_path)
    spec = _s3_spec(s3_source)
    first = run_night(catalog, [spec], DATE, SHARD)
    assert first.committed == 2 and len(first.failed) == 1  # that shard only
    (error,) = first.failed.values()
    assert "face-003.jpg" in error and "SlowDown" in error and "max retries" in error
    assert "shard not committed" in error
    assert down.injected[503] == 3  # one try + 2 retries, then a clear failure
    con = catalog.connect()
    assert con.execute("SELECT count(*) FROM images WHERE status = 'fetch_failed'"
                       ).fetchone()[0] == 0  # not written down as the image's fault

    s3_source.clear()
    again = run_night(catalog, [spec], DATE, SHARD)
    assert again.failed == {} and again.plan_id == first.plan_id  # resumed, not re-planned
    assert compare_rows(s3_clean_rows, catalog_rows(catalog)) == CLEAN


@pytest.mark.slow  # ~20 s: pyarrow backs off before it gives the dead write up
def test_catalog_on_s3_survives_503_on_writes_and_a_dead_write_fails_one_shard(
    s3_server: str, s3_source: FaultProxy, s3_clean_rows, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(
        Bucket="faultlake")
    s3_source.clear()
    monkeypatch.setenv("OMNIFER_S3_ENDPOINT_URL", s3_source.endpoint)
    catalog, _ = _new_catalog(tmp_path, data_root="s3://faultlake/omnifer")
    first_images: dict[str, str] = {}

    def images_of_one_shard(method: str, path: str) -> bool:
        if method != "PUT" or "/images/" not in path:
            return False
        return first_images.setdefault("path", path.split("?")[0]) == path.split("?")[0]

    dead = s3_source.add(FaultPlan(match=images_of_one_shard, fail_always=True))
    flaky_puts = s3_source.add(FaultPlan(match=lambda m, p: m == "PUT", fail_first=3))
    first = run_night(catalog, [_s3_spec(s3_source)], DATE, SHARD)
    assert flaky_puts.injected[503] + flaky_puts.injected[500] == 3
    assert dead.injected[503] + dead.injected[500] >= 2  # retried, then given up
    assert first.committed == 2 and len(first.failed) == 1
    assert "cannot write s3://faultlake/omnifer/images/" in next(iter(first.failed.values()))

    s3_source.clear()
    again = run_night(catalog, [_s3_spec(s3_source)], DATE, SHARD)
    assert again.failed == {}
    assert compare_rows(s3_clean_rows, catalog_rows(catalog)) == CLEAN


# -- full or read-only catalog -------------------------------------------------------------------
def test_full_disk_fails_clearly_leaves_no_partial_files_and_rerun_is_clean(
    clean_rows, folder: Path, tmp_path: Path
) -> None:
    catalog, cat_path = _new_catalog(tmp_path)
    proc = _sub("fsize:4096", cat_path, str(folder))
    assert proc.returncode == 1, proc.stdout + proc.stderr[-2000:]
    failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")]
    assert failed and all("cannot write" in f and "File too large" in f for f in failed)
    assert "Traceback" not in proc.stdout + proc.stderr
    _visible_files_are_whole(tmp_path / "cat")
    assert not list((tmp_path / "cat" / "_shards").rglob("*.json"))  # no shard claims success

    again = run_night(catalog, [str(folder)], DATE, SHARD)
    assert again.failed == {}
    assert compare_rows(clean_rows, catalog_rows(catalog)) == CLEAN


def test_read_only_catalog_fails_with_one_line_then_works_once_writable(
    omnifer_home: Path, tmp_path: Path
) -> None:
    """``omnifer models register`` into a read-only catalog: exit 6, one line, no files.

    Root ignores file modes; under root the command runs without the capabilities that let
    it (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), so the mode bites as it would for a user."""
    from omnifer.testing.faults import tiny_checkpoint

    base = tmp_path
    catalog, cat_path = make_catalog(base, "cat")
    ckpt = tiny_checkpoint(base / "ckpt")
    (base / "cat").mkdir()
    os.chmod(base / "cat", 0o555)  # read-only
    cmd = [sys.executable, "-m", "omnifer", "models", "register", str(ckpt),
           "--version", "v7"]
    env = {**os.environ, "OMNIFER_CATALOG": str(cat_path), "HOME": str(base),
           "PYTHONDONTWRITEBYTECODE": "1"}
    as_user = {"preexec_fn": _drop_root_file_powers} if os.geteuid() == 0 else {}
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=120, **as_user)
    assert proc.returncode == 6, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot write" in lines[0] and "Permission denied" in lines[0]
    assert "Traceback" not in proc.stderr
    assert [p for p in (base / "cat").rglob("*")] == []  # nothing, not even a temp file

    os.chmod(base / "cat", 0o755)  # fixed
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=120, **as_user)
    assert proc.returncode == 0, proc.stderr
    table = catalog.read("models")
    assert table.num_rows == 1 and table["model_version"].to_pylist() == ["v7"]


def _drop_root_file_powers() -> None:
    """In the child before exec: drop CAP_DAC_OVERRIDE (1) and CAP_DAC_READ_SEARCH (2) from
    the bounding set, so that root's exec does not get them back."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


# -- tampered model files ------------------------------------------------------------------------
def test_models_fetch_refuses_a_tampered_file_in_one_line(tmp_path: Path) -> None:
    from omnifer.models.modelfiles import MODEL_FILES

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / MODEL_FILES["yunet"].filename).write_bytes(b"not the real yunet" * 100)
    env = {**os.environ, "OMNIFER_HOME": str(tmp_path / "home"),
           "OMNIFER_MODEL_MIRROR": str(mirror)}
    proc = subprocess.run([sys.executable, "-m", "omnifer", "models", "fetch", "yunet",
                           "--offline"], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and "sha256" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "home" / "models" / MODEL_FILES["yunet"].filename).exists()


def test_tampered_detector_or_model_is_refused_then_rerun_is_clean(
    omnifer_home: Path, clean_rows, folder: Path, tmp_path: Path
) -> None:
    from omnifer.models.modelfiles import MODEL_FILES

    catalog, cat_path = _new_catalog(tmp_path)
    # 1. The detector's weights in the cache no longer match their sha256.
    bad_home = tmp_path / "bad_home"
    shutil.copytree(omnifer_home / "models", bad_home / "models")
    yunet = bad_home / "models" / MODEL_FILES["yunet"].filename
    yunet.write_bytes(yunet.read_bytes()[:-10] + b"0123456789")
    proc = _sub("clean", cat_path, str(folder), env={"OMNIFER_HOME": str(bad_home)})
    assert proc.returncode == 1
    failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 3 and all("refusing to load" in f for f in failed)
    assert catalog.read("images").num_rows == 0

    # 2. The scoring model in the store was replaced after it was registered.
    store = Path(catalog.aux_uri("model_store", "v1"))
    weights = store / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:-4] + b"\x00\x00\x00\x01")
    proc = _sub("clean", cat_path, str(folder))
    failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")]
    assert proc.returncode == 1 and failed
    assert all("does not match the sha256" in f for f in failed)
    assert catalog.read("scores").num_rows == 0 and catalog.read("images").num_rows == 0

    weights.write_bytes(good)  # fixed
    proc = _sub("clean", cat_path, str(folder))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert compare_rows(clean_rows, catalog_rows(catalog)) == CLEAN
