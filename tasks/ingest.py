"""Prefect tasks around the ingest stage: retries, names and logging, nothing else.

Idempotence lives in the library (shard ids from inputs + parameters, commit markers), so the
tasks carry ``NO_CACHE``: Prefect's own result cache would be a second, weaker copy of it.
"""

from __future__ import annotations

import os
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from omnifer.catalog import DataCatalog, compaction
from omnifer.curation.curated import CuratedResult, DedupApplied, select_curated
from omnifer.curation.selection import SelectionPolicy
from omnifer.errors import OmniferError
from omnifer.pipeline import ingest
from tasks.logging import attach_prefect_logger
from tasks.worker import prepare_dask_worker


@task(name="plan", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def plan_task(
    catalog: DataCatalog, sources: list[Any], ingest_date: str, params: ingest.IngestParams,
    shard_size: int,
) -> ingest.IngestPlan:
    attach_prefect_logger()
    return ingest.plan_ingest(catalog, sources, ingest_date, params, shard_size)


@task(
    name="process-shard",
    task_run_name="shard-{shard.shard_id}",
    retries=2,
    retry_delay_seconds=[2, 10],
    cache_policy=NO_CACHE,
)
def shard_task(
    catalog: DataCatalog, plan: ingest.IngestPlan, shard: ingest.ShardSpec, run_id: str
) -> ingest.ShardResult:
    """Process one shard (``omnifer.pipeline.ingest.process_shard``), here or on a Dask worker.

    ``plan`` carries the sources and parameters but no shards (the flow strips them), so the
    arguments stay small when Dask pickles them. On a Dask worker the process is set up once
    and must see the catalog (see ``tasks.worker``).
    """
    attach_prefect_logger()
    logger = get_run_logger()
    worker = prepare_dask_worker(catalog, run_id, logger)
    # On Dask, the plan's other shards run in other processes: claim content in the catalog.
    try:
        result = ingest.process_shard(catalog, plan, shard, run_id,
                                      shared_claims=worker is not None)
    except OmniferError as exc:
        if worker:  # which machine lacks a model file or a credential
            exc.args = (f"on Dask worker {worker}: {exc}",)
        raise
    if worker and not result.skipped:
        logger.info("shard %s: %d images, %d faces in %.1f s on %s (pid %d)", shard.shard_id,
                    result.images, result.faces, result.seconds, worker, os.getpid())
    return result


@task(name="select", retries=1, cache_policy=NO_CACHE)
def select_task(
    catalog: DataCatalog, ingest_date: str, policy: SelectionPolicy, model_version: str,
    run_id: str, dedup: DedupApplied | None = None,
) -> CuratedResult:
    attach_prefect_logger()
    return select_curated(catalog, ingest_date, policy, model_version, run_id, dedup)


@task(name="summarize", cache_policy=NO_CACHE)
def summarize_task(catalog: DataCatalog, ingest_date: str) -> dict[str, Any]:
    return ingest.summarize(catalog, ingest_date)


@task(name="compact", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def compact_task(catalog: DataCatalog, ingest_date: str, run_id: str) -> dict[str, Any]:
    """Merge the night's shard files into one file per dataset (see
    ``omnifer.catalog.compaction``)."""
    attach_prefect_logger()
    results = compaction.compact_night(catalog, ingest_date, run_id)
    return {r.dataset: r.model_dump(exclude={"dataset", "ingest_date"}) for r in results}
