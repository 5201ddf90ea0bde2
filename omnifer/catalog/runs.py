"""Run records: what each flow run did, stage by stage, kept beside the catalog.

One small JSON document per run (``_runs/<run_id>.json``), rewritten atomically as stages
finish. Operators read them with ``omnifer runs``; a rerun finds the date and sources there.
Prefect keeps its own run history too, but the catalog must answer "what produced these rows"
even when the Prefect database is gone.

Every flow keeps its record the same way, with :func:`recorded_run`: start → stages → finished
(``completed``, or ``failed`` with the error when the flow raises before saying otherwise).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

from omnifer import storage
from omnifer.catalog.catalog import DataCatalog


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def _uri(catalog: DataCatalog, run_id: str) -> str:
    return catalog.run_record_uri(run_id)


def _save(catalog: DataCatalog, record: dict[str, Any]) -> None:
    storage.write_bytes_atomic(_uri(catalog, record["run_id"]),
                               json.dumps(record, indent=1, default=str).encode())


def start(
    catalog: DataCatalog, run_id: str, flow: str, ingest_date: str, parameters: dict[str, Any]
) -> dict[str, Any]:
    record = {"run_id": run_id, "flow": flow, "ingest_date": ingest_date,
              "parameters": parameters, "state": "running", "started_at": _now(),
              "finished_at": None, "stages": {}, "summary": {}}
    if storage.exists(_uri(catalog, run_id)):  # a Prefect retry of the same run
        record = {**json.loads(storage.read_bytes(_uri(catalog, run_id))), "state": "running"}
    _save(catalog, record)
    return record


def stage(
    catalog: DataCatalog, record: dict[str, Any], name: str, state: str, counts: dict[str, Any]
) -> None:
    record["stages"][name] = {"state": state, "at": _now(), **counts}
    _save(catalog, record)


def finish(catalog: DataCatalog, record: dict[str, Any], state: str,
           summary: dict[str, Any]) -> None:
    record.update(state=state, finished_at=_now(), summary=summary)
    _save(catalog, record)


def list_runs(catalog: DataCatalog, limit: int = 20) -> list[dict[str, Any]]:
    records = [json.loads(storage.read_bytes(u))
               for u in storage.list_files(catalog.runs_uri(), ".json")]
    records.sort(key=lambda r: r.get("started_at") or "", reverse=True)
    return records[:limit]


def get_run(catalog: DataCatalog, run_id: str) -> dict[str, Any] | None:
    uri = _uri(catalog, run_id)
    return json.loads(storage.read_bytes(uri)) if storage.exists(uri) else None


class RunRecord:
    """A run's record while the run goes on; see :func:`recorded_run`."""

    def __init__(self, catalog: DataCatalog, record: dict[str, Any]) -> None:
        self.catalog = catalog
        self.record = record
        self.finished = False

    @property
    def run_id(self) -> str:
        return self.record["run_id"]

    def stage(self, name: str, state: str, counts: dict[str, Any]) -> None:
        """Record (or overwrite) stage ``name`` with its state and counts."""
        stage(self.catalog, self.record, name, state, counts)

    def finish(self, state: str, summary: dict[str, Any]) -> None:
        """Mark the run ``state`` (``completed`` / ``failed``) with its summary."""
        finish(self.catalog, self.record, state, summary)
        self.finished = True


@contextlib.contextmanager
def recorded_run(
    catalog: DataCatalog, run_id: str, flow: str, ingest_date: str, parameters: dict[str, Any]
) -> Iterator[RunRecord]:
    """Keep a flow run's record: started on entry; on exit ``completed`` unless the body
    finished it itself; ``failed`` with ``{"error": ...}`` when the body raises first.

    The four flows (nightly ingest, retry, distill, retrain) all keep their records this way.
    """
    run = RunRecord(catalog, start(catalog, run_id, flow, ingest_date, parameters))
    try:
        yield run
    except BaseException as exc:
        if not run.finished:
            run.finish("failed", {"error": str(exc) or type(exc).__name__})
        raise
    if not run.finished:
        run.finish("completed", {})
