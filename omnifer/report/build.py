"""Write a run's report: find the run, gather the facts, draw and render, store the page."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omnifer import storage
from omnifer.catalog.catalog import DataCatalog
from omnifer.errors import DatasetError
from omnifer.report.charts import render_charts
from omnifer.report.facts import NIGHTLY_FLOW, collect, find_run, report_uri
from omnifer.report.render import render_html

log = logging.getLogger(__name__)


def build_report(catalog: DataCatalog, run_id: str | None = None, date: str | None = None,
                 out: str | Path | None = None) -> str:
    """Write one run's self-contained HTML report; returns where it went (path or s3:// URI).

    The run is ``run_id`` (a unique prefix will do), else the latest nightly run of ``date``,
    else the latest nightly run. The file goes beside the catalog
    (``_reports/ingest_date=D/<run_id>.html``) unless ``out`` names another place.
    """
    started = time.monotonic()
    run = find_run(catalog, run_id, date)
    if run.get("flow") not in (None, NIGHTLY_FLOW):
        raise DatasetError(f"run {run['run_id']} is a {run.get('flow')!r} run; reports cover "
                           f"{NIGHTLY_FLOW} runs")
    facts = collect(catalog, run)
    page = render_html(facts, render_charts(facts))
    uri = str(out) if out is not None else report_uri(catalog, run)
    storage.write_bytes_atomic(uri, page.encode())
    if not uri.startswith("s3://"):
        uri = str(Path(uri.removeprefix("file://")).resolve())
    log.info("report for run %s (%s) written to %s in %.1fs (%d kB)", run["run_id"],
             run["ingest_date"], uri, time.monotonic() - started, len(page) // 1024)
    return uri
