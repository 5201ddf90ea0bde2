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
from omnifer.runtime.tables import print_table

# Counts shown per stage in ``omnifer runs`` (the record holds more; ``runs RUN_ID`` shows all).
_COUNT_KEYS = ("shards", "done", "skipped", "failed", "selected", "candidates", "retried",
               "recovered", "still_failed", "new_curated", "scored", "reselected", "removed",
               "contaminated")


def _catalog() -> Any:
    from omnifer.catalog import DataCatalog

    return DataCatalog.from_settings()


def _stage_text(name: str, stage: dict[str, Any]) -> str:
    counts = " ".join(f"{k}={stage[k]}" for k in _COUNT_KEYS
                      if isinstance(stage.get(k), int | float) and not isinstance(stage[k], bool))
    return f"{name}: {stage.get('state', '?')}" + (f" ({counts})" if counts else "")


@app.command("runs")
def runs_cmd(
    run_id: str = typer.Argument(None, help="Show one run's whole record (JSON)"),
    limit: int = typer.Option(20, help="How many recent runs to list"),
) -> None:
    """Recent flow runs with each stage's state and counts (newest first)."""
    from omnifer.catalog import runs

    catalog = _catalog()
    if run_id:
        record = runs.get_run(catalog, run_id)
        if record is None:
            raise DatasetError(f"no run record {run_id} under {catalog.runs_uri()}")
        console.print_json(json.dumps(record, default=str))
        return
    # Whole values, never cut (`omnifer rerun` takes the run ids): see omnifer.runtime.tables.
    rows = [(r["run_id"], r["flow"], r["ingest_date"], r["state"],
             "\n".join(_stage_text(k, v) for k, v in r.get("stages", {}).items()) or "-",
             str(r.get("started_at") or "")[:19]) for r in runs.list_runs(catalog, limit)]
    print_table(console, ("run", "flow", "date", "state", "stages", "started"), rows)


def _find_run(catalog: Any, run_id: str | None, date: str | None) -> dict[str, Any]:
    from omnifer.catalog import runs

    if run_id:
        record = runs.get_run(catalog, run_id)
        if record is None:
            raise DatasetError(f"no run record {run_id} under {catalog.runs_uri()}; "
                               "see `omnifer runs`")
        return record
    if not date:
        raise ConfigError("give a RUN_ID or --date (see `omnifer runs`)")
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


@app.command("rerun")
def rerun_cmd(
    run_id: str = typer.Argument(None, help="The run to finish (see `omnifer runs`)"),
    date: str = typer.Option(None, help="Instead of RUN_ID: the newest nightly run of a date"),
    force: bool = typer.Option(False, help="Run again even if the run completed"),
) -> None:
    """Finish a failed run: same flow, date and sources; committed shards are skipped.

    Only the shards that failed (or never ran) are processed again.
    """
    from omnifer.catalog import runs

    catalog = _catalog()
    record = _find_run(catalog, run_id, date)
    if record["state"] == "completed" and not force:
        console.print(f"run {record['run_id']} completed: nothing to rerun (--force to run it "
                      "again; committed shards would still be skipped)")
        return
    params = record.get("parameters") or {}
    if record["flow"] == "nightly-ingest":
        from flows.ingest import nightly_ingest

        new_id, ok, error = _run_flow(nightly_ingest, date=record["ingest_date"],
                                      sources=params.get("sources") or None)
    elif record["flow"] == "retry-failed":
        from flows.retry import retry_failed_flow

        new_id, ok, error = _run_flow(retry_failed_flow, stage=params["stage"],
                                      date=params.get("date"))
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
    else:
        console.print(f"rerun of {record['run_id']} as {new_id}: {new.get('state', '?')}")
    if not ok:
        raise OmniferError(f"rerun {new_id} failed: {error}")


@app.command("retry-failed")
def retry_failed_cmd(
    stage: str = typer.Option(..., help="fetch | detect | score: which failed rows to redo"),
    date: str = typer.Option(None, help="Only this ingest date (default: every night)"),
    workers: int = typer.Option(2, help="Shards retried in parallel"),
) -> None:
    """Reprocess the images (or scores) whose rows say ``stage`` failed, then re-select."""
    from omnifer.pipeline.retry import RETRY_STATUSES, find_failed

    if stage not in RETRY_STATUSES:
        raise ConfigError(f"unknown stage '{stage}': use one of {', '.join(RETRY_STATUSES)}")
    if not find_failed(_catalog(), stage, date):
        console.print(f"no rows with a failed {stage} stage "
                      f"({', '.join(RETRY_STATUSES[stage])}){' on ' + date if date else ''}")
        return
    from flows.retry import retry_failed_flow

    state = retry_failed_flow(stage=stage, date=date, workers=workers, return_state=True)
    summary = state.result(raise_on_failure=False)
    if not isinstance(summary, dict):
        raise OmniferError(f"retry-failed run {state.state_details.flow_run_id} failed: "
                           f"{summary}")
    print_table(console, ("date", "shard", "retried", "recovered", "still failed", "new faces"),
                [(r["ingest_date"], r["shard_id"], r["retried"], r["recovered"],
                  r["still_failed"], r["new_faces"]) for r in summary["shards_detail"]],
                title=f"retry-failed --stage {stage}  (run {summary['run_id']})")
    console.print(f"re-selected: {summary['selected'] or 'nothing (no new scores)'}")
