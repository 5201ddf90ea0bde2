"""Run reports: one self-contained HTML page per nightly run, to see the night at a glance.

Why one file with everything inside (charts and face crops as ``data:`` URIs, inline CSS, no
script, no external resource): it is written beside the catalog
(``_reports/ingest_date=D/<run_id>.html``, local or S3), linked from the Prefect run, and
opens anywhere — a laptop, a mail attachment, an archive years later — with no server.

Everything shown is read back from the committed catalog with DuckDB (the run record only
says which run, date, model and curated version to look at), so the page shows what the
datasets hold, not what the flow believed it wrote. This module gathers the facts;
:mod:`omnifer.report.charts` draws them (matplotlib, Agg, PNGs) and :mod:`omnifer.report.render`
puts them into the page. A demo night (~2 500 faces) renders in a few seconds.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.compute as pc

from omnifer import storage
from omnifer.catalog import runs
from omnifer.catalog.catalog import DataCatalog
from omnifer.config import load_settings
from omnifer.curation.dedup import night_counts
from omnifer.curation.selection import SelectionPolicy, policy_from_settings
from omnifer.distill.result import DistilledSet, save_grids
from omnifer.errors import DatasetError
from omnifer.labels import ordered_classes

log = logging.getLogger(__name__)

NIGHTLY_FLOW = "nightly-ingest"
SAMPLES_PER_CLASS = 12
HISTORY_NIGHTS = 7


# ------------------------------------------------------------------------------ locating runs
def find_run(catalog: DataCatalog, run_id: str | None = None,
             date: str | None = None) -> dict[str, Any]:
    """The run record to report on: by id (a unique prefix will do), else the latest nightly
    run of ``date``, else the latest nightly run."""
    if run_id:
        return runs.resolve_run(catalog, run_id)  # the one resolver every command uses
    records = runs.list_runs(catalog, limit=1_000_000)
    nightly = [r for r in records if r.get("flow") == NIGHTLY_FLOW]
    if date:
        nightly = [r for r in nightly if r.get("ingest_date") == date]
        if not nightly:
            raise DatasetError(f"no nightly run recorded for ingest date {date} "
                               "(see 'omnifer runs')")
    if not nightly:
        raise DatasetError("no nightly run recorded yet: run 'omnifer ingest' first")
    return nightly[0]  # list_runs sorts newest first


def report_uri(catalog: DataCatalog, run: dict[str, Any]) -> str:
    """Where a run's report lives beside the catalog."""
    return catalog.report_uri(run["ingest_date"], run["run_id"])


# ------------------------------------------------------------------------------ facts
@dataclass
class ReportFacts:
    """Everything the page shows, as plain data (what the tests compare with the catalog)."""

    run: dict[str, Any]
    ingest_date: str
    model_version: str | None
    curated_version: str | None
    classes: list[str]
    status: list[tuple[str, int, str | None]]  # status, images, example error
    faces: dict[str, Any]
    faces_per_image: list[tuple[str, int]]
    selected_history: dict[str, dict[str, int]]  # date -> class -> selected
    policy: dict[str, Any]
    policy_source: str
    thresholds: dict[str, float]
    scores: dict[str, tuple[np.ndarray, np.ndarray]]  # class -> (confidences, selected mask)
    similarity: tuple[np.ndarray, np.ndarray]
    samples: dict[str, list[tuple[str, float, bytes]]]  # class -> (face_id, conf, JPEG)
    distilled: dict[str, Any]
    models: list[dict[str, Any]]
    confusions: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    # listed vs rowed: the run's listing counts (plan stage) and the images rows its plan's
    # shards hold in the catalog (see _accounting)
    accounting: dict[str, Any] = field(default_factory=dict)
    # date -> {"duplicates_removed": n, "contaminated": n} (omnifer.curation.dedup), up to
    # this night and HISTORY_NIGHTS before it
    dedup: dict[str, dict[str, int]] = field(default_factory=dict)


