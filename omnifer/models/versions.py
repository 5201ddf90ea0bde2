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
from omnifer.params import check_name

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
    """Copy a checkpoint into the model store and record a ``registered`` event.

    ``version`` names a folder: :func:`omnifer.params.check_name` (ConfigError otherwise)."""
    check_name(version, "model version")
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
    check_name(version, "model version")
    check_name(event, "model event")
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
            "no primitive model is promoted yet: train one with 'omnifer train', then "
            "'omnifer models register CHECKPOINT --version v1 --promote' (or 'omnifer models "
            "promote v1' for a registered one; 'omnifer models list' shows them), or run "
            "'make demo'"
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


# ------------------------------------------------------------------ the operator's verbs
# ``omnifer models register / promote / rollback / list``. Each verb adds event rows (never
# rewrites one), so a version promoted twice has two ``promoted`` rows, each in its own file.


def card_metrics(checkpoint_dir: Path) -> dict[str, Any]:
    """The figures of a checkpoint's ``card.json``, named as the ``models`` dataset names them.

    ``omnifer train`` holds out a validation split: its accuracy and confusion matrix become
    ``accuracy`` and ``confusion`` (with ``split: "val"``, ``classes``); the other training
    figures (epochs, loss, seconds) are kept, the per-epoch history is not. Empty when the
    folder has no card.
    """
    card_path = Path(checkpoint_dir) / "card.json"
    if not card_path.exists():
        return {}
    card = json.loads(card_path.read_text())
    raw = dict(card.get("metrics") or {})
    out = {k: v for k, v in raw.items() if k not in ("history", "val_confusion")}
    if "accuracy" not in out and raw.get("val_accuracy") is not None:
        out["accuracy"] = raw["val_accuracy"]
        out["split"] = "val"
    if "confusion" not in out and raw.get("val_confusion"):
        out["confusion"] = raw["val_confusion"]
    if card.get("classes"):
        out.setdefault("classes", list(card["classes"]))
    return out


def _all_events(catalog: DataCatalog) -> list[dict[str, Any]]:
    rows = catalog.read("models").to_pylist()
    order = {"registered": 0, "rejected": 1, "rolled_back": 2, "promoted": 3}
    return sorted(rows, key=lambda r: (r["created_at"], order.get(r["event"], 1),
                                       r["model_version"]))


def _add_event(catalog: DataCatalog, reg: dict[str, Any], event: str,
               metrics: dict[str, Any]) -> None:
    row = _event_row(reg["model_version"], event, reg["uri"], reg["parent_version"],
                     json.loads(reg["train_datasets"] or "{}"), metrics, reg["classes"], None)
    stamp = row["created_at"][0].as_py().strftime("%Y%m%dT%H%M%S%f")
    catalog.write("models", f"{reg['model_version']}-{event}-{stamp}.parquet", row)


def _registered(catalog: DataCatalog, version: str) -> dict[str, Any]:
    check_name(version, "model version")
    reg = history(catalog, version)
    if reg is None:
        known = sorted({r["model_version"] for r in _all_events(catalog)})
        raise ModelFileError(
            f"model version {version} is not registered ({', '.join(known) or 'none yet'}): "
            f"'omnifer models register CHECKPOINT --version {version}' adds it, 'omnifer "
            "models list' shows the versions")
    return reg


def current_version(catalog: DataCatalog) -> str | None:
    """The primitive model's version now (latest ``promoted`` event), or None."""
    try:
        return primitive_model(catalog)[0]
    except ModelFileError:
        return None


def promote(catalog: DataCatalog, version: str) -> dict[str, Any]:
    """Make registered ``version`` the primitive model: a ``promoted`` event (by the operator).

    Returns ``{"version", "previous", "changed"}``; promoting the current model changes
    nothing. Raises :class:`ModelFileError` for a version that is not registered.
    """
    reg = _registered(catalog, version)
    previous = current_version(catalog)
    if previous == version:
        return {"version": version, "previous": previous, "changed": False}
    _add_event(catalog, reg, "promoted", {"by": "operator", "previous": previous})
    return {"version": version, "previous": previous, "changed": True}


