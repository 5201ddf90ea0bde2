"""Curated sets: selection into the catalog, which versions count, how much is new, their crops.

:func:`select_curated` is the select stage: the night's scores through the selection policy
(:mod:`omnifer.curation.selection`) into the ``curated`` dataset, as a version named by the
night, the policy and the model.

A night can hold several curated versions (a policy or model changed and selection ran
again); what the current primitive model mined is, per night, its latest version. Distillation
and retraining both start from that set, and "how much is new" (curated rows that no distilled
version covers yet) is what the nightly flow compares with ``retrain.min_new_curated``.

Crops live in ``faces``, labels in ``curated``: :func:`export_crops` joins them with DuckDB
straight into a local Parquet file (streamed, so a curated set larger than memory works), which
:class:`omnifer.distill.samplers.ParquetClassSampler` then samples from.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pydantic import BaseModel

from omnifer.catalog import erasures
from omnifer.catalog.catalog import DataCatalog
from omnifer.catalog.plans import digest
from omnifer.catalog.provenance import provenance
from omnifer.catalog.purge import purge_rows
from omnifer.catalog.schemas import CURATED
from omnifer.curation.selection import SelectionPolicy, adapt_policy, select_samples
from omnifer.errors import DatasetError, DecodeError
from omnifer.imaging.decode import decode_image
from omnifer.imaging.transforms import resize_image
from omnifer.labeled.base import LabeledData
from omnifer.labels import CLASSES
from omnifer.params import check_date, check_name

log = logging.getLogger(__name__)


def _versions_sql(versions: Sequence[str]) -> str:
    if not versions:
        raise DatasetError("no curated versions given")
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in versions) + "]"


def current_versions(catalog: DataCatalog, model_version: str | None = None,
                     con: duckdb.DuckDBPyConnection | None = None) -> list[str]:
    """Per night, the latest curated version (of ``model_version`` when given), oldest first."""
    con = con or catalog.connect()
    where = ""
    params: list[str] = []
    if model_version is not None:
        where, params = "WHERE model_version = ?", [model_version]
    rows = con.execute(
        "SELECT ingest_date, arg_max(curated_version, created_at) FROM curated "
        f"{where} GROUP BY ingest_date ORDER BY ingest_date", params
    ).fetchall()
    return [r[1] for r in rows]


def count_rows(catalog: DataCatalog, versions: Sequence[str],
               con: duckdb.DuckDBPyConnection | None = None) -> int:
    if not versions:
        return 0
    con = con or catalog.connect()
    return int(con.execute(
        "SELECT count(DISTINCT face_id) FROM curated "
        f"WHERE list_contains({_versions_sql(versions)}, curated_version)"
    ).fetchone()[0])


def distilled_from(catalog: DataCatalog,
                   con: duckdb.DuckDBPyConnection | None = None) -> set[str]:
    """Curated versions that some distilled version was made from."""
    con = con or catalog.connect()
    rows = con.execute(
        "SELECT DISTINCT unnest(string_split(curated_version, ',')) FROM distilled "
        "WHERE curated_version IS NOT NULL"
    ).fetchall()
    return {r[0] for r in rows if r[0]}


def undistilled_rows(catalog: DataCatalog, model_version: str | None = None) -> int:
    """Curated rows of the current versions that no distilled version covers yet."""
    con = catalog.connect()  # one snapshot of the file lists for the three queries
    covered = distilled_from(catalog, con)
    return count_rows(catalog, [v for v in current_versions(catalog, model_version, con)
                                if v not in covered], con)


def export_crops(catalog: DataCatalog, versions: Sequence[str], dest: Path | str) -> int:
    """Write ``label, crop, face_id, copies`` of the curated ``versions`` to a Parquet file.

    One row per face (the latest curated row wins when versions overlap; a face written twice
    by two shards of one night counts once). Returns the number of rows.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    con = catalog.connect()
    query = f"""
        WITH c AS (
            SELECT face_id, label, copies FROM curated
            WHERE list_contains({_versions_sql(versions)}, curated_version)
            QUALIFY row_number() OVER (PARTITION BY face_id ORDER BY created_at DESC) = 1),
        f AS (
            SELECT face_id, crop FROM faces
            WHERE face_id IN (SELECT face_id FROM c)
            QUALIFY row_number() OVER (PARTITION BY face_id ORDER BY created_at) = 1)
        SELECT c.label, f.crop, c.face_id, c.copies FROM c JOIN f USING (face_id)
        ORDER BY c.label, c.face_id
    """
    tmp = dest.with_suffix(".tmp")
    path = str(tmp).replace("'", "''")
    con.execute(f"COPY ({query}) TO '{path}' (FORMAT parquet, ROW_GROUP_SIZE 512)")
    tmp.replace(dest)
    n = pq.ParquetFile(dest).metadata.num_rows
    if n == 0:
        raise DatasetError(f"curated versions {list(versions)} have no faces with crops")
    return n