def find_confusion(metrics: dict[str, Any]) -> tuple[list[list[int]], list[str] | None] | None:
    """The confusion matrix in a metrics dict (top level, or one level down), with classes."""
    for holder in [metrics, *[v for v in metrics.values() if isinstance(v, dict)]]:
        for key in ("confusion", "confusion_matrix"):
            cm = holder.get(key)
            if isinstance(cm, list) and cm and all(isinstance(r, list) for r in cm):
                classes = holder.get("classes")
                return cm, (list(classes) if isinstance(classes, list) else None)
    return None


def model_rows(con: Any) -> list[dict[str, Any]]:
    rows = con.execute("SELECT model_version, event, parent_version, metrics, classes, run_id, "
                       "train_datasets, created_at FROM models ORDER BY created_at").fetchall()
    versions: dict[str, dict[str, Any]] = {}
    for version, event, parent, metrics, classes, run_id, train, created in rows:
        entry = versions.setdefault(version, {"version": version, "parent": parent,
                                              "events": [], "classes": classes,
                                              "registered_at": created, "run_id": run_id,
                                              "train_datasets": train, "_reg": {}, "_other": {}})
        entry["events"].append(event)
        m = json.loads(metrics) if metrics else {}
        if event == "registered":
            entry.update(registered_at=created, run_id=run_id, parent=parent, classes=classes,
                         train_datasets=train, _reg=m)
        elif event == "trained_on_erased":  # a flag, not figures: which erasure, and how
            entry.setdefault("trained_on_erased", []).append(m)
        else:  # a verdict: its figures only fill what the registration did not record
            entry["_other"].update(m)
    for entry in versions.values():
        entry["metrics"] = {**entry.pop("_other"), **entry.pop("_reg")}
    promoted = [r for r in rows if r[1] == "promoted"]
    current = max(promoted, key=lambda r: (r[7], r[0]))[0] if promoted else None
    out = sorted(versions.values(), key=lambda e: (e["registered_at"], e["version"]))
    for entry in out:
        events = entry["events"]
        last = [e for e in events if e in ("promoted", "rolled_back")]
        entry["verdict"] = ("rolled back" if last and last[-1] == "rolled_back" else
                            "promoted" if "promoted" in events else
                            "rejected" if "rejected" in events else "registered")
        entry["current"] = entry["version"] == current
    return out


