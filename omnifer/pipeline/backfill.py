"""Backfill: re-score stored faces with a newly promoted model, then re-select every night.

Why: each night is scored and curated by the model that was current then, so without this the
curated pool never improves with the model it trains. A backfill scores the stored 112×112
crops of ``faces`` (no source image is read or decoded, nothing is detected), writes ``scores``
rows for the new ``model_version`` (the key ``face_id, model_version`` allows several), then
deduplicates and selects each night, oldest first, into a new curated version under the
current policy. Distillation and the run report take each night's latest curated version.

Exact and resumable like the ingest (:mod:`omnifer.catalog.plans`): the faces a model has not
scored yet are cut into shards whose ids digest the model and the faces; the cut is written
down once (``_backfill/<model_version>/plan-NNN.json``), a shard commits with the ingest's
marker (``_shards/ingest_date=D/<shard_id>.json``; compaction then merges its file like any
shard's), a rerun skips committed shards. Cheap when nothing changed: a second backfill finds
every face scored and every night's curated version (named by policy, model and dedup
version) already there, and writes nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from pydantic import BaseModel, Field

from omnifer import storage
from omnifer.catalog.catalog import DataCatalog
from omnifer.catalog.plans import IngestParams, ShardResult, digest, write_marker
from omnifer.catalog.provenance import provenance
from omnifer.catalog.schemas import SCORES
from omnifer.config import Settings, join_uri
from omnifer.curation import dedup, evalsets
from omnifer.curation.curated import (
    CuratedResult,
    DedupApplied,
    curated_version_for,
    select_curated,
)
from omnifer.curation.embeddings import decode_crops
from omnifer.curation.selection import policy_from_settings
from omnifer.errors import ModelFileError
from omnifer.models.versions import history, primitive_model
from omnifer.pipeline.ingest import score_faces
from omnifer.runtime import heap

log = logging.getLogger(__name__)

STATUS_CROP_UNREADABLE = "crop_unreadable"


class BackfillShard(BaseModel):
    """Faces of one night to score with the plan's model."""

    shard_id: str
    ingest_date: str
    face_ids: list[str]


class BackfillPlan(BaseModel):
    """A backfill's work: the model, the nights it re-selects, the shards it scores."""

    plan_id: str
    model_version: str
    model_uri: str
    score_batch_size: int | None = None  # None: by device (curation.scoring.batch_size_for)
    nights: list[str]
    shards: list[BackfillShard]
    created_at: dt.datetime = Field(default_factory=lambda: dt.datetime.now(dt.UTC))

    @property
    def n_faces(self) -> int:
        return sum(len(s.face_ids) for s in self.shards)

    def params(self) -> IngestParams:
        """The ingest's scoring parameters for this model (so rows match the ingest's)."""
        return IngestParams(model_version=self.model_version, model_uri=self.model_uri,
                            score_batch_size=self.score_batch_size)


class NightResult(BaseModel):
    """What re-selecting one night did (``unchanged``: its curated version existed)."""

    ingest_date: str
    curated_version: str
    unchanged: bool = False
    selected: int = 0
    dedup: dict[str, Any] | None = None


def _plans_uri(catalog: DataCatalog, model_version: str) -> str:
    return catalog.aux_uri("_backfill", model_version)


def _marker_exists(catalog: DataCatalog, shard: BackfillShard) -> bool:
    return storage.exists(catalog.shard_marker_uri(shard.ingest_date, shard.shard_id))


def nights_with_faces(catalog: DataCatalog) -> list[str]:
    table = catalog.read("faces", columns=["ingest_date"])
    return sorted(set(table["ingest_date"].to_pylist()))


