"""Retry what failed: reprocess the rows whose status says a stage failed, then re-select.

``omnifer retry-failed --stage detect`` runs this flow. Each affected shard is one task
(``omnifer.pipeline.retry.retry_shard``: idempotent, safe to crash and rerun); nights whose shards
got new scores are selected again, which replaces their curated file (its name comes from the
curated version, so nothing is added twice), and the retried nights are compacted again.
"""

from __future__ import annotations

import contextlib
from typing import Any

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import flow_run_id
from flows.hooks import end_run_record
from flows.runners import (
    RunnerChoice,
    choose_runner,
    require_dask,
    require_prefect_server,
    shard_error,
    shard_runner,
)
from omnifer.catalog import DataCatalog
from omnifer.catalog.runs import RunRecord, recorded_run
from omnifer.config import Settings, load_settings
from omnifer.curation.selection import policy_from_settings
from omnifer.errors import OmniferError
from omnifer.params import check_date
from omnifer.pipeline import retry
from tasks.backfill import dedup_task
from tasks.ingest import compact_task, select_task
from tasks.retry import find_failed_task, retry_shard_task


@flow(name="retry-failed", task_runner=ThreadPoolTaskRunner(max_workers=4), log_prints=True,
      on_failure=[end_run_record], on_crashed=[end_run_record])
def retry_failed_flow(stage: str, date: str | None = None, workers: int = 2,
                      resumes: str | None = None, task_runner: str | None = None,
                      dask_address: str | None = None) -> dict[str, Any]:
    """Retry the shards with failed ``stage`` rows (``date``: one night; default all).

    ``resumes``: the run id this run finishes (``omnifer rerun`` sets it; both records link).
    ``task_runner`` / ``dask_address``: where the shards run, as for the nightly ingest
    (``flows.runners``; default ``ingest.task_runner``).
    """
    if date is not None:  # before anything else: it names folders
        check_date(date, "date")
    settings = load_settings()
    catalog = DataCatalog(settings.catalog)
    runner = choose_runner(settings.ingest, task_runner, dask_address, max(1, workers))
    if runner.kind == "dask":
        require_dask()
        require_prefect_server()
    run_id = flow_run_id("local")
    with recorded_run(catalog, run_id, "retry-failed", date or "all",
                      {"stage": stage, "date": date, **runner.as_parameters()},
                      resumes=resumes) as run:
        return _retry(run, settings, catalog, stage, date, runner)


def _retry(run: RunRecord, settings: Settings, catalog: DataCatalog, stage: str,
           date: str | None, runner: RunnerChoice) -> dict[str, Any]:
    """The retry flow's stages, recorded in ``run``; raises after recording when a shard
    failed again."""
    logger = get_run_logger()
    run_id = run.run_id
    targets = find_failed_task(catalog, stage, date)
    logger.info("%d shard(s) with failed %s rows", len(targets), stage)

    results: list[retry.RetryResult] = []
    failed: list[str] = []
    started = 0
    try:
        with shard_runner(runner) if targets else contextlib.nullcontext() as submitter:
            step = submitter.slots if submitter else 1
            for start in range(0, len(targets), step):
                if not submitter.alive():
                    logger.error("the Dask scheduler is gone: %d shard(s) not started",
                                 len(targets) - start)
                    break
                batch = targets[start : start + step]
                futures = [submitter.submit(retry_shard_task, catalog=catalog,
                                            ingest_date=t.ingest_date, shard_id=t.shard_id,
                                            stage=stage, run_id=run_id) for t in batch]
                started += len(batch)
                for target, fut in zip(batch, futures, strict=True):
                    try:
                        results.append(fut.result())
                    except Exception as exc:
                        logger.error("retry of shard %s failed: %s", target.shard_id,
                                     shard_error(exc))
                        failed.append(target.shard_id)
    except OmniferError as exc:  # the runner did not start (e.g. no scheduler there)
        logger.error("shards not run: %s", exc)
    failed += [t.shard_id for t in targets[started:]]
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