def collect(catalog: DataCatalog, run: dict[str, Any]) -> ReportFacts:
    """Query the catalog for everything one run's report shows."""
    con = catalog.connect()
    date = run["ingest_date"]
    summary = run.get("summary") or {}
    stages = run.get("stages") or {}
    notes: list[str] = []

    def q(sql: str, *params: Any) -> list[tuple]:
        return con.execute(sql, list(params)).fetchall()

    status = q("SELECT status, count(*) AS n, any_value(error) FROM images WHERE ingest_date = ?"
               " GROUP BY status ORDER BY n DESC, status", date)
    n_faces, n_images_with, det_med, size_med = q(
        "SELECT count(*), count(DISTINCT image_sha256), median(det_score), median(face_size) "
        "FROM faces WHERE ingest_date = ?", date)[0]
    per_image = q("SELECT CASE WHEN n_faces >= 3 THEN '3+' ELSE CAST(n_faces AS VARCHAR) END "
                  "AS k, count(*) FROM images WHERE ingest_date = ? AND status IN ('ok', "
                  "'no_face') GROUP BY k ORDER BY k", date)
    decoded = sum(n for k, n in per_image)

    model_version = summary.get("model_version")
    if not model_version:
        found = q("SELECT model_version, count(*) AS n FROM scores WHERE ingest_date = ? "
                  "GROUP BY 1 ORDER BY n DESC LIMIT 1", date)
        model_version = found[0][0] if found else None
    curated_version = (summary.get("curated_version")
                       or (stages.get("select") or {}).get("curated_version"))
    if not curated_version:
        found = q("SELECT arg_max(curated_version, created_at) FROM curated "
                  "WHERE ingest_date = ?", date)
        curated_version = found[0][0] if found else None

    # Selected per class tonight (this run's curated version) and on the nights before
    # (each night's latest curated version).
    history: dict[str, dict[str, int]] = {}
    for d, label, n in q(
        "WITH latest AS (SELECT ingest_date, arg_max(curated_version, created_at) AS v "
        "FROM curated WHERE ingest_date < ? GROUP BY ingest_date ORDER BY ingest_date DESC "
        "LIMIT ?) SELECT c.ingest_date, c.label, count(*) FROM curated c JOIN latest l "
        "ON c.ingest_date = l.ingest_date AND c.curated_version = l.v GROUP BY ALL",
        date, HISTORY_NIGHTS,
    ):
        history.setdefault(d, {})[label] = n
    history[date] = dict(q("SELECT label, count(*) FROM curated WHERE curated_version = ? "
                           "AND ingest_date = ? GROUP BY label", curated_version, date))

    # The selection policy this run applied (recorded with every curated row).
    raw = q("SELECT any_value(policy) FROM curated WHERE curated_version = ?", curated_version)
    if raw and raw[0][0]:
        policy = SelectionPolicy.model_validate_json(raw[0][0])
        policy_source = f"recorded with curated {curated_version}"
    else:
        policy = policy_from_settings(load_settings())
        policy_source = "current settings (no curated row recorded one for this run)"

    score_rows = q(
        "SELECT s.label, s.confidence, s.similarity, c.face_id IS NOT NULL FROM scores s "
        "LEFT JOIN (SELECT DISTINCT face_id FROM curated WHERE curated_version = ?) c "
        "USING (face_id) WHERE s.ingest_date = ? AND s.model_version = ? AND s.status = 'ok'",
        curated_version, date, model_version)
    models = model_rows(con)
    model_entry = next((m for m in models if m["version"] == model_version), None)
    labels = {r[0] for r in score_rows} | {lab for h in history.values() for lab in h}
    classes = ordered_classes(model_entry["classes"] if model_entry and model_entry["classes"]
                       else labels)
    classes += [c for c in ordered_classes(labels) if c not in classes]
    scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for c in classes:
        rows = [r for r in score_rows if r[0] == c]
        scores[c] = (np.array([r[1] for r in rows], np.float64), np.array([r[3] for r in rows],
                                                                         bool))
    similarity = (np.array([r[2] if r[2] is not None else np.nan for r in score_rows],
                           np.float64), np.array([r[3] for r in score_rows], bool))

    samples: dict[str, list[tuple[str, float, bytes]]] = {}
    for label, face_id, conf, crop in q(
        "SELECT c.label, c.face_id, c.confidence, f.crop FROM curated c JOIN faces f "
        "USING (face_id) WHERE c.curated_version = ? AND f.ingest_date = ? "
        "QUALIFY row_number() OVER (PARTITION BY c.label ORDER BY md5(c.face_id)) <= ? "
        "ORDER BY c.label, md5(c.face_id)", curated_version, date, SAMPLES_PER_CLASS,
    ):
        samples.setdefault(label, []).append((face_id, float(conf), bytes(crop)))

    confusions = []
    wanted = [model_version]
    trained = ((summary.get("retraining") or {}).get("retrain") or {}).get("model_version")
    if trained and trained != model_version:
        wanted.append(trained)
    for version in wanted:
        entry = next((m for m in models if m["version"] == version), None)
        found = find_confusion(entry["metrics"]) if entry else None
        if found:
            cm, cm_classes = found
            confusions.append({"version": version, "matrix": np.asarray(cm, np.int64),
                               "classes": cm_classes or list(entry["classes"] or [])})
        elif version:
            notes.append(f"no confusion matrix is recorded for model {version}")

    accounting = _accounting(catalog, q, run, date)
    if accounting.get("planned") is not None and accounting["rowed"] != accounting["planned"]:
        notes.append(f"{accounting['planned']} objects were planned but the catalog holds "
                     f"{accounting['rowed']} rows for them (failed shards? see the Run table)")
    return ReportFacts(
        run=run, ingest_date=date, model_version=model_version,
        curated_version=curated_version, classes=classes, status=status,
        faces={"faces": int(n_faces), "images_with_faces": int(n_images_with),
               "decoded_images": int(decoded),
               "det_score_median": None if det_med is None else float(det_med),
               "face_size_median": None if size_med is None else int(round(size_med))},
        faces_per_image=per_image, selected_history=dict(sorted(history.items())),
        policy=policy.model_dump(mode="json"), policy_source=policy_source,
        thresholds={c: float(policy.confidence_threshold(c)) for c in classes},
        scores=scores, similarity=similarity, samples=samples,
        distilled=_distilled(catalog, con, summary, curated_version),
        models=models, confusions=confusions, notes=notes, accounting=accounting,
        dedup=_dedup_history(catalog, date),
    )


