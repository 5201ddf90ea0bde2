"""Two nightly runs started at once on one catalog write every row once.

The guarantee comes from idempotent commits (see ``omnifer.pipeline.ingest.plan_ingest``): the plan
file is created exclusively and the loser adopts the winner's plan; shards have fixed file
names. The first test forces the worst interleaving (both list before either writes a plan,
and a file arrives in between, so the two listings differ); the second runs two real Prefect
flows side by side.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pytest

from omnifer import sources, storage
from omnifer.catalog import DataCatalog
from omnifer.models.versions import primitive_model
from omnifer.pipeline import ingest
from omnifer.sources import LocalSource
from omnifer.testing.faults import (
    catalog_rows,
    compare_rows,
    duplicate_keys,
    face_folder,
    make_catalog,
    promote_tiny_model,
    run_night,
)

DATE = "2026-11-29"
NO_DUPLICATES = {"images": 0, "faces": 0, "scores": 0}


def _clean_rows(tmp_path: Path, folder: Path, shard_size: int) -> dict:
    catalog, _ = make_catalog(tmp_path, "clean")
    promote_tiny_model(catalog, tmp_path / "clean-model")
    assert run_night(catalog, [str(folder)], DATE, shard_size).failed == {}
    return catalog_rows(catalog)


def test_overlapping_plans_with_different_listings_write_each_row_once(
    omnifer_home: Path, data_catalog: DataCatalog, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = face_folder(tmp_path / "in", n=5, broken=1)
    promote_tiny_model(data_catalog, tmp_path / "model")
    version, uri = primitive_model(data_catalog)
    params = ingest.IngestParams(model_version=version, model_uri=uri)
    spec = LocalSource(root=str(folder))

    both_listing = threading.Barrier(2, timeout=60)
    both_listed = threading.Barrier(2, timeout=60)
    late_file_added = threading.Event()
    real_list = sources.list_objects

    def racing_list(s):  # noqa: ANN001, ANN202
        both_listing.wait()  # both runs found no plan and are about to list
        if threading.current_thread().name == "run-a":
            listed = list(real_list(s))
            (folder / "late.jpg").write_bytes((folder / "cam-0" / "face-000.jpg").read_bytes()
                                              + b"\x00")  # arrives between the listings
            late_file_added.set()
        else:
            assert late_file_added.wait(60)
            listed = list(real_list(s))
        both_listed.wait()  # neither writes its plan before both have listed
        return iter(listed)

    monkeypatch.setattr(sources, "list_objects", racing_list)
    plans: dict[str, ingest.IngestPlan] = {}

    def night(name: str) -> None:
        threading.current_thread().name = name
        plan = ingest.plan_ingest(data_catalog, [spec], DATE, params, shard_size=2)
        plans[name] = plan
        for shard in plan.shards:
            ingest.process_shard(data_catalog, plan, shard, name)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(night, ["run-a", "run-b"]))
    monkeypatch.setattr(sources, "list_objects", real_list)

    assert duplicate_keys(data_catalog) == NO_DUPLICATES
    # The two runs listed different objects, yet did one plan.
    assert plans["run-a"].plan_id == plans["run-b"].plan_id
    assert plans["run-a"].shards == plans["run-b"].shards
    assert len(ingest.load_plans(data_catalog, DATE)) == 1

    # The late file is simply next run's work; then the catalog equals one clean run.
    assert run_night(data_catalog, [str(folder)], DATE, 2).failed == {}
    assert duplicate_keys(data_catalog) == NO_DUPLICATES
    assert compare_rows(_clean_rows(tmp_path, folder, 2), catalog_rows(data_catalog)) == {
        "lost": 0, "duplicated": 0, "changed": 0}


def test_two_prefect_nightly_flows_at_once(
    prefect_harness, omnifer_home: Path, data_catalog: DataCatalog, tmp_path: Path
) -> None:
    from flows.ingest import nightly_ingest

    folder = face_folder(tmp_path / "in", n=10, broken=2)
    promote_tiny_model(data_catalog, tmp_path / "model")
    start = threading.Barrier(2, timeout=120)

    def night(_: int) -> dict:
        start.wait()
        return nightly_ingest(date=DATE, sources=[str(folder)], shard_size=2, workers=2)

    with ThreadPoolExecutor(2) as pool:
        summaries = list(pool.map(night, range(2)))
    assert duplicate_keys(data_catalog) == NO_DUPLICATES
    assert all(s["images"] == 12 for s in summaries)
    assert len(ingest.load_plans(data_catalog, DATE)) == 1
    assert compare_rows(_clean_rows(tmp_path, folder, 2), catalog_rows(data_catalog)) == {
        "lost": 0, "duplicated": 0, "changed": 0}


def _race(uri: str, n: int = 8) -> list[bool]:
    gate = threading.Barrier(n, timeout=60)

    def create(i: int) -> bool:
        gate.wait()
        return storage.create_exclusive(uri, f"writer {i}".encode())

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(create, range(n)))


def test_create_exclusive_has_one_winner_locally(tmp_path: Path) -> None:
    uri = str(tmp_path / "_plans" / "plan-001.json")
    won = _race(uri)
    assert won.count(True) == 1
    assert storage.read_bytes(uri) == f"writer {won.index(True)}".encode()
    assert [p.name for p in (tmp_path / "_plans").iterdir()] == ["plan-001.json"]  # no temps


def test_create_exclusive_has_one_winner_on_s3(
    s3_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMNIFER_S3_ENDPOINT_URL", s3_server)
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(
        Bucket="leases")
    uri = "s3://leases/_plans/plan-001.json"
    won = _race(uri)
    assert won.count(True) == 1  # S3 conditional put: If-None-Match: *
    assert storage.read_bytes(uri) == f"writer {won.index(True)}".encode()
