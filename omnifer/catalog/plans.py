"""Ingest plans and shard commit markers: the bookkeeping that makes a night exact.

A night's new objects are listed once and cut into shards; the cut is written down
(``_plans/ingest_date=D/plan-NNN.json``, an :class:`IngestPlan`) before any work starts, so a
rerun after a crash finds the same shards with the same ids. A shard is committed when its
marker (``_shards/ingest_date=D/<shard_id>.json``, a :class:`ShardResult`) exists: the ingest
writes it after the shard's files, retry keeps its counts true, compaction merges only the
files of committed shards. Everything that reads or writes plans and markers goes through here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

from pydantic import BaseModel, Field

from omnifer import storage
from omnifer.catalog.catalog import DataCatalog
from omnifer.catalog.provenance import utc_now
from omnifer.config import join_uri


def digest(obj: Any) -> str:
    """sha256 (hex) of ``obj`` as canonical JSON: how plan, shard and version ids are made."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class IngestParams(BaseModel):
    """Everything that changes a shard's output; its fingerprint is part of the shard id."""

    detector: str = "yunet"
    min_det_score: float = 0.6
    min_face_size: int = 32
    max_side: int = 1280
    # Detection scale (omnifer.faces.detectors): "auto" | "full", refinement size, frame pass
    detect_scale: str = "auto"
    refine_px: int | None = None
    whole_frame: bool = True
    max_pixels: int = 40_000_000
    max_bytes: int = 50_000_000
    crop_jpeg_quality: int = 95
    score_batch_size: int | None = None  # None: by device (curation.scoring.batch_size_for)
    model_version: str
    model_uri: str

    def fingerprint(self) -> str:
        return digest(self.model_dump())[:16]


class ObjectRef(BaseModel):
    """One listed source object in a plan."""

    source: int  # index into IngestPlan.sources
    uri: str
    size: int | None = None
    version: str | None = None


class ShardSpec(BaseModel):
    """A shard: its id (a digest of its objects and the params) and its objects."""

    shard_id: str
    ingest_date: str
    objects: list[ObjectRef]


class IngestPlan(BaseModel):
    """A night's work: sources (as JSON specs), params and shards."""

    plan_id: str
    ingest_date: str
    sources: list[dict[str, Any]]
    params: IngestParams
    shards: list[ShardSpec]
    created_at: dt.datetime = Field(default_factory=utc_now)
    # What listing saw (omnifer.sources.listing.ListingReport.as_dict() + unchanged/planned):
    # every listed object is planned (-> one images row) or unchanged (its row is from a past
    # night).
    listing: dict[str, Any] = Field(default_factory=dict)

    @property
    def n_objects(self) -> int:
        return sum(len(s.objects) for s in self.shards)


class ShardResult(BaseModel):
    """What processing a shard did; its JSON is the shard's commit marker."""

    shard_id: str
    skipped: bool = False
    # Skipped because its marker says done, although these datasets hold none of its rows
    # (the data was deleted): `omnifer catalog verify --repair` lets a rerun rebuild it.
    missing_data: list[str] = Field(default_factory=list)
    images: int = 0
    by_status: dict[str, int] = Field(default_factory=dict)
    faces: int = 0
    seconds: float = 0.0


# -- plans ---------------------------------------------------------------------------------------
def load_plans(catalog: DataCatalog, date: str) -> list[IngestPlan]:
    """The plans of ``date``, oldest first."""
    files = storage.list_files(catalog.plans_uri(date), ".json")
    return [IngestPlan.model_validate_json(storage.read_bytes(f)) for f in files]


def plan_uri(catalog: DataCatalog, date: str, number: int) -> str:
    return join_uri(catalog.plans_uri(date), f"plan-{number:03d}.json")


def write_plan_exclusive(catalog: DataCatalog, plan: IngestPlan, number: int) -> IngestPlan:
    """Create plan file ``number`` of the night; if another run created it first, return that
    run's plan instead (see :func:`omnifer.storage.create_exclusive`)."""
    uri = plan_uri(catalog, plan.ingest_date, number)
    if storage.create_exclusive(uri, plan.model_dump_json(indent=1).encode()):
        return plan
    return IngestPlan.model_validate_json(storage.read_bytes(uri))


def find_shard(catalog: DataCatalog, date: str,
               shard_id: str) -> tuple[IngestPlan, ShardSpec] | None:
    """The plan and spec of shard ``shard_id`` of ``date`` (None when no plan has it)."""
    for plan in load_plans(catalog, date):
        for shard in plan.shards:
            if shard.shard_id == shard_id:
                return plan, shard
    return None


# -- shard commit markers ------------------------------------------------------------------------
def shard_done(catalog: DataCatalog, shard: ShardSpec) -> ShardResult | None:
    """The committed result of ``shard``, or None when it still has to run."""
    uri = catalog.shard_marker_uri(shard.ingest_date, shard.shard_id)
    if not storage.exists(uri):
        return None
    return ShardResult.model_validate_json(storage.read_bytes(uri))


def write_marker(catalog: DataCatalog, ingest_date: str, result: ShardResult) -> None:
    """Commit a shard (or rewrite its counts): write its marker atomically."""
    storage.write_bytes_atomic(catalog.shard_marker_uri(ingest_date, result.shard_id),
                               result.model_dump_json().encode())


def delete_marker(catalog: DataCatalog, ingest_date: str, shard_id: str) -> None:
    """Forget that a shard is committed (tests and benchmarks simulate crashes with it)."""
    storage.delete(catalog.shard_marker_uri(ingest_date, shard_id))


def committed_shards(catalog: DataCatalog, date: str) -> set[str]:
    """Shard ids of ``date`` whose commit marker exists."""
    return {uri.rsplit("/", 1)[-1].removesuffix(".json")
            for uri in storage.list_files(catalog.shard_markers_uri(date), ".json")}