def _rolled_back(events: list[dict[str, Any]]) -> set[str]:
    """Versions whose last ``rolled_back`` event is newer than their last promotion."""
    last: dict[str, str] = {}
    for r in events:
        if r["event"] in ("promoted", "rolled_back"):
            last[r["model_version"]] = r["event"]
    return {v for v, e in last.items() if e == "rolled_back"}


def rollback(catalog: DataCatalog, version: str | None = None) -> dict[str, Any]:
    """Return to an earlier promoted version; the current one is marked ``rolled_back``.

    Without ``version``: the version promoted most recently before the current one, skipping
    versions already rolled back from (so rolling back twice steps back twice). With
    ``version``: that version, which must have been promoted before. Returns ``{"version",
    "previous"}``. Raises :class:`ModelFileError` when nothing is promoted, there is no
    earlier version to return to, or ``version`` was never promoted.
    """
    events = _all_events(catalog)
    current = current_version(catalog)
    if current is None:
        raise ModelFileError("no primitive model is promoted yet: nothing to roll back "
                             "('omnifer models promote VERSION' promotes a registered one)")
    promoted = [r["model_version"] for r in events if r["event"] == "promoted"]
    if version is not None:
        check_name(version, "model version")
        if version == current:
            raise ModelFileError(f"{version} is the primitive model already "
                                 "('omnifer models list' shows the history)")
        if version not in promoted:
            earlier = sorted(set(promoted) - {current})
            raise ModelFileError(
                f"{version} was never promoted, so there is nothing to roll back to "
                f"(earlier promoted: {', '.join(earlier) or 'none'}); 'omnifer models promote "
                f"{version}' promotes a registered version")
        target = version
    else:
        skip = _rolled_back(events) | {current}
        target = next((v for v in reversed(promoted) if v not in skip), None)
        if target is None:
            raise ModelFileError(f"no earlier promoted version to roll back to from {current} "
                                 "('omnifer models list' shows the history)")
    _add_event(catalog, _registered(catalog, current), "rolled_back", {"to": target})
    _add_event(catalog, _registered(catalog, target), "promoted",
               {"by": "rollback", "previous": current})
    return {"version": target, "previous": current}


def versions(catalog: DataCatalog) -> list[dict[str, Any]]:
    """One entry per version, oldest first: ``version``, ``parent``, ``registered_at``,
    ``events`` (in order), ``status`` (``primitive``, ``promoted before``, ``rolled back``,
    ``rejected``, ``registered``), ``accuracy`` (+ ``split``) and whether a confusion matrix is
    recorded (``confusion``)."""
    events = _all_events(catalog)
    current = current_version(catalog)
    rolled = _rolled_back(events)
    out: dict[str, dict[str, Any]] = {}
    for r in events:
        v = r["model_version"]
        entry = out.setdefault(v, {"version": v, "parent": r["parent_version"],
                                   "registered_at": r["created_at"], "events": [],
                                   "accuracy": None, "split": None, "confusion": False})
        entry["events"].append(r["event"])
        metrics = json.loads(r["metrics"] or "{}")
        if r["event"] == "registered":
            entry.update(parent=r["parent_version"], registered_at=r["created_at"])
        if isinstance(metrics.get("accuracy"), int | float) and (
                r["event"] == "registered" or entry["accuracy"] is None):
            entry["accuracy"] = float(metrics["accuracy"])
            entry["split"] = metrics.get("split", "test")  # retrain and the demo: test split
        entry["confusion"] = entry["confusion"] or bool(metrics.get("confusion"))
    for v, entry in out.items():
        ev = entry["events"]
        entry["status"] = ("primitive" if v == current else "rolled back" if v in rolled
                           else "promoted before" if "promoted" in ev
                           else "rejected" if "rejected" in ev else "registered")
    return list(out.values())
