"""Operations: what ran (``runs``), finish a failed run (``rerun``), retry failed rows.

Run records (``_runs/<run_id>.json`` beside the catalog) say which flow ran for which night
with which sources, and what each stage did. ``rerun`` calls the same flow again with the
same parameters; committed shards are skipped by the library (shard markers), so only the
failed work is done again. Flows are imported inside the commands: importing the library
never imports Prefect.
"""

from __future__ import annotations

import json
from typing import Any

import typer

from omnifer.cli._app import app, console
from omnifer.errors import ConfigError, DatasetError, OmniferError
from omnifer.params import check_date
from omnifer.runtime.tables import print_table

# Counts shown per stage in ``omnifer runs`` (the record holds more; ``runs RUN_ID`` shows all).
# Listed vs rowed: the plan stage says what listing saw, the shards stage how many rows the
# planned objects got (``rowed`` = ``planned`` once every shard has committed).
_COUNT_KEYS = ("shards", "done", "skipped", "failed", "listed", "planned", "unchanged",
               "ignored", "excluded", "skipped_entries", "rowed", "selected", "candidates",
               "retried", "recovered", "still_failed", "new_curated", "blocked", "scored",
               "reselected", "removed", "contaminated")


def _catalog() -> Any:
    from omnifer.catalog import DataCatalog

    return DataCatalog.from_settings()


def _stage_text(name: str, stage: dict[str, Any]) -> str:
    counts = " ".join(f"{k}={stage[k]}" for k in _COUNT_KEYS
                      if isinstance(stage.get(k), int | float) and not isinstance(stage[k], bool))
    return f"{name}: {stage.get('state', '?')}" + (f" ({counts})" if counts else "")


