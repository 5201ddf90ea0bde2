"""Flow-run state hooks shared by the flows: a run that raised still ends its run record.

A flow writes its record (``omnifer.catalog.runs``) as it goes and ends it itself on the paths it
expects. When it raises instead (no promoted model, no sources, a bug), Prefect calls
:func:`end_run_record` (``on_failure`` / ``on_crashed``): the record ends ``failed`` or
``crashed`` with the error, and a run that failed before writing any record gets one, so
``omnifer runs`` lists every run Prefect ran. A SIGKILLed process runs no hook: that case is
``omnifer.catalog.runs.observe``'s (Prefect's state, the process, the heartbeat).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

log = logging.getLogger("omnifer.flows")


def end_run_record(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect hook ``(flow, flow_run, state)``: end the run's record with the state's error.

    Never raises: a catalog that cannot be written must not hide the flow's own error.
    """
    from omnifer.catalog import DataCatalog, runs

    try:
        params = {k: v for k, v in dict(flow_run.parameters or {}).items()
                  if isinstance(v, str | int | float | bool | list | dict | type(None))}
        date = params.get("date")
        if not isinstance(date, str):
            date = "all" if flow.name == "retry-failed" else dt.datetime.now(dt.UTC).date()
        message = (state.message or state.name or "failed").strip().splitlines()
        kind = "crashed" if state.is_crashed() else "failed"
        runs.record_failure(DataCatalog.from_settings(), str(flow_run.id), flow.name,
                            str(date), params, kind, message[0] if message else kind)
    except Exception as exc:  # noqa: BLE001 - a hook must not mask the flow's failure
        log.warning("could not end the run record of %s: %s", getattr(flow_run, "id", "?"),
                    exc)


RECORD_HOOKS: dict[str, list[Any]] = {"on_failure": [end_run_record],
                                      "on_crashed": [end_run_record]}
