"""CLI command ``omnifer report``: one nightly run as a self-contained HTML page (a thin shell
over :func:`omnifer.report.build_report`, which the nightly flow calls too)."""

from __future__ import annotations

from pathlib import Path

import typer

from omnifer.cli._app import app


@app.command("report")
def report_cmd(
    run_id: str = typer.Argument(None, help="Run id (a unique prefix will do); "
                                            "default: the latest nightly run"),
    date: str = typer.Option(None, "--date", help="The latest nightly run of this ingest date"),
    out: Path = typer.Option(None, "--out", help="Write here instead of beside the catalog"),
) -> None:
    """Write a run's HTML report (charts, sample faces, model) and print its path."""
    from omnifer.catalog import DataCatalog
    from omnifer.params import check_date
    from omnifer.report import build_report

    if date is not None:
        check_date(date, "--date")

    # Plain print: a path must not be wrapped or coloured by rich (scripts read it).
    print(build_report(DataCatalog.from_settings(), run_id=run_id, date=date, out=out))
