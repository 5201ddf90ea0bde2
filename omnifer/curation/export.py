"""Take a curated set (or faces, or a distilled set) out of the catalog as images for any trainer.

:func:`export_images` writes one image file per row and a manifest, in one of two layouts:

* ``folder``: ``OUT/<label>/<face_id>.jpg`` (an ImageFolder: torchvision's, Keras', or
  ``omnifer train --format folder``);
* ``rafdb``: RAF-DB basic's layout, ``OUT/Image/aligned/<split>_<face_id>_aligned.jpg`` plus
  ``OUT/EmoLabel/list_patition_label.txt`` (``<split>_<face_id>.jpg <code>``, codes 1–7 as in
  :data:`omnifer.labels.RAFDB_TO_CANONICAL`): what ``omnifer train --format rafdb`` and RAF-DB
  training scripts read. Labels without a RAF-DB code are left out and counted.

Both layouts get ``OUT/manifest.csv``: ``path, label, confidence, face_id, source_uri, copies,
version, ingest_date`` (one row per file; ``copies`` is the selection's class-balancing repeat
count, ``version`` the curated/model/distilled version the row comes from).

What is exported:

* ``curated``: the current curated versions (per night the latest), or ``curated_versions``;
  one row per face (the latest curated row wins); crops from ``faces`` as stored (JPEG bytes,
  not re-encoded);
* ``faces``: every face with its latest ``ok`` score's label and confidence (faces never
  scored are left out and counted);
* ``distilled``: one distilled version (default: the latest, or the latest made from
  ``curated_versions``), its tensors turned back into 8-bit images (PNG in ``folder``, JPEG
  quality 95 in ``rafdb``).

``dates`` keeps rows of those nights; ``where`` is a SQL condition over the manifest's
columns (``confidence > 0.9 AND label <> 'neutral'``). Local and S3 catalogs alike (DuckDB
over the catalog's views); rows stream, so a set larger than memory works.

Idempotent and exact: a file whose bytes are already there is not written again, the
manifest and label list are replaced only when they change, and files that the previous
export's manifest listed but this one does not are removed (so a narrower rerun does not leave
stale images in an ImageFolder). Nothing else under ``OUT`` is touched.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import cv2
import duckdb
import numpy as np
import torch
from pydantic import BaseModel, Field

from omnifer.catalog.catalog import DataCatalog
from omnifer.curation.curated import current_versions
from omnifer.errors import ConfigError, DatasetError
from omnifer.imaging.tensors import denormalize
from omnifer.labels import CANONICAL_TO_RAFDB
from omnifer.runtime.progress import Meter

log = logging.getLogger(__name__)

Kind = Literal["curated", "faces", "distilled"]
Layout = Literal["folder", "rafdb"]
KINDS: tuple[str, ...] = ("curated", "faces", "distilled")
LAYOUTS: tuple[str, ...] = ("folder", "rafdb")
MANIFEST = "manifest.csv"
RAFDB_LABELS = "EmoLabel/list_patition_label.txt"
COLUMNS = ("path", "label", "confidence", "face_id", "source_uri", "copies", "version",
           "ingest_date")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class ExportResult(BaseModel):
    """What an export did: rows listed, files written / already there / removed, left out."""

    kind: str
    layout: str
    out: str
    rows: int
    written: int
    unchanged: int
    removed: int
    skipped: dict[str, int] = Field(default_factory=dict)
    versions: list[str] = Field(default_factory=list)
    manifest: str


def _sql_list(values: Sequence[str]) -> str:
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def _date_filter(dates: Sequence[str] | None, column: str = "ingest_date") -> str:
    return f" AND list_contains({_sql_list(dates)}, {column})" if dates else ""


def _curated_query(con: duckdb.DuckDBPyConnection, catalog: DataCatalog,
                   dates: Sequence[str] | None,
                   versions: Sequence[str] | None) -> tuple[str, list[str]]:
    if not versions:
        versions = current_versions(catalog, con=con)
        if dates:
            rows = con.execute("SELECT DISTINCT curated_version FROM curated WHERE "
                               f"list_contains({_sql_list(dates)}, ingest_date)").fetchall()
            versions = [v for v in versions if v in {r[0] for r in rows}]
    if not versions:
        raise DatasetError("nothing to export: no curated rows (for these nights) yet")
    return f"""
        WITH c AS (
            SELECT face_id, label, confidence, copies, curated_version, ingest_date FROM curated
            WHERE list_contains({_sql_list(versions)}, curated_version){_date_filter(dates)}
            QUALIFY row_number() OVER (PARTITION BY face_id ORDER BY created_at DESC) = 1),
        f AS (
            SELECT face_id, source_uri, crop FROM faces
            WHERE face_id IN (SELECT face_id FROM c)
            QUALIFY row_number() OVER (PARTITION BY face_id ORDER BY created_at) = 1)
        SELECT c.label, c.confidence, c.face_id, f.source_uri, CAST(c.copies AS INTEGER) AS
               copies, c.curated_version AS version, c.ingest_date, f.crop AS image
        FROM c JOIN f USING (face_id)""", list(versions)


def _faces_query(dates: Sequence[str] | None) -> str:
    return f"""
        WITH f AS (
            SELECT face_id, source_uri, crop, ingest_date FROM faces WHERE true{_date_filter(dates)}
            QUALIFY row_number() OVER (PARTITION BY face_id ORDER BY created_at) = 1),
        s AS (
            SELECT face_id, label, confidence, model_version FROM scores WHERE status = 'ok'
            QUALIFY row_number() OVER (PARTITION BY face_id ORDER BY created_at DESC) = 1)
        SELECT s.label, s.confidence, f.face_id, f.source_uri, 1 AS copies,
               s.model_version AS version, f.ingest_date, f.crop AS image
        FROM f LEFT JOIN s USING (face_id)"""


def _distilled_query(con: duckdb.DuckDBPyConnection,
                     versions: Sequence[str] | None) -> tuple[str, list[str]]:
    made_from = ""
    if versions:
        made_from = (f"WHERE len(list_intersect(string_split(curated_version, ','), "
                     f"{_sql_list(versions)})) > 0")
    (row,) = con.execute("SELECT arg_max(distilled_version, created_at) FROM distilled "
                         f"{made_from}").fetchall()
    if not row or row[0] is None:
        raise DatasetError("nothing to export: no distilled version"
                           + (f" made from {list(versions)}" if versions else "") + " yet")
    version = row[0].replace("'", "''")
    return f"""
        SELECT class AS label, CAST(NULL AS FLOAT) AS confidence,
               distilled_version || '-' || class || '-' || lpad(CAST(index AS VARCHAR), 4, '0')
                   AS face_id,
               'distilled:' || distilled_version AS source_uri, 1 AS copies,
               distilled_version AS version, CAST(NULL AS VARCHAR) AS ingest_date,
               image, shape, dtype
        FROM distilled WHERE distilled_version = '{version}'""", [row[0]]


def _distilled_bytes(row: dict[str, Any], ext: str) -> bytes:
    """A distilled tensor (normalised RGB, C×H×W) as an encoded 8-bit BGR image."""
    arr = np.frombuffer(row["image"], dtype=np.dtype(row["dtype"])).reshape(row["shape"])
    rgb = denormalize(torch.from_numpy(arr.copy())[None])[0].permute(1, 2, 0).numpy()
    bgr = np.ascontiguousarray((rgb[..., ::-1] * 255).round().astype(np.uint8))
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext == ".jpg" else []
    ok, buf = cv2.imencode(ext, bgr, params)
    if not ok:
        raise DatasetError(f"cannot encode distilled image {row['face_id']}")
    return buf.tobytes()


def _write_if_changed(path: Path, data: bytes) -> bool:
    """Write ``data`` atomically unless ``path`` already holds exactly it; True if written."""
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return True


def _previous_paths(out: Path) -> set[str]:
    manifest = out / MANIFEST
    if not manifest.is_file():
        return set()
    with manifest.open(newline="") as fh:
        return {row["path"] for row in csv.DictReader(fh) if row.get("path")}


def _rows(con: duckdb.DuckDBPyConnection, query: str, batch: int = 256
          ) -> Iterator[dict[str, Any]]:
    relation = con.sql(query)  # a relation streams; a DB-API result would copy every row
    # DuckDB 2 renamed the relation's record_batch to to_arrow_reader
    method = getattr(relation, "to_arrow_reader", None) or relation.record_batch
    reader = method(batch)
    for record_batch in reader:
        yield from record_batch.to_pylist()


def export_images(
    catalog: DataCatalog,
    kind: Kind,
    out: Path | str,
    layout: Layout = "folder",
    dates: Sequence[str] | None = None,
    curated_versions: Sequence[str] | None = None,
    where: str | None = None,
    split: Literal["train", "test"] = "train",
) -> ExportResult:
    """Export ``kind`` rows of ``catalog`` as image files + manifest under ``out`` (local).

    See the module docstring for layouts, columns and what "idempotent" means here. Raises
    :class:`~omnifer.errors.ConfigError` for an unknown kind/layout/split or a filter that
    does not apply, :class:`~omnifer.errors.DatasetError` when there is nothing to export or
    ``where`` is not valid SQL over the manifest's columns.
    """
    if kind not in KINDS:
        raise ConfigError(f"export kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if layout not in LAYOUTS:
        raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    if split not in ("train", "test"):
        raise ConfigError(f"RAF-DB split must be train or test, not {split!r}")
    if kind == "faces" and curated_versions:
        raise ConfigError("--curated-version applies to curated and distilled exports")
    if kind == "distilled" and dates:
        raise ConfigError("--date applies to curated and faces exports (use "
                          "--curated-version to pick a distilled set by what it was made of)")
    out = Path(out)
    con = catalog.connect()
    versions: list[str] = []
    if kind == "curated":
        base, versions = _curated_query(con, catalog, dates, curated_versions)
    elif kind == "faces":
        base = _faces_query(dates)
    else:
        base, versions = _distilled_query(con, curated_versions)
    query = f"SELECT * FROM ({base}) WHERE ({where or 'true'}) ORDER BY label, face_id"
    try:
        total = con.execute(f"SELECT count(*) FROM ({query})").fetchall()[0][0]
    except duckdb.Error as exc:
        raise DatasetError(f"export query failed (check --where): "
                           f"{str(exc).splitlines()[0]}") from None
    ext = ".png" if kind == "distilled" and layout == "folder" else ".jpg"
    previous = _previous_paths(out)
    listed: set[str] = set()
    skipped: dict[str, int] = {}
    written = unchanged = 0
    manifest, labels = io.StringIO(), io.StringIO()
    writer = csv.writer(manifest, lineterminator="\n")
    writer.writerow(COLUMNS)
    with Meter(f"export {kind} → {out}", total, "img") as meter:
        for row in _rows(con, query):
            meter.advance()
            label = row["label"]
            if label is None:
                skipped["unscored"] = skipped.get("unscored", 0) + 1
                continue
            name = _UNSAFE.sub("_", str(row["face_id"]))
            if layout == "rafdb":
                code = CANONICAL_TO_RAFDB.get(label)
                if code is None:
                    skipped["no_rafdb_label"] = skipped.get("no_rafdb_label", 0) + 1
                    continue
                rel = f"Image/aligned/{split}_{name}_aligned{ext}"
                labels.write(f"{split}_{name}{ext} {code}\n")
            else:
                rel = f"{_UNSAFE.sub('_', str(label))}/{name}{ext}"
            data = _distilled_bytes(row, ext) if kind == "distilled" else row["image"]
            if _write_if_changed(out / rel, data):
                written += 1
            else:
                unchanged += 1
            listed.add(rel)
            conf = row["confidence"]
            writer.writerow([rel, label, "" if conf is None else f"{conf:.6f}", row["face_id"],
                             row["source_uri"], row["copies"], row["version"] or "",
                             row["ingest_date"] or ""])
    if not listed:
        why = f" ({', '.join(f'{k}: {v}' for k, v in skipped.items())})" if skipped else ""
        raise DatasetError(f"nothing to export: {total} rows matched, none can be written in "
                           f"the {layout} layout{why}")
    if layout == "rafdb":
        _write_if_changed(out / RAFDB_LABELS, labels.getvalue().encode())
    _write_if_changed(out / MANIFEST, manifest.getvalue().encode())
    removed = 0
    for rel in sorted(previous - listed):  # only what an earlier export wrote
        path = out / rel
        if path.is_file() and out.resolve() in path.resolve().parents:
            path.unlink()
            removed += 1
    if skipped:
        log.warning("export left out %s", skipped)
    return ExportResult(kind=kind, layout=layout, out=str(out), rows=len(listed),
                        written=written, unchanged=unchanged, removed=removed, skipped=skipped,
                        versions=versions, manifest=str(out / MANIFEST))
