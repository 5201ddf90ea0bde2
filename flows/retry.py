"""Retry what failed: reprocess the rows whose status says a stage failed, then re-select.

``omnifer retry-failed --stage detect`` runs this flow. Each affected shard is one task
(``omnifer.pipeline.retry.retry_shard``: idempotent, safe to crash and rerun); nights whose shards
got new scores are selected again, which replaces their curated file (its name comes from the
curated version, so nothing is added twice), and the retried nights are compacted again.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import flow_run_id
from omnifer.catalog import DataCatalog
from omnifer.catalog.runs import RunRecord, recorded_run
from omnifer.config import Settings, load_settings
from omnifer.curation.selection import policy_from_settings
from omnifer.errors import OmniferError
from omnifer.pipeline import retry
from tasks.backfill import dedup_task
from tasks.ingest import compact_task, select_task
from tasks.retry import find_failed_task, retry_shard_task


@flow(name="retry-failed", task_runner=ThreadPoolTaskRunner(max_workers=4), log_prints=True)
def retry_failed_flow(stage: str, date: str | None = None, workers: int = 2) -> dict[str, Any]:
    """Retry the shards with failed ``stage`` rows (``date``: one night; default all)."""
    settings = load_settings()
    catalog = DataCatalog(settings.catalog)
    run_id = flow_run_id("local")
    with recorded_run(catalog, run_id, "retry-failed", date or "all",
                      {"stage": stage, "date": date}) as run:
        return _retry(run, settings, catalog, stage, date, workers)


def _retry(run: RunRecord, settings: Settings, catalog: DataCatalog, stage: str,
           date: str | None, workers: int) -> dict[str, Any]:
    """The retry flow's stages, recorded in ``run``; raises after recording when a shard
    failed again."""
    logger = get_run_logger()
    run_id = run.run_id
    targets = find_failed_task(catalog, stage, date)
    logger.info("%d shard(s) with failed %s rows", len(targets), stage)

    results: list[retry.ShardRetry] = []
    failed: list[str] = []
    for start in range(0, len(targets), max(1, workers)):
        batch = targets[start : start + max(1, workers)]
        futures = [retry_shard_task.submit(catalog, t.ingest_date, t.shard_id, stage, run_id)
                   for t in batch]
        for target, fut in zip(batch, futures, strict=True):
            try:
                results.append(fut.result())
            except Exception as exc:
                logger.error("retry of shard %s failed: %s", target.shard_id, exc)
                failed.append(target.shard_id)
    counts = {"shards": len(targets), "done": len(results), "failed": len(failed),
              "failed_ids": failed, "retried": sum(r.retried for r in results),
              "recovered": sum(r.recovered for r in results),
              "still_failed": sum(r.still_failed for r in results),
              "new_faces": sum(r.new_faces for r in results)}
    run.stage("retry", "failed" if failed else "completed", counts)

    # Re-select every night that got new scores, with the model its shards were scored by.
    policy = policy_from_settings(settings)
    nights = sorted({(r.ingest_date, r.model_version) for r in results
                     if r.new_scores and r.model_version})
    curated = {}
    for night, model_version in nights:
        _, applied = dedup_task(catalog, night, model_version, settings, run_id)
        res = select_task(catalog, night, policy, model_version, run_id, applied)
        curated[night] = res.model_dump()
    run.stage("select", "completed", {"nights": curated})
    if settings.ingest.compact:  # retry files join their night's compacted file
        touched = sorted({r.ingest_date for r in results if r.retried})
        compacted: dict[str, Any] = {}
        for night in touched:
            try:
                compacted[night] = compact_task(catalog, night, run_id)
            except Exception as exc:  # the retry is committed: queries are slower, not wrong
                logger.error("compaction of %s failed (`omnifer catalog compact --date %s` "
                             "tries again): %s", night, night, exc)
                compacted[night] = {"error": str(exc)}
        ok = all("error" not in v for v in compacted.values())
        run.stage("compact", "completed" if ok else "failed",
                   {"nights": compacted})
    summary = {"run_id": run_id, "stage": stage, **counts,
               "selected": {k: v["selected"] for k, v in curated.items()},
               "shards_detail": [r.model_dump() for r in results]}
    run.finish("failed" if failed else "completed",
               {k: v for k, v in summary.items() if k != "shards_detail"})
    if failed:
        raise OmniferError(f"retry failed for {len(failed)} shard(s): {', '.join(failed)}")
    return summary
