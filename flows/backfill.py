"""Backfill flow (``cpu`` or ``gpu`` pool): re-score stored faces with a promoted model,
then deduplicate and re-select every night, oldest first.

Started by ``omnifer backfill``, by the deployment of the same name, or by the retrain flow
after a promotion when ``backfill.on_promotion`` is set. Shards run in parallel (one task per
shard, never per face) and are skipped once committed; a rerun after a crash does only what
is missing, and a backfill with nothing new to do writes nothing.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import flow_run_id
from omnifer.catalog import DataCatalog
from omnifer.catalog.runs import recorded_run
from omnifer.config import load_settings
from omnifer.errors import OmniferError
from omnifer.runtime.progress import Meter
from tasks.backfill import backfill_shard_task, plan_backfill_task, reselect_task
from tasks.ingest import compact_task


@flow(name="backfill", task_runner=ThreadPoolTaskRunner(max_workers=16), log_prints=True)
def backfill_flow(model: str | None = None, dates: list[str] | None = None,
                  workers: int | None = None) -> dict[str, Any]:
    """Backfill ``model`` (default: the primitive model) over ``dates`` (default: all nights)."""
    settings = load_settings()
    catalog = DataCatalog(settings.catalog)
    logger = get_run_logger()
    run_id = flow_run_id("backfill")
    workers = workers or settings.backfill.workers
    today = dt.datetime.now(dt.UTC).date().isoformat()
    with recorded_run(catalog, run_id, "backfill", today,
                      {"model": model, "dates": dates}) as run:
        plan = plan_backfill_task(catalog, model, dates, settings.backfill.shard_size)
        logger.info("backfill %s: %d faces in %d shards, %d nights", plan.model_version,
                    plan.n_faces, len(plan.shards), len(plan.nights))
        task_plan = plan.model_copy(update={"shards": []})
        results, failed = [], []
        with Meter(f"backfill {plan.model_version}", plan.n_faces, "face") as meter:
            for start in range(0, len(plan.shards), workers):
                batch = plan.shards[start:start + workers]
                futures = [backfill_shard_task.submit(catalog, task_plan, s, run_id)
                           for s in batch]
                for shard, fut in zip(batch, futures, strict=True):
                    try:
                        results.append(fut.result())
                    except Exception as exc:
                        logger.error("backfill shard %s failed: %s", shard.shard_id, exc)
                        failed.append(shard.shard_id)
                    meter.advance(len(shard.face_ids))
        scored = sum(r.faces for r in results if not r.skipped)
        run.stage("shards", "failed" if failed else "completed",
                  {"shards": len(plan.shards), "done": len(results), "failed": len(failed),
                   "skipped": sum(r.skipped for r in results), "scored": scored,
                   "failed_ids": failed})
        if failed:
            raise OmniferError(f"{len(failed)} backfill shard(s) failed: {', '.join(failed)}; "
                               "rerun to finish them (committed shards are skipped)")
        nights = [reselect_task(catalog, settings, night, plan.model_version, run_id)
                  for night in plan.nights]
        removed = sum((n.dedup or {}).get("duplicates", 0) for n in nights)
        contaminated = sum((n.dedup or {}).get("contaminated", 0) for n in nights)
        run.stage("select", "completed",
                  {"nights": len(nights), "selected": sum(n.selected for n in nights),
                   "reselected": sum(not n.unchanged for n in nights), "removed": removed,
                   "contaminated": contaminated,
                   "curated_versions": {n.ingest_date: n.curated_version for n in nights}})
        if settings.ingest.compact and scored:
            for night in sorted({s.ingest_date for s in plan.shards}):
                try:
                    compact_task(catalog, night, run_id)
                except Exception as exc:  # committed already: slower queries, not wrong ones
                    logger.error("compaction of %s failed: %s", night, exc)
        summary = {"run_id": run_id, "model_version": plan.model_version,
                   "plan_id": plan.plan_id, "faces_scored": scored,
                   "nights": [n.model_dump() for n in nights],
                   "duplicates_removed": removed, "contaminated": contaminated}
        run.finish("completed", summary)
    return summary
