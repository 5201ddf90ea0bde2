"""The ``backfill`` command: re-score stored faces with a promoted model, re-select nights.

Runs :func:`flows.backfill.backfill_flow` in this process (Prefect's temporary local server
unless one is configured); the flow is imported inside the command, so importing the library
never imports Prefect.
"""

from __future__ import annotations

import typer

from omnifer.cli._app import app, console
from omnifer.runtime.tables import print_table


@app.command("backfill")
def backfill_cmd(
    model: str = typer.Option(None, "--model", help="Model version (default: the primitive "
                              "model, i.e. the latest promoted)"),
    dates: list[str] = typer.Option(None, "--dates", "--date",
                                    help="Nights to backfill (repeatable; default: all)"),
    workers: int = typer.Option(None, help="Shards scored in parallel"),
) -> None:
    """Score every stored face the model has not scored (crops only: no image is decoded and
    nothing detected), then deduplicate and re-select each night into a new curated version.

    A second run with nothing new does nothing.
    """
    from flows.backfill import backfill_flow

    summary = backfill_flow(model=model, dates=list(dates or []) or None, workers=workers)
    rows = [(n["ingest_date"], n["curated_version"],
             "unchanged" if n["unchanged"] else "re-selected", n["selected"],
             (n.get("dedup") or {}).get("duplicates", "-"),
             (n.get("dedup") or {}).get("contaminated", "-")) for n in summary["nights"]]
    print_table(console, ("night", "curated version", "result", "selected", "duplicates",
                          "contaminated"), rows,
                title=f"backfill {summary['model_version']}  (run {summary['run_id']})")
    console.print(f"faces scored: {summary['faces_scored']}")
