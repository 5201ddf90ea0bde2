"""Prefect task around the run report: build it, then link it from the Prefect run."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_link_artifact
from prefect.cache_policies import NO_CACHE

from omnifer import report
from omnifer.catalog import DataCatalog
from tasks.logging import attach_prefect_logger


def report_link(uri: str) -> str:
    """A link a browser can follow: ``file://`` for a local report, the S3 URI otherwise."""
    return uri if "://" in uri else Path(uri).resolve().as_uri()


@task(name="report", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def report_task(catalog: DataCatalog, run_id: str) -> str:
    """Write the run's HTML report beside the catalog and attach a link artifact to the run."""
    attach_prefect_logger()
    uri = report.build_report(catalog, run_id=run_id)
    run = report.find_run(catalog, run_id)
    create_link_artifact(key="nightly-report", link=report_link(uri),
                         link_text=f"run report {run['ingest_date']}",
                         description=f"omnifer run report for {run['ingest_date']} ({run_id})")
    return uri
