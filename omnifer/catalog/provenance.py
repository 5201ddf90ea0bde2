"""Provenance: the columns every row carries, built in one place.

``run_id`` (the Prefect flow run), ``shard_id`` (the shard that wrote it; None for night- or
run-level rows), ``code_version`` (package version and git commit) and ``created_at`` (UTC).
Stages put :func:`provenance` into their rows, so "what produced this row" is a query.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from omnifer.version import code_version


def utc_now() -> dt.datetime:
    """The current time, timezone-aware UTC (what ``created_at`` holds)."""
    return dt.datetime.now(dt.UTC)


def provenance(run_id: str | None, shard_id: str | None = None,
               created_at: dt.datetime | None = None) -> dict[str, Any]:
    """``{run_id, shard_id, code_version, created_at}`` for rows written now (or at
    ``created_at``). Schemas without ``shard_id`` ignore it."""
    return {"run_id": run_id, "shard_id": shard_id, "code_version": code_version(),
            "created_at": created_at or utc_now()}