def _accounting(catalog: DataCatalog, q: Any, run: dict[str, Any], date: str) -> dict[str, Any]:
    """Listed vs rowed for the run's plan: the listing counts the run recorded (``plan``
    stage) and, from the catalog, the images rows (and distinct objects) of the plan's shards.
    Empty for runs recorded before plans counted their listing."""
    from omnifer.catalog.plans import load_plans

    plan_stage = (run.get("stages") or {}).get("plan") or {}
    plan_id = plan_stage.get("plan_id") or (run.get("summary") or {}).get("plan_id")
    if not plan_id:
        return {}
    plan = next((p for p in load_plans(catalog, date) if p.plan_id == plan_id), None)
    shard_ids = [s.shard_id for s in plan.shards] if plan is not None else []
    rowed, distinct = q("SELECT count(*), count(DISTINCT source_uri) FROM images WHERE "
                        "ingest_date = ? AND list_contains(?::VARCHAR[], shard_id)", date,
                        shard_ids)[0]
    keys = ("listed", "planned", "unchanged", "ignored", "excluded", "skipped_entries",
            "ignored_by_reason", "skipped_by_reason")
    out = {k: plan_stage[k] for k in keys if k in plan_stage}
    if plan is not None:
        out.setdefault("planned", plan.n_objects)
    out.update(rowed=int(rowed), rowed_objects=int(distinct))
    return out


def _dedup_history(catalog: DataCatalog, date: str) -> dict[str, dict[str, int]]:
    """Duplicates removed and contaminated faces caught, this night and the ones before."""
    counts = night_counts(catalog)
    nights = [d for d in counts if d <= date][-(HISTORY_NIGHTS + 1):]
    return {d: counts[d] for d in nights}


def _distilled(catalog: DataCatalog, con: Any, summary: dict[str, Any],
               curated_version: str | None) -> dict[str, Any]:
    """The distilled set made from this night's curated version: per-class grids (PNG)."""
    rows = con.execute("SELECT distilled_version, any_value(curated_version), "
                       "any_value(method), count(*), max(created_at) AS t FROM distilled "
                       "GROUP BY distilled_version ORDER BY t DESC").fetchall()
    by_version = {r[0]: r for r in rows}
    version = (((summary.get("retraining") or {}).get("distill") or {})
               .get("distilled_version"))
    if version not in by_version:
        version = next((r[0] for r in rows if curated_version and curated_version in
                        (r[1] or "").split(",")), None)
    if version is None:
        return {"version": None, "latest": rows[0][0] if rows else None}
    _, curated, method, n, _ = by_version[version]
    grids: list[tuple[str, bytes]] = []
    grid_dir = catalog.distilled_grids_uri(version)
    for uri in storage.list_files(grid_dir, ".png"):
        grids.append((uri.rsplit("/", 1)[-1].removesuffix(".png"), storage.read_bytes(uri)))
    if not grids:  # grids not kept: draw them from the tensors
        table = catalog.read("distilled")
        table = table.filter(pc.equal(table["distilled_version"], version))
        result = DistilledSet.from_arrow(table)
        scale = max(1, 64 // max(1, int(result.images.shape[-1])))
        with tempfile.TemporaryDirectory(prefix="omnifer-report-") as tmp:
            for path in save_grids(result, tmp, scale=scale):
                grids.append((path.stem, path.read_bytes()))
    order = ordered_classes([g[0] for g in grids])
    grids.sort(key=lambda g: order.index(g[0]))
    return {"version": version, "curated": curated, "method": method, "images": int(n),
            "grids": grids}