def _observe(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(state, why) per record: ``running`` records checked against Prefect, their process
    and their heartbeat (:func:`omnifer.catalog.runs.observe`)."""
    from omnifer.catalog import runs

    running = [r["run_id"] for r in records if r.get("state") == "running"]
    if not running:
        return [(str(r.get("state")), "") for r in records]
    from omnifer.config import load_settings

    stale = load_settings().runs.stale_after_s
    from flows.common import prefect_states

    states = prefect_states(running)
    return [runs.observe(r, states.get(r["run_id"]), stale_after_s=stale) for r in records]


def _state_text(record: dict[str, Any], state: str) -> str:
    lines = [state]
    if record.get("resumed_by"):
        lines.append(f"resumed by {record['resumed_by'][:8]}")
    if record.get("resumes"):
        lines.append(f"resumes {record['resumes'][:8]}")
    return "\n".join(lines)


@app.command("runs")
def runs_cmd(
    run_id: str = typer.Argument(None, help="Show one run's whole record (JSON); a unique "
                                            "prefix of its id will do"),
    limit: int = typer.Option(20, help="How many recent runs to list"),
) -> None:
    """Recent flow runs with each stage's state and counts (newest first).

    A run whose record still says running but whose flow run Prefect reports over, whose
    process is gone, or whose heartbeat stopped shows as crashed; a rerun's record says which
    run it resumes, and the finished run which run resumed it.
    """
    from omnifer.catalog import runs

    catalog = _catalog()
    if run_id:
        record = runs.resolve_run(catalog, run_id)
        ((state, why),) = _observe([record])
        if state != record.get("state"):
            record = {**record, "observed_state": state, "observed_because": why}
        console.print_json(json.dumps(record, default=str))
        return
    # Whole values, never cut (`omnifer rerun` takes the run ids): see omnifer.runtime.tables.
    records = runs.list_runs(catalog, limit)
    rows = []
    for r, (state, _) in zip(records, _observe(records), strict=True):
        stages = "\n".join(_stage_text(k, v) for k, v in r.get("stages", {}).items())
        if r.get("error") and not stages:
            stages = f"error: {r['error'][:120]}"
        rows.append((r["run_id"], r["flow"], r["ingest_date"], _state_text(r, state),
                     stages or "-", str(r.get("started_at") or "")[:19]))
    print_table(console, ("run", "flow", "date", "state", "stages", "started"), rows)


def _find_run(catalog: Any, run_id: str | None, date: str | None) -> dict[str, Any]:
    from omnifer.catalog import runs

    if run_id:
        return runs.resolve_run(catalog, run_id)  # the id, or a unique prefix of it
    if not date:
        raise ConfigError("give a RUN_ID or --date (see `omnifer runs`)")
    check_date(date, "--date")
    nightly = [r for r in runs.list_runs(catalog, limit=10_000)
               if r["flow"] == "nightly-ingest" and r["ingest_date"] == date]
    if not nightly:
        raise DatasetError(f"no nightly-ingest run for {date}; see `omnifer runs`")
    return nightly[0]  # newest first


def _run_flow(flow: Any, **parameters: Any) -> tuple[str, bool, str]:
    """Run ``flow`` in-process; (run id, completed?, error line). Never raises on failure."""
    state = flow(**parameters, return_state=True)
    run_id = str(state.state_details.flow_run_id)
    error = ""
    if not state.is_completed():
        try:
            state.result()
        except Exception as exc:
            error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return run_id, state.is_completed(), error


def _runner_options(dask: str | None, threads: bool,
                    recorded: dict[str, Any] | None = None) -> dict[str, Any]:
    """``task_runner``/``dask_address`` for a flow from ``--dask``/``--threads``, else the
    recorded run's (a rerun runs where the run ran), else None (``ingest.task_runner``);
    checked now, so that a missing extra or server is one line before Prefect starts."""
    from flows.runners import preflight

    if dask and threads:
        raise ConfigError("--dask and --threads exclude each other")
    recorded = recorded or {}
    if dask:
        out = {"task_runner": "dask", "dask_address": dask}
    elif threads:
        out = {"task_runner": "threads", "dask_address": None}
    else:
        out = {"task_runner": recorded.get("task_runner"),
               "dask_address": recorded.get("dask_address")}
    preflight(out["task_runner"], out["dask_address"])
    return out


@app.command("rerun")
def rerun_cmd(
    run_id: str = typer.Argument(None, help="The run to finish, or a unique prefix of its id "
                                            "(see `omnifer runs`)"),
    date: str = typer.Option(None, help="Instead of RUN_ID: the newest nightly run of a date"),
    force: bool = typer.Option(False, help="Run again even if the run completed (or still "
                                           "looks alive)"),
    dask: str = typer.Option(None, "--dask", metavar="ADDRESS|local",
                             help="Run the shards on Dask (default: where the run ran them)"),
    threads: bool = typer.Option(False, "--threads", help="Run the shards in this process's "
                                 "threads (default: where the run ran them)"),
) -> None:
    """Finish a failed or crashed run: same flow, date and sources; committed shards are skipped.

    Only the shards that failed (or never ran) are processed again. The new run's record says
    `resumes` (the old run) and the old one `resumed_by`; a crashed run is recorded crashed.
    """
    from omnifer.catalog import runs

    catalog = _catalog()
    record = _find_run(catalog, run_id, date)
    ((state, why),) = _observe([record])
    if state == "running" and not force:
        raise ConfigError(f"run {record['run_id']} is still running (pid {record.get('pid')} on "
                          f"{record.get('host')}, heartbeat {record.get('heartbeat_at')}); "
                          "wait for it, or `omnifer rerun --force` if you know it is dead")
    if state == "completed" and not force:
        console.print(f"run {record['run_id']} completed: nothing to rerun (--force to run it "
                      "again; committed shards would still be skipped)")
        return
    if state == "crashed":
        if record["state"] == "running":
            runs.mark_crashed(catalog, record["run_id"], why)
        why = why or record.get("crash") or record.get("error") or "recorded crashed"
        console.print(f"run {record['run_id']} crashed ({why}): resuming it", highlight=False)
    params = record.get("parameters") or {}
    runner = _runner_options(dask, threads, params)
    if record["flow"] == "nightly-ingest":
        from flows.ingest import nightly_ingest

        new_id, ok, error = _run_flow(nightly_ingest, date=record["ingest_date"],
                                      sources=params.get("sources") or None,
                                      resumes=record["run_id"], **runner)
    elif record["flow"] == "retry-failed":
        from flows.retry import retry_failed_flow

        new_id, ok, error = _run_flow(retry_failed_flow, stage=params["stage"],
                                      date=params.get("date"), resumes=record["run_id"],
                                      **runner)
    else:
        raise ConfigError(f"`omnifer rerun` finishes nightly-ingest and retry-failed runs; for a "
                          f"{record['flow']} run use `prefect flow-run retry` or run it again")
    new = runs.get_run(catalog, new_id) or {}
    shards = new.get("stages", {}).get("shards", {})
    if shards and not shards.get("shards"):
        console.print(f"rerun of {record['run_id']} as {new_id}: no unfinished shards, and "
                      "nothing new in the sources")
    elif shards:
        console.print(f"rerun of {record['run_id']} as {new_id}: "
                      f"{shards.get('skipped', 0)} committed shard(s) skipped, "
                      f"{len(shards.get('ran_ids', []))} ran again, "
                      f"{shards.get('failed', 0)} failed")
        for sid in shards.get("ran_ids", []):
            console.print(f"  ran    {sid}")
        for sid in shards.get("failed_ids", []):
            console.print(f"  failed {sid}")
        if shards.get("blocked"):
            console.print(f"  {shards['blocked']} skipped shard(s) were blocked by their "
                          "markers: the markers say done but the data is gone. Run `omnifer "
                          "catalog verify --repair`, then `omnifer rerun --date "
                          f"{record['ingest_date']} --force` rebuilds them.", soft_wrap=True)
            for sid in shards.get("blocked_ids", []):
                console.print(f"  blocked {sid}")
    else:
        console.print(f"rerun of {record['run_id']} as {new_id}: {new.get('state', '?')}")
    if not ok:
        raise OmniferError(f"rerun {new_id} failed: {error}")


@app.command("retry-failed")
def retry_failed_cmd(
    stage: str = typer.Option(...,
                              help="fetch | decode | detect | score: which failed rows to redo"),
    date: str = typer.Option(None, help="Only this ingest date (default: every night)"),
    workers: int = typer.Option(2, help="Shards retried in parallel"),
    dask: str = typer.Option(None, "--dask", metavar="ADDRESS|local",
                             help="Retry the shards on Dask: a scheduler (tcp://host:8786) or "
                             "'local'"),
) -> None:
    """Reprocess the images (or scores) whose rows say ``stage`` failed, then re-select."""
    from omnifer.pipeline.retry import RETRY_STATUSES, find_failed

    if date is not None:
        check_date(date, "--date")
    if stage not in RETRY_STATUSES:
        raise ConfigError(f"unknown stage '{stage}': use one of {', '.join(RETRY_STATUSES)}")
    if not find_failed(_catalog(), stage, date):
        console.print(f"no rows with a failed {stage} stage "
                      f"({', '.join(RETRY_STATUSES[stage])}){' on ' + date if date else ''}")
        return
    from flows.retry import retry_failed_flow

    runner = _runner_options(dask, False)
    state = retry_failed_flow(stage=stage, date=date, workers=workers, return_state=True,
                              **runner)
    summary = state.result(raise_on_failure=False)
    if not isinstance(summary, dict):
        raise OmniferError(f"retry-failed run {state.state_details.flow_run_id} failed: "
                           f"{summary}")
    print_table(console, ("date", "shard", "retried", "recovered", "still failed", "new faces"),
                [(r["ingest_date"], r["shard_id"], r["retried"], r["recovered"],
                  r["still_failed"], r["new_faces"]) for r in summary["shards_detail"]],
                title=f"retry-failed --stage {stage}  (run {summary['run_id']})")
    console.print(f"re-selected: {summary['selected'] or 'nothing (no new scores)'}")
