"""The nightly ingest flow: plan → shards in parallel → select → summary.

Shards run through a thread pool with at most ``workers`` in flight; each worker keeps its
detector and model warm (``omnifer.ingest.WorkerResources``). A failed shard does not stop the
others: the flow selects from what committed, writes its summary, then fails so that a rerun
(``omnifer rerun``, Prefect's retry, or the next night) does only the missing shards.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from omnifer import ingest, runs
from omnifer.catalog import DataCatalog
from omnifer.config import load_settings
from omnifer.errors import OmniferError
from omnifer.registry import primitive_model
from omnifer.sources import parse_source
from tasks.ingest import plan_task, select_task, shard_task, summarize_task


def _configure_threads(workers: int) -> None:
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@flow(name="nightly-ingest", task_runner=ThreadPoolTaskRunner(max_workers=16), log_prints=True)
def nightly_ingest(
    date: str | None = None,
    sources: list[str] | None = None,
    shard_size: int | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Ingest what is new in ``sources`` for ``date`` (default: today, UTC)."""
    logger = get_run_logger()
    settings = load_settings()
    catalog = DataCatalog(settings.catalog)
    ingest_date = date or dt.datetime.now(dt.UTC).date().isoformat()
    run_id = str(flow_run.get_id() or f"local-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}")
    specs = [parse_source(s) for s in (sources or settings.sources)]
    if not specs:
        raise OmniferError("no sources: pass sources=[...] or set 'sources' in omnifer.yaml")
    workers = workers or settings.ingest.workers
    _configure_threads(workers)
    model_version, model_uri = primitive_model(catalog)
    params = ingest.IngestParams(
        **settings.ingest.model_dump(exclude={"shard_size", "workers"}),
        model_version=model_version,
        model_uri=model_uri,
    )
    record = runs.start(catalog, run_id, "nightly-ingest", ingest_date,
                        {"sources": [str(s) for s in (sources or settings.sources)]})
    plan = plan_task(catalog, specs, ingest_date, params, shard_size or settings.ingest.shard_size)
    logger.info("plan %s: %d objects in %d shards", plan.plan_id, plan.n_objects,
                len(plan.shards))

    results: list[ingest.ShardResult] = []
    failed: list[str] = []
    pending = list(plan.shards)
    in_flight: dict[Any, str] = {}
    while pending or in_flight:
        while pending and len(in_flight) < workers:
            shard = pending.pop(0)
            in_flight[shard_task.submit(catalog, plan, shard, run_id)] = shard.shard_id
        done = [f for f in in_flight if f.state.is_final()]
        if not done:
            time.sleep(0.05)
            continue
        for fut in done:
            shard_id = in_flight.pop(fut)
            try:
                results.append(fut.result())
            except Exception as exc:
                logger.error("shard %s failed: %s", shard_id, exc)
                failed.append(shard_id)
    counts = {"shards": len(plan.shards), "done": len(results),
              "skipped": sum(r.skipped for r in results), "failed": len(failed),
              "failed_ids": failed}
    runs.stage(catalog, record, "shards", "failed" if failed else "completed", counts)

    policy = settings.selection_policy()
    curated = select_task(catalog, ingest_date, policy, model_version, run_id)
    runs.stage(catalog, record, "select", "completed", curated.model_dump())
    summary = summarize_task(catalog, ingest_date)
    summary.update(run_id=run_id, plan_id=plan.plan_id, model_version=model_version,
                   curated_version=curated.curated_version, failed_shards=failed)
    runs.finish(catalog, record, "failed" if failed else "completed", summary)
    create_markdown_artifact(key="nightly-summary", markdown=summary_markdown(summary),
                             description=f"omnifer nightly ingest {ingest_date}")
    logger.info("summary: %s", summary)
    if failed:
        raise OmniferError(f"{len(failed)} shard(s) failed: {', '.join(failed)}; "
                           "rerun to finish them (committed shards are skipped)")
    return summary


def summary_markdown(summary: dict[str, Any]) -> str:
    lines = [f"# Nightly ingest {summary['ingest_date']}", "",
             f"- images: **{summary['images']}**", f"- faces: **{summary['faces']}**",
             f"- selected: **{summary['selected']}** (curated {summary.get('curated_version')})",
             f"- model: {summary.get('model_version')}", "", "| status | images |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary["images_by_status"].items()]
    lines += ["", "| class | selected |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary["selected_per_class"].items()]
    return "\n".join(lines)
