"""Model versions in the catalog: lineage, and which model is the primitive model now.

A model version is a checkpoint folder (weights + card + prototypes) copied into the catalog's
``model_store/<version>/`` and described by rows of the ``models`` dataset. Rows are never
rewritten: registering and promoting are events, and "the primitive model" is the version of
the latest ``promoted`` event. That keeps lineage (parent, training datasets, metrics of both
candidates) queryable with DuckDB. An erasure request that took away data a version learned
from adds a ``trained_on_erased`` event (:func:`flag_trained_on_erased`); the version stays.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from omnifer import storage
from omnifer.catalog.catalog import DataCatalog
from omnifer.catalog.provenance import provenance
from omnifer.catalog.schemas import MODELS
from omnifer.config import join_uri
from omnifer.errors import ModelFileError
from omnifer.models.modelfiles import omnifer_home

log = logging.getLogger(__name__)


def _event_row(
    version: str,
    event: str,
    uri: str,
    parent: str | None,
    train_datasets: dict[str, Any],
    metrics: dict[str, Any],
    classes: list[str],
    run_id: str | None,
) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "model_version": version,
                "event": event,
                "uri": uri,
                "parent_version": parent,
                "train_datasets": json.dumps(train_datasets, sort_keys=True),
                "metrics": json.dumps(metrics, sort_keys=True),
                "classes": classes,
                **provenance(run_id),
            }
        ],
        schema=MODELS,
    )


def register_version(
    catalog: DataCatalog,
    checkpoint_dir: Path,
    version: str,
    *,
    parent: str | None = None,
    train_datasets: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    classes: list[str] | None = None,
    run_id: str | None = None,
) -> str:
    """Copy a checkpoint into the model store and record a ``registered`` event."""
    store = catalog.model_store_uri(version)
    files = sorted(p for p in Path(checkpoint_dir).iterdir() if p.is_file())
    if not files:
        raise ModelFileError(f"checkpoint folder {checkpoint_dir} is empty")
    for path in files:
        storage.write_bytes_atomic(join_uri(store, path.name), path.read_bytes())
    if classes is None:
        card = Path(checkpoint_dir) / "card.json"
        classes = json.loads(card.read_text()).get("classes", []) if card.exists() else []
    row = _event_row(version, "registered", store, parent, train_datasets or {}, metrics or {},
                     list(classes), run_id)
    catalog.write("models", f"{version}-registered.parquet", row)
    return store


def record_event(
    catalog: DataCatalog, version: str, event: str, metrics: dict[str, Any],
    run_id: str | None = None,
) -> None:
    """Record ``promoted`` or ``rejected`` for a registered version (with the figures)."""
    reg = history(catalog, version)
    if reg is None:
        raise ModelFileError(f"model version {version} is not registered")
    row = _event_row(version, event, reg["uri"], reg["parent_version"],
                     json.loads(reg["train_datasets"]), metrics, reg["classes"], run_id)
    catalog.write("models", f"{version}-{event}.parquet", row)


FLAG_EVENT = "trained_on_erased"
"""The event that flags a version whose training data an erasure request took away."""


def flag_trained_on_erased(catalog: DataCatalog, version: str, request_id: str, why: str,
                           run_id: str | None = None) -> None:
    """Record a ``trained_on_erased`` event for ``version``: it learned from rows that erasure
    request ``request_id`` removed (``why``: through which curated/distilled version or
    teacher). One file per version and request, so recording it again changes nothing."""
    reg = history(catalog, version)
    if reg is None:
        raise ModelFileError(f"model version {version} is not registered")
    row = _event_row(version, FLAG_EVENT, reg["uri"], reg["parent_version"],
                     json.loads(reg["train_datasets"]), {"erasure": request_id, "why": why},
                     reg["classes"], run_id)
    catalog.write("models", f"{version}-{FLAG_EVENT}-{request_id}.parquet", row)


def flagged_versions(catalog: DataCatalog) -> dict[str, list[str]]:
    """Model version → the erasure requests that flagged it (``trained_on_erased``)."""
    table = catalog.read("models", columns=["model_version", "event", "metrics"])
    out: dict[str, list[str]] = {}
    for version, event, metrics in zip(*(table[c].to_pylist() for c in table.column_names),
                                       strict=True):
        if event == FLAG_EVENT:
            out.setdefault(version, []).append(json.loads(metrics or "{}").get("erasure", ""))
    return {v: sorted(r) for v, r in out.items()}


def history(catalog: DataCatalog, version: str) -> dict[str, Any] | None:
    """The ``registered`` row of ``version`` (None when it is not registered)."""
    table = catalog.read("models")
    rows = table.filter(
        pc.and_(pc.equal(table["model_version"], version), pc.equal(table["event"], "registered"))
    ).to_pylist()
    return rows[0] if rows else None


def primitive_model(catalog: DataCatalog) -> tuple[str, str]:
    """``(version, uri)`` of the current primitive model (latest promotion)."""
    table = catalog.read("models")
    promoted = table.filter(pc.equal(table["event"], "promoted")).to_pylist()
    if not promoted:
        raise ModelFileError(
            "no primitive model is promoted yet: train one with 'omnifer train' and "
            "'omnifer models promote', or run 'make demo'"
        )
    latest = max(promoted, key=lambda r: (r["created_at"], r["model_version"]))
    return latest["model_version"], latest["uri"]


def local_checkpoint(uri: str, version: str) -> Path:
    """A local folder with the checkpoint at ``uri`` (downloaded once into the cache)."""
    if not uri.startswith("s3://"):
        return Path(uri.removeprefix("file://"))
    # Keyed by URI too: another catalog may hold other weights under the same version name.
    digest = hashlib.sha256(uri.encode()).hexdigest()[:12]
    dest = omnifer_home() / "model_cache" / f"{version}-{digest}"
    marker = dest / ".complete"
    if marker.exists():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    for file_uri in storage.list_files(uri):
        (dest / file_uri.rsplit("/", 1)[-1]).write_bytes(storage.read_bytes(file_uri))
    marker.touch()
    return dest
