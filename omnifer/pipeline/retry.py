"""Retry what failed: the images (or scores) whose rows say a stage failed, shard by shard.

Failures are rows (``status`` + ``error``), so "what failed" is a query and a retry is a small
rewrite of the shards those rows live in. Why it is safe to run, crash and run again:

* Each affected shard is retried on its own, from the shard's *current* files: the failed set
  is read again every time, the plan supplies the objects and the parameters the shard ran
  with (same detector, same model version), and the per-object work is the very code a clean
  run uses (:func:`omnifer.pipeline.ingest.process_object`,
  :func:`omnifer.pipeline.ingest.score_faces`).
* New faces and scores of recovered images go into one new file per retry whose name comes
  from the retried set (``part-<shard>-retry-<hash>.parquet``): a crash before the next step
  leaves the images rows still failed, so the rerun retries the same set and rewrites the same
  file instead of adding a second copy. Faces already in the catalog are not written again
  (that file may have been merged by a compaction meanwhile), and a name a compaction has
  replaced is skipped.
* Then the file holding the shard's ``images`` rows (the shard's own, or the night's
  compacted file) is replaced atomically with the updated rows (status, error, n_faces, the
  retry's run id). Readers see the old rows or the new ones, never both. Shards retried in
  parallel threads rewrite a shared file one at a time (:func:`_rewrite_rows`).
* A score retry rewrites the files holding the failed ``scores`` rows in place.

Stages and the statuses they retry are in :data:`RETRY_STATUSES`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pydantic import BaseModel

from omnifer import storage
from omnifer.catalog import erasures
from omnifer.catalog.catalog import DataCatalog
from omnifer.catalog.plans import (
    IngestPlan,
    ShardResult,
    ShardSpec,
    find_shard,
    shard_done,
    write_marker,
)
from omnifer.catalog.provenance import provenance
from omnifer.catalog.purge import purge_rows
from omnifer.catalog.schemas import FACES, IMAGES, SCORES
from omnifer.errors import ConfigError, DatasetError, DecodeError
from omnifer.imaging.decode import decode_image
from omnifer.params import check_date
from omnifer.pipeline.ingest import needs_detector, process_object, score_faces
from omnifer.pipeline.workers import STATUS_DUPLICATE, WorkerResources
from omnifer.sources import source_from_dict

log = logging.getLogger(__name__)

RETRY_STATUSES: dict[str, tuple[str, ...]] = {
    "fetch": ("fetch_failed", "unreadable", "missing"),
    "decode": ("unsupported", "corrupt", "not_image"),
    "detect": ("detect_failed",),
    "score": ("score_failed",),
}
"""Stage name → the row statuses ``retry-failed --stage`` reprocesses (images rows for fetch,
decode and detect, scores rows for score). ``decode`` is for rows an older or narrower
decoder refused (before pillow-heif was installed, before metadata limits stopped
rejecting pixels): the bytes are read and decoded again by today's decoder."""


class RetryTarget(BaseModel):
    """One shard with failed rows of a stage (``count`` images, or faces for ``score``)."""

    ingest_date: str
    shard_id: str
    count: int


class RetryResult(BaseModel):
    """What retrying one shard did."""

    ingest_date: str
    shard_id: str
    stage: str
    retried: int = 0
    recovered: int = 0
    still_failed: int = 0
    new_faces: int = 0
    new_scores: int = 0
    model_version: str | None = None
    seconds: float = 0.0


def _statuses(stage: str) -> tuple[str, ...]:
    if stage not in RETRY_STATUSES:
        raise ConfigError(f"unknown stage '{stage}': use one of {', '.join(RETRY_STATUSES)}")
    return RETRY_STATUSES[stage]


def find_failed(catalog: DataCatalog, stage: str, date: str | None = None) -> list[RetryTarget]:
    """Shards that hold rows where ``stage`` failed (all nights, or only ``date``)."""
    statuses = _statuses(stage)
    dataset = "scores" if stage == "score" else "images"
    flt = ds.field("status").isin(list(statuses))
    if date is not None:
        flt = flt & (ds.field("ingest_date") == check_date(date, "date"))
    table = catalog.read(dataset, columns=["ingest_date", "shard_id"], filter=flt)
    counts = Counter(zip(table["ingest_date"].to_pylist(), table["shard_id"].to_pylist(),
                         strict=True))
    return [RetryTarget(ingest_date=d, shard_id=s, count=n)
            for (d, s), n in sorted(counts.items())]


