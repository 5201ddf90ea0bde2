"""Run records: what each flow run did, stage by stage, kept beside the catalog.

One small JSON document per run (``_runs/<run_id>.json``), rewritten atomically as stages
finish. Operators read them with ``omnifer runs``; a rerun finds the date and sources there.
Prefect keeps its own run history too, but the catalog must answer "what produced these rows"
even when the Prefect database is gone.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from omnifer import storage
from omnifer.catalog import DataCatalog


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def _uri(catalog: DataCatalog, run_id: str) -> str:
    return catalog.aux_uri("_runs", f"{run_id}.json")


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
               for u in storage.list_files(catalog.aux_uri("_runs"), ".json")]
    records.sort(key=lambda r: r.get("started_at") or "", reverse=True)
    return records[:limit]


def get_run(catalog: DataCatalog, run_id: str) -> dict[str, Any] | None:
    uri = _uri(catalog, run_id)
    return json.loads(storage.read_bytes(uri)) if storage.exists(uri) else None
