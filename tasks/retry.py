"""Prefect tasks around ``omnifer.pipeline.retry``: one task per shard, retries and logging."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from omnifer.catalog import DataCatalog
from omnifer.pipeline import retry
from tasks.logging import attach_prefect_logger
from tasks.worker import prepare_dask_worker


@task(name="find-failed", cache_policy=NO_CACHE)
def find_failed_task(
    catalog: DataCatalog, stage: str, date: str | None
) -> list[retry.RetryTarget]:
    return retry.find_failed(catalog, stage, date)


@task(
    name="retry-shard",
    task_run_name="retry-{stage}-{shard_id}",
    retries=1,
    retry_delay_seconds=5,
    cache_policy=NO_CACHE,
)
def retry_shard_task(
    catalog: DataCatalog, ingest_date: str, shard_id: str, stage: str, run_id: str
) -> retry.RetryResult:
    attach_prefect_logger()
    prepare_dask_worker(catalog, run_id, get_run_logger())  # on Dask: see tasks.worker
    return retry.retry_shard(catalog, ingest_date, shard_id, stage, run_id)