def plan_backfill(catalog: DataCatalog, model_version: str | None = None,
                  dates: list[str] | None = None, shard_size: int = 2048,
                  score_batch_size: int | None = None) -> BackfillPlan:
    """Resume this model's unfinished plan, else cut the faces it has not scored into shards.

    ``model_version`` defaults to the primitive model; ``dates`` to every night with faces.
    A plan with no shards is returned but not written (every face is scored already).
    """
    if model_version is None:
        model_version, uri = primitive_model(catalog)
    else:
        reg = history(catalog, model_version)
        if reg is None:
            raise ModelFileError(f"model version {model_version} is not registered "
                                 "(see 'omnifer models list')")
        uri = reg["uri"]
    nights = sorted(dates) if dates else nights_with_faces(catalog)
    folder = _plans_uri(catalog, model_version)
    plans = [BackfillPlan.model_validate_json(storage.read_bytes(f))
             for f in storage.list_files(folder, ".json")]
    if plans and set(nights) <= set(plans[-1].nights) and any(
            not _marker_exists(catalog, s) for s in plans[-1].shards):
        log.info("resuming backfill plan %s", plans[-1].plan_id)
        return plans[-1]
    flt = ds.field("ingest_date").isin(pa.array(nights, pa.string()))
    faces = catalog.read("faces", columns=["face_id", "ingest_date"], filter=flt)
    scored = catalog.read("scores", columns=["face_id"],
                          filter=flt & (ds.field("model_version") == model_version))
    done = set(scored["face_id"].to_pylist())
    shards: list[BackfillShard] = []
    for night in nights:
        ids = faces.filter(pc.equal(faces["ingest_date"], night))["face_id"].to_pylist()
        todo = sorted(set(ids) - done)
        for start in range(0, len(todo), shard_size):
            chunk = todo[start:start + shard_size]
            sid = "bf-" + digest([model_version, uri, night, chunk])[:20]
            shards.append(BackfillShard(shard_id=sid, ingest_date=night, face_ids=chunk))
    number = len(plans) + 1
    plan = BackfillPlan(plan_id=f"{model_version}-{number:03d}", model_version=model_version,
                        model_uri=uri, score_batch_size=score_batch_size, nights=nights,
                        shards=shards)
    if shards:
        target = join_uri(folder, f"plan-{number:03d}.json")
        if not storage.create_exclusive(target, plan.model_dump_json(indent=1).encode()):
            plan = BackfillPlan.model_validate_json(storage.read_bytes(target))
    log.info("backfill with %s: %d faces to score in %d shards over %d nights", model_version,
             plan.n_faces, len(plan.shards), len(nights))
    return plan


def process_backfill_shard(catalog: DataCatalog, plan: BackfillPlan, shard: BackfillShard,
                           run_id: str) -> ShardResult:
    """Score one shard's stored crops with the plan's model; commit scores, then the marker.

    Already committed → the committed result, marked ``skipped``. A crop that cannot be
    decoded gets a ``crop_unreadable`` row (a status, not an exception).
    """
    marker = catalog.shard_marker_uri(shard.ingest_date, shard.shard_id)
    if storage.exists(marker):
        done = ShardResult.model_validate_json(storage.read_bytes(marker))
        return done.model_copy(update={"skipped": True})
    started = time.monotonic()
    flt = ((ds.field("ingest_date") == shard.ingest_date)
           & ds.field("face_id").isin(pa.array(shard.face_ids, pa.string())))
    faces = catalog.read("faces", columns=["face_id", "det_score", "face_size", "crop"],
                         filter=flt)
    rows_by_id: dict[str, dict[str, Any]] = {}
    crop_by_id: dict[str, bytes] = {}
    for row in faces.to_pylist():
        crop_by_id.setdefault(row["face_id"], row.pop("crop"))
        rows_by_id.setdefault(row["face_id"], row)
    ids = [f for f in shard.face_ids if f in rows_by_id]
    images, ok = decode_crops([crop_by_id[f] for f in ids])
    stamp = provenance(run_id, shard.shard_id)
    good = [rows_by_id[f] for f, k in zip(ids, ok, strict=True) if k]
    score_rows = score_faces(plan.params(), good, list(images[ok]), stamp)
    for f, k in zip(ids, ok, strict=True):
        if not k:
            r = rows_by_id[f]
            score_rows.append({**r, "model_version": plan.model_version, **stamp,
                               "status": STATUS_CROP_UNREADABLE,
                               "error": "stored crop cannot be decoded"})
    catalog.write("scores", f"part-{shard.shard_id}.parquet",
                  pa.Table.from_pylist(score_rows, schema=SCORES), ingest_date=shard.ingest_date)
    statuses: dict[str, int] = {}
    for r in score_rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    result = ShardResult(shard_id=shard.shard_id, images=0, by_status=statuses,
                         faces=len(score_rows), seconds=round(time.monotonic() - started, 3))
    write_marker(catalog, shard.ingest_date, result)
    heap.trim()
    return result