# -- helpers -----------------------------------------------------------------------------------
def _read_file(uri: str, schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
    fs, path = storage.resolve(uri)
    try:
        return pq.read_table(path, filesystem=fs, schema=schema, columns=columns)
    except (OSError, pa.ArrowInvalid) as exc:
        raise DatasetError(f"cannot read {uri}: {exc}") from None


def _find_shard(catalog: DataCatalog, date: str,
                shard_id: str) -> tuple[IngestPlan, ShardSpec]:
    found = find_shard(catalog, date, shard_id)
    if found is not None:
        return found
    raise DatasetError(f"shard {shard_id} of {date} is in no plan under "
                       f"{catalog.plans_uri(date)}: cannot tell which objects it holds")


def _files_of_shard(catalog: DataCatalog, name: str, date: str, shard_id: str,
                    schema: pa.Schema) -> dict[str, list[dict[str, Any]]]:
    """The visible files of ``date`` that hold rows of ``shard_id``, with all their rows:
    the shard's own files, or the night's compacted file after a compaction."""
    out = {}
    for uri in catalog.partition_files(name, ingest_date=date):
        if shard_id in set(_read_file(uri, schema, ["shard_id"])["shard_id"].to_pylist()):
            out[uri] = _read_file(uri, schema).to_pylist()
    return out


_file_locks: dict[str, threading.Lock] = {}
_file_locks_guard = threading.Lock()


def _rewrite_rows(uri: str, schema: pa.Schema,
                  update: Callable[[dict[str, Any]], dict[str, Any]]) -> list[dict[str, Any]]:
    """Read ``uri``, apply ``update`` to each row, write it back atomically; the new rows.

    After a compaction one file holds every shard of the night, and the retry flow retries
    shards in parallel threads: the read-modify-write is serialised per file, and reads the
    file again under the lock, so no shard's update overwrites another's.
    """
    with _file_locks_guard:
        lock = _file_locks.setdefault(uri, threading.Lock())
    with lock:
        rows = [update(r) for r in _read_file(uri, schema).to_pylist()]
        storage.write_table_atomic(uri, pa.Table.from_pylist(rows, schema=schema))
    return rows


def _existing_faces(catalog: DataCatalog, date: str, face_ids: list[str]) -> set[str]:
    if not face_ids:
        return set()
    table = catalog.read("faces", columns=["face_id"],
                         filter=(ds.field("ingest_date") == date)
                         & ds.field("face_id").isin(face_ids))
    return set(table["face_id"].to_pylist())


def _retry_name(catalog: DataCatalog, date: str, shard_id: str, stage: str,
                keys: list[str]) -> str:
    """A name fixed by the retried set, so a rerun rewrites the file instead of adding one;
    skipping names a compaction has replaced (a file written there would stay hidden)."""
    digest = hashlib.sha256("\n".join([stage, *sorted(keys)]).encode()).hexdigest()[:12]
    hidden: set[str] = set()
    for name in ("faces", "scores"):
        _, partitions = storage.compaction_state(catalog.uri(name))
        hidden |= set(partitions.get(f"ingest_date={date}", {}).get("replaces", ()))
    for attempt in range(1, 1000):
        name = f"part-{shard_id}-retry-{digest}{f'-{attempt}' if attempt > 1 else ''}.parquet"
        if name not in hidden:
            return name
    raise DatasetError(f"no free retry file name for shard {shard_id} of {date}")


def _seen_excluding(catalog: DataCatalog, retried: set[tuple[str, str]]) -> set[str]:
    """Content ingested by rows other than the retried ones (duplicates own nothing)."""
    table = catalog.read("images", columns=["sha256", "status", "shard_id", "source_uri"],
                         filter=ds.field("sha256").is_valid())
    return {
        sha for sha, status, shard, uri in zip(
            table["sha256"].to_pylist(), table["status"].to_pylist(),
            table["shard_id"].to_pylist(), table["source_uri"].to_pylist(), strict=True)
        if status != STATUS_DUPLICATE and (shard, uri) not in retried
    }


# -- retrying one shard --------------------------------------------------------------------------
def retry_shard(
    catalog: DataCatalog, ingest_date: str, shard_id: str, stage: str, run_id: str
) -> RetryResult:
    """Reprocess the rows of one shard where ``stage`` failed; see the module docstring.

    Returns a result with ``retried == 0`` when nothing in the shard is failed any more (a
    rerun after success does nothing).
    """
    statuses = _statuses(stage)
    started = time.monotonic()
    plan, shard = _find_shard(catalog, ingest_date, shard_id)
    known = erasures.request_ids(catalog)
    if stage == "score":
        result = _retry_scores(catalog, plan, shard, statuses, run_id)
    else:
        result = _retry_images(catalog, plan, shard, stage, statuses, run_id)
    if erasures.new_request_ids(catalog, known):  # rows we rewrote may hold newly erased ones
        purge_rows(catalog, erasures.erased_content(catalog), run_id, nights=[ingest_date])
    result.seconds = round(time.monotonic() - started, 3)
    log.info("retried %s of shard %s (%s): %d tried, %d recovered, %d still failed",
             stage, shard_id, ingest_date, result.retried, result.recovered, result.still_failed)
    return result


def _retry_images(
    catalog: DataCatalog, plan: IngestPlan, shard: ShardSpec, stage: str,
    statuses: tuple[str, ...], run_id: str,
) -> RetryResult:
    date, sid = shard.ingest_date, shard.shard_id
    result = RetryResult(ingest_date=date, shard_id=sid, stage=stage,
                        model_version=plan.params.model_version)
    holding = _files_of_shard(catalog, "images", date, sid, IMAGES)
    failed = {r["source_uri"] for rows in holding.values() for r in rows
              if r["shard_id"] == sid and r["status"] in statuses}
    if not failed:
        return result
    objects = [o for o in shard.objects if o.uri in failed]
    seen = _seen_excluding(catalog, {(sid, uri) for uri in failed})
    params = plan.params
    sources = [source_from_dict(s) for s in plan.sources]
    detector = WorkerResources.detector(params) if needs_detector(sources) else None
    stamp = provenance(run_id, sid)
    erased = erasures.erased_content(catalog)
    new_rows: dict[str, dict[str, Any]] = {}
    face_rows: list[dict[str, Any]] = []
    crops: list[np.ndarray] = []
    for obj in objects:
        row, faces, obj_crops = process_object(obj, sources[obj.source], params,
                                                      detector, seen, stamp, erased)
        new_rows[obj.uri] = row
        face_rows.extend(faces)
        crops.extend(obj_crops)
    # Faces already in the catalog stay as they are: a retry that died after writing its faces
    # (and whose file a compaction has since merged) must not add them a second time.
    recovered_faces = len(face_rows)
    there = _existing_faces(catalog, date, [f["face_id"] for f in face_rows])
    kept = [i for i, f in enumerate(face_rows) if f["face_id"] not in there]
    face_rows, crops = [face_rows[i] for i in kept], [crops[i] for i in kept]
    score_rows = score_faces(params, face_rows, crops, stamp)

    if face_rows:  # first the new faces and scores, under a name fixed by the retried set
        name = _retry_name(catalog, date, sid, stage, sorted(failed))
        catalog.write("faces", name, pa.Table.from_pylist(face_rows, schema=FACES),
                      ingest_date=date)
        catalog.write("scores", name, pa.Table.from_pylist(score_rows, schema=SCORES),
                      ingest_date=date)
    # Then the file(s) holding the shard's images rows, each all at once: this is the commit.
    # (A shard file, or the night's compacted file: then the other shards' rows go unchanged.)
    shard_rows: list[dict[str, Any]] = []
    for uri in holding:
        def update(row: dict[str, Any]) -> dict[str, Any]:
            return new_rows.get(row["source_uri"], row) if row["shard_id"] == sid else row

        updated = _rewrite_rows(uri, IMAGES, update)
        shard_rows += [r for r in updated if r["shard_id"] == sid]
    _update_marker(catalog, shard, shard_rows, recovered_faces)

    result.retried = len(objects)
    result.still_failed = sum(r["status"] in statuses for r in new_rows.values())
    result.recovered = result.retried - result.still_failed
    result.new_faces, result.new_scores = len(face_rows), len(score_rows)
    return result


def _update_marker(catalog: DataCatalog, shard: ShardSpec,
                   rows: list[dict[str, Any]], new_faces: int) -> None:
    """Keep the shard's commit marker's counts true after a retry (the marker stays)."""
    old = shard_done(catalog, shard)
    marker = ShardResult(
        shard_id=shard.shard_id,
        images=len(rows),
        by_status=dict(Counter(r["status"] for r in rows)),
        faces=(old.faces if old else 0) + new_faces,
        seconds=old.seconds if old else 0.0,
    )
    write_marker(catalog, shard.ingest_date, marker)


def _retry_scores(
    catalog: DataCatalog, plan: IngestPlan, shard: ShardSpec,
    statuses: tuple[str, ...], run_id: str,
) -> RetryResult:
    """Score the failed faces again, from the source image (exactly a clean run's crop) or,
    when the source cannot be read any more, from the stored JPEG crop."""
    date, sid = shard.ingest_date, shard.shard_id
    result = RetryResult(ingest_date=date, shard_id=sid, stage="score",
                        model_version=plan.params.model_version)
    files = _files_of_shard(catalog, "scores", date, sid, SCORES)
    failed = {r["face_id"] for rows in files.values() for r in rows
              if r["shard_id"] == sid and r["status"] in statuses}
    if not failed:
        return result
    faces = catalog.read("faces", filter=ds.field("face_id").isin(sorted(failed))
                         & (ds.field("ingest_date") == date)).to_pylist()
    by_uri: dict[str, list[dict[str, Any]]] = {}
    for face in faces:
        by_uri.setdefault(face["source_uri"], []).append(face)
    params = plan.params
    sources = [source_from_dict(s) for s in plan.sources]
    detector = WorkerResources.detector(params) if needs_detector(sources) else None
    stamp = provenance(run_id, sid)
    rows: list[dict[str, Any]] = []
    crops: list[np.ndarray] = []
    done: set[str] = set()
    for obj in shard.objects:
        if obj.uri not in by_uri:
            continue
        _, again, obj_crops = process_object(obj, sources[obj.source], params,
                                                    detector, set(), stamp)
        for face, crop in zip(again, obj_crops, strict=True):
            if face["face_id"] in failed and face["face_id"] not in done:
                rows.append(face)
                crops.append(crop)
                done.add(face["face_id"])
    for face in faces:  # the source changed or is gone: the stored crop is what we have
        if face["face_id"] not in done:
            try:  # our own JPEG, read by the project's one decoder
                crop = decode_image(face["crop"]).image
            except DecodeError as exc:
                log.warning("face %s: stored crop unreadable (%s); left failed",
                            face["face_id"], exc)
                continue
            rows.append(face)
            crops.append(crop)
            done.add(face["face_id"])
    new = {r["face_id"]: r for r in score_faces(params, rows, crops, stamp)}
    def replaced(row: dict[str, Any]) -> bool:
        return row["shard_id"] == sid and row["face_id"] in new and row["status"] in statuses

    for uri, old in files.items():
        if any(replaced(r) for r in old):
            _rewrite_rows(uri, SCORES, lambda r: new[r["face_id"]] if replaced(r) else r)
    result.retried = len(failed)
    result.still_failed = sum(1 for r in new.values() if r["status"] in statuses)
    result.still_failed += len(failed - set(new))  # faces whose rows are gone
    result.recovered = result.retried - result.still_failed
    result.new_scores = len(new)
    return result


def retry_failed(
    catalog: DataCatalog, stage: str, run_id: str, date: str | None = None
) -> list[RetryResult]:
    """Retry every shard with failed ``stage`` rows, one after another (no Prefect needed).

    Selection is not redone here: the caller re-selects the affected nights
    (``flows/retry.py`` does, with :func:`omnifer.curation.curated.select_curated`).
    """
    return [retry_shard(catalog, t.ingest_date, t.shard_id, stage, run_id)
            for t in find_failed(catalog, stage, date)]
