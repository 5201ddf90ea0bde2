"""Prefect tasks of the closed loop: backfill shards, re-selection, and a night's dedup.

Idempotence lives in the library (shard ids from the model and the faces, commit markers,
curated versions named by their inputs), so the tasks carry ``NO_CACHE``.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from omnifer.catalog import DataCatalog
from omnifer.catalog.plans import ShardResult
from omnifer.config import Settings
from omnifer.curation.curated import DedupApplied
from omnifer.curation.dedup import DedupResult, run_dedup
from omnifer.pipeline import backfill
from tasks.logging import attach_prefect_logger


@task(name="plan-backfill", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def plan_backfill_task(catalog: DataCatalog, model_version: str | None, dates: list[str] | None,
                       shard_size: int) -> backfill.BackfillPlan:
    attach_prefect_logger()
    return backfill.plan_backfill(catalog, model_version, dates, shard_size)


@task(name="backfill-shard", task_run_name="backfill-{shard.shard_id}", retries=2,
      retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def backfill_shard_task(catalog: DataCatalog, plan: backfill.BackfillPlan,
                        shard: backfill.BackfillShard, run_id: str) -> ShardResult:
    attach_prefect_logger()
    return backfill.process_backfill_shard(catalog, plan, shard, run_id)


@task(name="reselect-night", task_run_name="reselect-{ingest_date}", retries=1,
      cache_policy=NO_CACHE)
def reselect_task(catalog: DataCatalog, settings: Settings, ingest_date: str,
                  model_version: str, run_id: str) -> backfill.NightResult:
    attach_prefect_logger()
    return backfill.reselect_night(catalog, settings, ingest_date, model_version, run_id)


@task(name="dedup", retries=1, cache_policy=NO_CACHE)
def dedup_task(catalog: DataCatalog, ingest_date: str, model_version: str, settings: Settings,
               run_id: str) -> tuple[DedupResult | None, DedupApplied | None]:
    """Near-duplicates and contaminated faces of the night (``omnifer.curation.dedup``)."""
    attach_prefect_logger()
    return run_dedup(catalog, ingest_date, model_version, settings, run_id)
