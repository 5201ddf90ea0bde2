"""The nightly ingest flow: plan → shards in parallel → select → summary.

Shards run through a thread pool with at most ``workers`` in flight, or on a Dask cluster
(``task_runner="dask"``, see ``flows.runners``); each worker thread or process keeps its
detector and model warm (``omnifer.pipeline.workers.WorkerResources``). A failed shard does
not stop the
others: the flow selects from what committed, writes its summary, then fails so that a rerun
(``omnifer rerun``, Prefect's retry, or the next night) does only the missing shards.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.deployments import run_deployment
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
from omnifer.config import RetrainSettings, Settings, load_settings
from omnifer.curation.curated import undistilled_rows
from omnifer.curation.selection import policy_from_settings
from omnifer.errors import OmniferError
from omnifer.models.versions import primitive_model
from omnifer.params import check_date
from omnifer.pipeline import ingest
from omnifer.runtime import heap
from omnifer.runtime.progress import Meter
from omnifer.runtime.timing import StepClock
from omnifer.sources import Source, parse_source
from tasks.backfill import dedup_task
from tasks.ingest import compact_task, plan_task, select_task, shard_task, summarize_task
from tasks.report import report_task


@contextlib.contextmanager
def _no_runner() -> Any:
    yield None  # nothing to run: do not start a cluster for an empty plan


def _configure_threads(workers: int) -> None:
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    heap.limit_arenas(max(2, workers))  # before the shard threads start: omnifer.runtime.heap


@flow(name="nightly-ingest", task_runner=ThreadPoolTaskRunner(max_workers=16), log_prints=True,
      on_failure=[end_run_record], on_crashed=[end_run_record])
def nightly_ingest(
    date: str | None = None,
    sources: list[str] | None = None,
    shard_size: int | None = None,
    workers: int | None = None,
    retrain: dict[str, Any] | None = None,
    task_runner: str | None = None,
    dask_address: str | None = None,
    resumes: str | None = None,
) -> dict[str, Any]:
    """Ingest what is new in ``sources`` for ``date`` (default: today, UTC).

    ``resumes``: the run id this run finishes (``omnifer rerun`` sets it; both records link).

    ``retrain``: overrides of the ``retrain`` settings for this run (e.g. ``{"enabled": true}``).
    ``task_runner``: ``threads`` or ``dask`` (default ``ingest.task_runner``); ``dask_address``:
    a Dask scheduler (``tcp://host:8786``) or ``local`` (a LocalCluster of ``workers``
    processes for this run); an address alone implies ``dask``. Dask needs the ``dask`` extra
    and a Prefect server (``PREFECT_API_URL``); without them the run fails before it starts.
    """
    clock = StepClock()  # where the night's wall time goes: one log line at its end
    if date is not None:  # before anything else: it names the night's folders
        check_date(date, "date")
    settings = load_settings()
    catalog = DataCatalog(settings.catalog)
    ingest_date = check_date(date or dt.datetime.now(dt.UTC).date().isoformat(), "date")
    run_id = flow_run_id("local")
    specs = [parse_source(s) for s in (sources or settings.sources)]
    if not specs:
        raise OmniferError("no sources: pass sources=[...], set 'sources' in omnifer.yaml, or "
                           "set OMNIFER_SOURCES='[\"s3://bucket/prefix\"]' where the flow "
                           "runs (the worker's environment)")
    workers = workers or settings.ingest.workers
    runner = choose_runner(settings.ingest, task_runner, dask_address, workers)
    if runner.kind == "dask":
        require_dask()
        require_prefect_server()
    else:
        _configure_threads(workers)
    model_version, model_uri = primitive_model(catalog)
    params = ingest.IngestParams(
        **settings.ingest.model_dump(exclude={"shard_size", "workers", "compact"}),
        model_version=model_version,
        model_uri=model_uri,
    )
    parameters = {"sources": [str(s) for s in (sources or settings.sources)],
                  **runner.as_parameters()}
    with recorded_run(catalog, run_id, "nightly-ingest", ingest_date, parameters,
                      resumes=resumes) as run:
        summary = _night(run, settings, catalog, specs, ingest_date, params, runner,
                         shard_size or settings.ingest.shard_size, retrain, clock)
    return summary


def _night(run: RunRecord, settings: Settings, catalog: DataCatalog, specs: list[Source],
           ingest_date: str, params: ingest.IngestParams, runner: RunnerChoice,
           shard_size: int,
           retrain: dict[str, Any] | None, clock: StepClock) -> dict[str, Any]:
    """The nightly flow's stages, recorded in ``run``; raises after recording when a shard or
    the retraining failed. ``clock`` times each stage (logged at the end)."""
    logger = get_run_logger()
    run_id = run.run_id
    model_version = params.model_version
    clock.mark("setup")
    plan = plan_task(catalog, specs, ingest_date, params, shard_size)
    logger.info("plan %s: %d objects in %d shards", plan.plan_id, plan.n_objects,
                len(plan.shards))
    # Listed vs rowed: every listed object is planned (one images row each) or unchanged.
    run.stage("plan", "completed",
               {"plan_id": plan.plan_id, "planned": plan.n_objects, **plan.listing})
    clock.mark("plan")

    results: list[ingest.ShardResult] = []
    failed: list[str] = []
    pending = list(plan.shards)
    in_flight: dict[Any, str] = {}
    sizes = {s.shard_id: len(s.objects) for s in plan.shards}
    # A shard needs the plan's id, sources and params, not its other shards: Prefect walks
    # every task argument (twice per task), and the whole plan made that O(objects) per shard.
    task_plan = plan.model_copy(update={"shards": []})
    if plan.shards:
        logger.info("shards run on %s", runner.describe())
    with Meter(f"ingest {ingest_date}", plan.n_objects, "img") as meter:
        try:
            with shard_runner(runner) if plan.shards else _no_runner() as submitter:
                while pending or in_flight:
                    if not in_flight and not submitter.alive():
                        logger.error("the Dask scheduler is gone: %d shard(s) not started",
                                     len(pending))
                        failed += [s.shard_id for s in pending]
                        break
                    while pending and len(in_flight) < submitter.slots and submitter.alive():
                        shard = pending.pop(0)
                        fut = submitter.submit(shard_task, catalog=catalog, plan=task_plan,
                                               shard=shard, run_id=run_id)
                        in_flight[fut] = shard.shard_id
                    for fut in submitter.wait_any(list(in_flight)):
                        shard_id = in_flight.pop(fut)
                        try:
                            results.append(fut.result())
                        except Exception as exc:
                            logger.error("shard %s failed: %s", shard_id, shard_error(exc))
                            failed.append(shard_id)
                        meter.advance(sizes[shard_id])
        except OmniferError as exc:  # the runner did not start (e.g. no scheduler there)
            logger.error("shards not run: %s", exc)
            failed += [s.shard_id for s in pending] + list(in_flight.values())
            pending, in_flight = [], {}
    counts = {"shards": len(plan.shards), "done": len(results),
              "skipped": sum(r.skipped for r in results), "failed": len(failed),
              "planned": plan.n_objects, "rowed": sum(r.images for r in results),
              "failed_ids": failed, "ran_ids": [r.shard_id for r in results if not r.skipped],
              # skipped by a marker although their data is gone (omnifer catalog verify)
              "blocked": sum(bool(r.missing_data) for r in results),
              "blocked_ids": [r.shard_id for r in results if r.missing_data]}
    if counts["blocked"]:
        logger.warning("%d shard(s) of %s skipped because their markers say done, but their "
                       "data is gone: run `omnifer catalog verify --repair`, then `omnifer "
                       "rerun --date %s --force`", counts["blocked"], ingest_date, ingest_date)
    run.stage("shards", "failed" if failed else "completed", counts)
    clock.mark("shards")
    if not failed and settings.ingest.compact:
        # One file per night and dataset, before anything reads the night back.
        try:
            compacted = compact_task(catalog, ingest_date, run_id)
            run.stage("compact", "completed", compacted)
        except Exception as exc:  # the shards are committed: queries are slower, not wrong
            logger.error("compaction of %s failed (the night's rows are intact; `omnifer "
                         "catalog compact --date %s` tries again): %s", ingest_date,
                         ingest_date, exc)
            run.stage("compact", "failed", {"error": str(exc)})
        clock.mark("compact")

    policy = policy_from_settings(settings)
    # Near-duplicates and evaluation-set faces leave the night before selection sees it.
    found, applied = dedup_task(catalog, ingest_date, model_version, settings, run_id)
    if found is not None:
        run.stage("dedup", "completed", {
            "removed": found.duplicates, "contaminated": found.contaminated,
            "clusters": found.clusters, "candidates": found.candidates,
            "dedup_version": found.dedup_version, "seconds": found.seconds})
    clock.mark("dedup")
    curated = select_task(catalog, ingest_date, policy, model_version, run_id, applied)
    run.stage("select", "completed", curated.model_dump())
    clock.mark("select")
    summary = summarize_task(catalog, ingest_date)
    summary.update(run_id=run_id, plan_id=plan.plan_id, model_version=model_version,
                   curated_version=curated.curated_version, failed_shards=failed,
                   blocked_shards=counts["blocked_ids"])
    if found is not None:
        summary.update(duplicates_removed=found.duplicates, contaminated=found.contaminated)
    clock.mark("summary")
    retrain_error = None
    if not failed:
        trigger = trigger_retraining(catalog, settings.retrain_settings(retrain), retrain)
        summary["retraining"] = trigger
        retrain_error = trigger.get("error")
        state = ("failed" if retrain_error else
                 "triggered" if trigger.get("triggered") else "skipped")
        run.stage("retrain-trigger", state, trigger)
    run.finish("failed" if failed or retrain_error else "completed", summary)
    clock.mark("retrain")
    try:  # the night's data is committed: a report that fails must not fail the night
        summary["report"] = report_task(catalog, run_id)
        run.stage("report", "completed", {"uri": summary["report"]})
    except Exception as exc:
        logger.error("run report failed: %s", exc)
    clock.mark("report")
    create_markdown_artifact(key="nightly-summary", markdown=summary_markdown(summary),
                             description=f"omnifer nightly ingest {ingest_date}")
    clock.mark("artifact")
    logger.info("night %s took %.2f s: %s", ingest_date, clock.total, clock.describe())
    logger.info("summary: %s", summary)
    if failed:
        raise OmniferError(f"{len(failed)} shard(s) failed: {', '.join(failed)}; "
                           "rerun to finish them (committed shards are skipped)")
    if retrain_error:
        raise OmniferError(f"ingest committed, but distillation/retraining failed: {retrain_error}")
    return summary


def trigger_retraining(catalog: DataCatalog, rs: RetrainSettings,
                       overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Start distill → retrain when enough curated rows are not distilled yet.

    With deployments configured the runs go to the ``gpu`` pool (``run_deployment``, not
    awaited: a CPU worker must not wait on GPU work); otherwise they run here as subflows.
    """
    new_rows = undistilled_rows(catalog)
    info: dict[str, Any] = {"enabled": rs.enabled, "new_curated": new_rows,
                            "min_new_curated": rs.min_new_curated, "triggered": False}
    if not rs.enabled or new_rows < rs.min_new_curated:
        return info
    # Imported here, not at the top: most nights do not retrain (docs/performance.md,
    # "Fixed cost of a run").
    from flows.distill import distill_flow
    from flows.retrain import retrain_flow

    info["triggered"] = True
    try:
        if rs.recipe == "curated":  # nothing to distil: straight to retraining
            if rs.deployment_retrain:
                run = run_deployment(name=rs.deployment_retrain,
                                     parameters={"retrain": overrides}, timeout=0)
                info["retrain_flow_run"] = str(run.id)
            else:
                info["retrain"] = retrain_flow(retrain=overrides)
        elif rs.deployment_distill:
            run = run_deployment(name=rs.deployment_distill,
                                 parameters={"then_retrain": True, "retrain": overrides},
                                 timeout=0)
            info["distill_flow_run"] = str(run.id)
        else:
            info.update(distill_flow(then_retrain=True, retrain=overrides))
    except Exception as exc:  # the night's data is committed; report, then fail the run
        get_run_logger().error("distill/retrain failed: %s", exc)
        info["error"] = f"{type(exc).__name__}: {exc}"
    return info


def summary_markdown(summary: dict[str, Any]) -> str:
    lines = [f"# Nightly ingest {summary['ingest_date']}", "",
             f"- images: **{summary['images']}**", f"- faces: **{summary['faces']}**",
             f"- selected: **{summary['selected']}** (curated {summary.get('curated_version')})",
             f"- model: {summary.get('model_version')}",
             f"- near-duplicates removed: {summary.get('duplicates_removed', '-')}, "
             f"contaminated (evaluation faces) caught: {summary.get('contaminated', '-')}",
             "", "| status | images |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary["images_by_status"].items()]
    lines += ["", "| class | selected |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary["selected_per_class"].items()]
    if summary.get("report"):
        lines += ["", f"Run report (charts, sample faces, model): `{summary['report']}` "
                  "(see the `nightly-report` link artifact)"]
    return "\n".join(lines)