def to_labeled(
    catalog: DataCatalog, versions: Sequence[str], size: int, work_dir: Path | str,
    classes: Sequence[str] = CLASSES, honour_copies: bool = True,
) -> LabeledData:
    """The curated ``versions`` as in-memory training data (crops resized to ``size``).

    ``copies`` (the policy's class-balancing duplicates) repeat a row when ``honour_copies``.
    Meant for retraining on the full curated set, which is what distillation makes unnecessary;
    memory is N × size² × 3 bytes.
    """
    path = Path(work_dir) / "curated-crops.parquet"
    export_crops(catalog, versions, path)
    table = pq.read_table(path)
    lookup = {c: i for i, c in enumerate(classes)}
    images, targets, names = [], [], []
    for label, crop, face, copies in zip(*(table[c].to_pylist() for c in
                                           ("label", "crop", "face_id", "copies")), strict=True):
        if label not in lookup:
            continue
        try:
            img = resize_image(decode_image(crop).image, size)  # the project's one decoder
        except DecodeError as exc:
            log.warning("curated face %s has an unreadable crop (%s): skipped", face, exc)
            continue
        for _ in range(max(1, int(copies or 1)) if honour_copies else 1):
            images.append(img)
            targets.append(lookup[label])
            names.append(face)
    if not images:
        raise DatasetError(f"curated versions {list(versions)} hold no usable faces")
    return LabeledData(np.stack(images), np.asarray(targets, np.int64), tuple(classes), names,
                       source=f"curated:{','.join(versions)}")


# -- the select stage ----------------------------------------------------------------------------
class DedupApplied(BaseModel):
    """What selection takes from the night's dedup: which version, thresholds, and the faces
    it leaves out (:func:`omnifer.curation.dedup.excluded_faces`)."""

    dedup_version: str
    thresholds: dict[str, Any]
    excluded: set[str] = set()

    def to_json(self) -> str:
        return json.dumps({"dedup_version": self.dedup_version, **self.thresholds},
                          sort_keys=True, separators=(",", ":"))


class CuratedResult(BaseModel):
    """What selecting a night did: the curated version, candidates and rows kept per class."""

    curated_version: str
    candidates: int
    selected: int
    per_class: dict[str, int]


def curated_version_for(ingest_date: str, policy_json: str, model_version: str,
                        dedup_version: str | None = None) -> str:
    """``<date>.<digest of policy, model (and dedup version)>``: the same inputs, one name."""
    parts = [policy_json, model_version] + ([dedup_version] if dedup_version else [])
    return f"{ingest_date}.{digest(parts)[:8]}"


def select_curated(
    catalog: DataCatalog, ingest_date: str, policy: SelectionPolicy, model_version: str,
    run_id: str, dedup: DedupApplied | None = None,
) -> CuratedResult:
    """Apply the selection policy to the night's scores and commit the curated set.

    ``dedup``: the night's dedup (:mod:`omnifer.curation.dedup`): its excluded faces
    (duplicates that are not kept, contaminated faces) are never candidates, and its version
    and thresholds are part of the curated version and recorded in the ``dedup`` column.

    Runs over the whole night (class balance and top-K are per night), after every shard is
    committed. The file name comes from the curated version, so a rerun replaces, not adds.
    Faces that an erasure request names are never selected, also when the request comes
    while selection runs (it is applied again after the commit). A model without embeddings
    gets the policy without its similarity gate
    (:func:`omnifer.curation.selection.adapt_policy`). Raises ConfigError for a malformed
    ``ingest_date`` or ``model_version``.
    """
    check_date(ingest_date, "ingest date")
    check_name(model_version, "model version")
    erased = erasures.erased_content(catalog)
    flt = (ds.field("ingest_date") == ingest_date) & (ds.field("model_version") == model_version)
    flt = flt & (ds.field("status") == "ok")
    scores = catalog.read("scores", columns=["face_id", "label", "confidence", "similarity",
                                             "flip_agreement", "det_score", "face_size", "margin"],
                          filter=flt)
    scores = erased.keep(scores)
    if dedup is not None and dedup.excluded and scores.num_rows:
        gone = pa.array(sorted(dedup.excluded), pa.string())
        scores = scores.filter(pc.invert(pc.is_in(scores["face_id"], value_set=gone)))
    # A face can only be curated once per night even if identical bytes came twice.
    if scores.num_rows:
        _, first = np.unique(np.asarray(scores["face_id"].to_pylist(), dtype=object),
                             return_index=True)
        scores = scores.take(pa.array(np.sort(first)))
    policy = adapt_policy(policy, scores)  # e.g. no similarity gate for a model without one
    policy_json = policy.to_json()
    version = curated_version_for(ingest_date, policy_json, model_version,
                                  dedup.dedup_version if dedup is not None else None)
    selected = select_samples(scores, policy)
    n = selected.num_rows
    copies = selected["copies"] if "copies" in selected.column_names else pa.array([1] * n)
    table = pa.table({
        "face_id": selected["face_id"],
        "curated_version": pa.array([version] * n),
        "label": selected["label"],
        "confidence": selected["confidence"],
        "similarity": selected["similarity"],
        "copies": pc.cast(copies, pa.int16()),
        "policy": pa.array([policy_json] * n),
        "model_version": pa.array([model_version] * n),
        "dedup": pa.array([dedup.to_json() if dedup is not None else None] * n, pa.string()),
        **{k: pa.array([v] * n, CURATED.field(k).type) for k, v in provenance(run_id).items()},
    })
    catalog.write("curated", f"part-{version}.parquet", table, ingest_date=ingest_date)
    if erasures.new_request_ids(catalog, erased.request_ids):
        purge_rows(catalog, erasures.erased_content(catalog), run_id, nights=[ingest_date])
        table = catalog.read("curated", filter=ds.field("curated_version") == version)
        n = table.num_rows
    per_class = dict(sorted(Counter(table["label"].to_pylist()).items()))
    return CuratedResult(curated_version=version, candidates=scores.num_rows, selected=n,
                         per_class=per_class)
