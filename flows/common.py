"""What every flow shares: the id of the current run."""

from __future__ import annotations

import datetime as dt

from prefect.runtime import flow_run


def flow_run_id(prefix: str) -> str:
    """The Prefect flow run's id; outside a run, ``<prefix>-<UTC timestamp>``."""
    return str(flow_run.get_id() or f"{prefix}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}")