def dedup_applied(catalog: DataCatalog, settings: Settings, ingest_date: str,
                  model_version: str) -> tuple[str, DedupApplied | None]:
    """(dedup version or "", what selection applies) without running the dedup (for
    checking whether a night's curated version exists already)."""
    if not settings.dedup.enabled:
        return "", None
    specs = evalsets.eval_sets(settings) if settings.dedup.decontaminate else []
    digest_ = (evalsets.load_eval_index(catalog, specs, model_version).digest
               if specs else None)
    version = dedup.dedup_version_for(ingest_date, settings.dedup, model_version, digest_)
    return version, DedupApplied(dedup_version=version, thresholds=json.loads(
        dedup.thresholds_json(settings.dedup, digest_)))


def reselect_night(catalog: DataCatalog, settings: Settings, ingest_date: str,
                   model_version: str, run_id: str, force: bool = False) -> NightResult:
    """Dedup and select one night with ``model_version`` under the current policy.

    Does nothing when the curated version these inputs name exists already (unless
    ``force``). Nights must be re-selected oldest first: a night's dedup reads the clusters
    of the nights before it.
    """
    policy = policy_from_settings(settings)
    dedup_version, applied = dedup_applied(catalog, settings, ingest_date, model_version)
    version = curated_version_for(ingest_date, policy.to_json(), model_version,
                                  dedup_version or None)
    # The file's name is the version: it exists, even with no rows, once selection ran.
    name = f"part-{version}.parquet"
    if not force and any(f.endswith("/" + name)
                         for f in catalog.partition_files("curated", ingest_date=ingest_date)):
        kept = catalog.read("curated", columns=["face_id"],
                            filter=(ds.field("ingest_date") == ingest_date)
                            & (ds.field("curated_version") == version)).num_rows
        return NightResult(ingest_date=ingest_date, curated_version=version, unchanged=True,
                           selected=kept)
    found, applied = dedup.run_dedup(catalog, ingest_date, model_version, settings, run_id)
    curated: CuratedResult = select_curated(catalog, ingest_date, policy, model_version,
                                            run_id, applied)
    return NightResult(ingest_date=ingest_date, curated_version=curated.curated_version,
                       selected=curated.selected,
                       dedup=found.model_dump(include={"duplicates", "contaminated",
                                                       "clusters"}) if found else None)


class BackfillResult(BaseModel):
    """What a backfill did: faces scored, shards run/skipped, and each night's outcome."""

    model_version: str
    plan_id: str
    faces_scored: int = 0
    shards: int = 0
    skipped: int = 0
    nights: list[NightResult] = Field(default_factory=list)
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.faces_scored) or any(not n.unchanged for n in self.nights)


def backfill(catalog: DataCatalog, settings: Settings, model_version: str | None = None,
             dates: list[str] | None = None, run_id: str = "backfill") -> BackfillResult:
    """The whole backfill in this process, shard by shard (what the flow does with tasks)."""
    from omnifer.runtime.progress import Meter

    started = time.monotonic()
    plan = plan_backfill(catalog, model_version, dates, settings.backfill.shard_size)
    result = BackfillResult(model_version=plan.model_version, plan_id=plan.plan_id,
                            shards=len(plan.shards))
    with Meter(f"backfill {plan.model_version}", plan.n_faces, "face") as meter:
        for shard in plan.shards:
            done = process_backfill_shard(catalog, plan, shard, run_id)
            result.skipped += done.skipped
            result.faces_scored += 0 if done.skipped else done.faces
            meter.advance(len(shard.face_ids))
    for night in plan.nights:
        result.nights.append(reselect_night(catalog, settings, night, plan.model_version,
                                            run_id))
    result.seconds = round(time.monotonic() - started, 3)
    return result


def face_rate(result: BackfillResult) -> float:
    """Faces scored per second over the whole backfill (0 when nothing was scored)."""
    return result.faces_scored / result.seconds if result.seconds and result.faces_scored else 0.0


__all__ = ["BackfillPlan", "BackfillResult", "BackfillShard", "NightResult", "backfill",
           "dedup_applied", "face_rate", "nights_with_faces", "plan_backfill",
           "process_backfill_shard", "reselect_night"]
