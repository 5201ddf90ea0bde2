"""The dedup stage of a night: near-duplicate clusters, and faces of evaluation sets.

Per night D and model version M (the model whose embeddings are compared and whose scores are
selected), :func:`deduplicate_night`

1. finds candidate pairs among all faces up to D with at least one face of D: face hashes
   within ``max_hamming`` bits, through multi-index hashing (:class:`BandIndex`: no N² work);
2. keeps the pairs whose embeddings (``scores.embedding`` of M; scored from the crop where M has
   not scored a face yet) have cosine >= ``min_cosine`` and whose registered crops differ by at
   most ``max_pixel_difference`` (:func:`omnifer.curation.hashing.pixel_difference`);
3. joins them into clusters. A cluster that holds a face of an earlier night keeps that
   night's choice: the faces of D join it and are dropped, so curated versions of earlier
   nights stay right and a copy is never curated twice. Otherwise the cluster keeps its best
   face (highest detector score, then largest, then smallest ``face_id``);
4. compares every face of D with the evaluation items (:mod:`omnifer.curation.evalsets`;
   all pairs, the sets are small) under the ``eval_*`` thresholds: a match is
   ``contaminated`` and names the item it matched;
5. writes the night's rows to ``duplicates`` (``part-<dedup_version>.parquet``: a rerun
   replaces them); the version digests the thresholds, the model and the evaluation index.

Selection (:func:`omnifer.curation.curated.select_curated`) then leaves out every face of the
night that is not its cluster's kept face, and every contaminated face.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from pydantic import BaseModel

from omnifer.catalog.catalog import DataCatalog
from omnifer.catalog.plans import digest
from omnifer.catalog.provenance import provenance
from omnifer.catalog.schemas import DUPLICATES
from omnifer.config import Settings
from omnifer.config_sections import DedupSettings
from omnifer.curation import evalsets
from omnifer.curation.curated import DedupApplied
from omnifer.curation.embeddings import decode_crops, embeddings_for, read_crops
from omnifer.curation.hashing import (
    BandIndex,
    column_words,
    face_hash,
    hamming_matrix,
    pixel_differences,
    to_words,
    union_find,
)

log = logging.getLogger(__name__)

KIND_DUPLICATE = "duplicate"
KIND_CONTAMINATED = "contaminated"


class DedupResult(BaseModel):
    """What deduplicating a night found (counts are faces of that night)."""

    ingest_date: str
    dedup_version: str
    model_version: str
    faces: int
    candidates: int = 0
    clusters: int = 0
    duplicates: int = 0  # faces dropped: another face of their cluster is kept
    contaminated: int = 0
    eval_items: int = 0
    thresholds: dict[str, Any] = {}
    seconds: float = 0.0

    @property
    def removed(self) -> int:
        return self.duplicates


def thresholds_json(cfg: DedupSettings, eval_digest: str | None) -> str:
    """Canonical JSON of what decides a duplicate (recorded with each curated version)."""
    values = cfg.model_dump(mode="json", exclude={"enabled"})
    values["hash"] = "whash-haar-256"
    values["eval_index"] = eval_digest
    return json.dumps(values, sort_keys=True, separators=(",", ":"))


def dedup_version_for(ingest_date: str, cfg: DedupSettings, model_version: str,
                      eval_digest: str | None) -> str:
    """``<date>.<digest of thresholds, model and evaluation index>``."""
    return f"{ingest_date}.{digest([thresholds_json(cfg, eval_digest), model_version])[:8]}"


def _faces_upto(catalog: DataCatalog, ingest_date: str) -> pa.Table:
    cols = ["face_id", "face_hash", "det_score", "face_size", "ingest_date"]
    table = catalog.read("faces", columns=cols, filter=ds.field("ingest_date") <= ingest_date)
    table = table.sort_by([("ingest_date", "ascending"), ("face_id", "ascending")])
    # A face written twice (two shards, same bytes) counts once. That is rare: Arrow's
    # hashing finds none in ~0.25 s per million ids, where sorting them as Python strings
    # took ~0.8 s.
    if table.num_rows and len(pc.unique(table["face_id"])) < table.num_rows:
        _, first = np.unique(np.asarray(table["face_id"].to_pylist(), object),
                             return_index=True)
        table = table.take(pa.array(np.sort(first)))
    return table


def _hashes(catalog: DataCatalog, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Hash words of every face; faces ingested before hashes existed are hashed from crops."""
    words, valid = column_words(table["face_hash"])
    missing = np.flatnonzero(~valid).tolist()
    if missing:
        ids = [table["face_id"][i].as_py() for i in missing]
        crops = read_crops(catalog, ids)
        images, ok = decode_crops([crops.get(f) for f in ids])
        found = [face_hash(images[k]) if ok[k] else None for k in range(len(missing))]
        words[missing], valid[missing] = to_words(found)
        log.info("dedup: hashed %d faces stored without a face hash", int(ok.sum()))
    return words, valid


def _old_clusters(catalog: DataCatalog, ingest_date: str) -> dict[str, tuple[str, bool]]:
    """face_id → (cluster_id, keep) from earlier nights' latest dedup rows."""
    flt = (ds.field("ingest_date") < ingest_date) & (ds.field("kind") == KIND_DUPLICATE)
    t = catalog.read("duplicates", columns=["face_id", "cluster_id", "keep", "ingest_date",
                                            "dedup_version", "created_at"], filter=flt)
    if not t.num_rows:
        return {}
    latest: dict[str, tuple[Any, str]] = {}
    for night, version, created in zip(*(t[c].to_pylist() for c in
                                         ("ingest_date", "dedup_version", "created_at")),
                                       strict=True):
        if night not in latest or created > latest[night][0]:
            latest[night] = (created, version)
    out: dict[str, tuple[str, bool]] = {}
    rows = sorted(zip(*(t[c].to_pylist() for c in ("ingest_date", "face_id", "cluster_id",
                                                   "keep", "dedup_version")), strict=True))
    for night, fid, cluster, keep, version in rows:
        if version == latest[night][1]:
            out.setdefault(fid, (cluster, bool(keep)))
    return out


def _verify(catalog: DataCatalog, ids: list[str], dates: list[str],
            pairs: list[tuple[int, int]], model_version: str, min_cosine: float,
            max_diff: float, crops_b: np.ndarray | None = None,
            emb_b: np.ndarray | None = None) -> list[tuple[int, int, float, float]]:
    """Pairs (a, b) that pass the embedding and pixel checks, with (cosine, difference).

    ``a`` indexes ``ids``; ``b`` indexes ``ids`` too, or ``crops_b``/``emb_b`` when given
    (evaluation items)."""
    if not pairs:
        return []
    need = sorted({a for a, _ in pairs} | ({b for _, b in pairs} if crops_b is None else set()))
    # Only the nights that hold these faces are read (partition pruning).
    crops = read_crops(catalog, [ids[k] for k in need], sorted({dates[k] for k in need}))
    use_embeddings = min_cosine > -1.0  # -1: the gate is off (see DedupSettings)
    emb = (embeddings_for(catalog, [ids[k] for k in need], model_version, crops)
           if use_embeddings else {})
    images, ok = decode_crops([crops.get(ids[k]) for k in need])
    pos = {k: n for n, k in enumerate(need)}
    todo: list[tuple[int, int, float]] = []
    for a, b in pairs:
        cos = float("nan")
        if use_embeddings:
            ea = emb.get(ids[a])
            eb = emb_b[b] if emb_b is not None else emb.get(ids[b])
            if ea is None or eb is None or len(ea) != len(eb):
                continue
            cos = float(np.dot(ea, eb))
            if cos < min_cosine:
                continue
        if not ok[pos[a]] or (crops_b is None and not ok[pos[b]]):
            continue
        todo.append((a, b, cos))
    diffs = pixel_differences([(images[pos[a]], crops_b[b] if crops_b is not None
                                else images[pos[b]]) for a, b, _ in todo])
    return [(a, b, cos, diff) for (a, b, cos), diff in zip(todo, diffs, strict=True)
            if diff <= max_diff]


def deduplicate_night(catalog: DataCatalog, ingest_date: str, model_version: str,
                      settings: Settings, run_id: str) -> DedupResult:
    """Find the night's duplicates and contaminated faces and commit them; see the module
    docstring. Raises :class:`~omnifer.errors.DatasetError` when an evaluation set named in
    the settings cannot be read."""
    started = time.monotonic()
    cfg = settings.dedup
    specs = evalsets.eval_sets(settings) if cfg.decontaminate else []
    index = evalsets.load_eval_index(catalog, specs, model_version) if specs else None
    if cfg.decontaminate and not specs:
        log.info("dedup %s: no evaluation set (set retrain.labeled.path or dedup.eval_sets): "
                 "decontamination skipped", ingest_date)
    eval_digest = index.digest if index is not None else None
    version = dedup_version_for(ingest_date, cfg, model_version, eval_digest)
    faces = _faces_upto(catalog, ingest_date)
    ids = faces["face_id"].to_pylist()
    tonight = np.asarray(pc.equal(faces["ingest_date"], ingest_date).to_numpy(
        zero_copy_only=False), bool)
    result = DedupResult(ingest_date=ingest_date, dedup_version=version,
                         model_version=model_version, faces=int(tonight.sum()),
                         eval_items=len(index) if index is not None else 0,
                         thresholds=json.loads(thresholds_json(cfg, eval_digest)))
    rows: list[dict[str, Any]] = []
    if tonight.any():
        words, valid = _hashes(catalog, faces)
        rows += _duplicates(catalog, faces, ids, words, valid, tonight, model_version, cfg,
                            result)
        if index is not None and len(index):
            rows += _contaminated(catalog, faces, ids, words, valid, tonight, index,
                                  model_version, cfg, result)
    stamp = provenance(run_id)
    for r in rows:
        r.update(model_version=model_version, dedup_version=version, **stamp)
    catalog.write("duplicates", f"part-{version}.parquet",
                  pa.Table.from_pylist(rows, schema=DUPLICATES), ingest_date=ingest_date)
    result.seconds = round(time.monotonic() - started, 3)
    log.info("dedup %s: %d faces, %d candidate pairs, %d clusters, %d duplicates dropped, "
             "%d contaminated (%.1fs)", ingest_date, result.faces, result.candidates,
             result.clusters, result.duplicates, result.contaminated, result.seconds)
    return result


def _duplicates(catalog: DataCatalog, faces: pa.Table, ids: list[str], words: np.ndarray,
                valid: np.ndarray, tonight: np.ndarray, model_version: str,
                cfg: DedupSettings, result: DedupResult) -> list[dict[str, Any]]:
    index = BandIndex(words, cfg.bands, cfg.window)
    i, j, d = index.pairs(cfg.max_hamming, involving=tonight, valid=valid,
                          neighbours=cfg.neighbours)
    result.candidates = len(i)
    distance = {(int(a), int(b)): int(x) for a, b, x in zip(i, j, d, strict=True)}
    edges = _verify(catalog, ids, faces["ingest_date"].to_pylist(), list(distance),
                    model_version, cfg.min_cosine, cfg.max_pixel_difference)
    if not edges:
        return []
    members = sorted({a for a, _, _, _ in edges} | {b for _, b, _, _ in edges})
    local = {k: n for n, k in enumerate(members)}
    roots = union_find(len(members), [(local[a], local[b]) for a, b, _, _ in edges])
    best: dict[int, tuple[int, float, float]] = {}  # member → (neighbour, cosine, difference)
    for a, b, cos, diff in edges:
        for x, y in ((a, b), (b, a)):
            if x not in best or diff < best[x][2]:
                best[x] = (y, cos, diff)
    old = _old_clusters(catalog, result.ingest_date)
    det = faces["det_score"].to_pylist()
    size = faces["face_size"].to_pylist()
    dates = faces["ingest_date"].to_pylist()
    groups: dict[int, list[int]] = defaultdict(list)
    for k in members:
        groups[int(roots[local[k]])].append(k)
    rows = []
    for group in groups.values():
        earlier = [k for k in group if not tonight[k]]
        if earlier:  # an earlier night chose already: its cluster, its kept face
            first = min(earlier, key=lambda k: (dates[k], ids[k]))
            cluster, keeper = old.get(ids[first], (ids[first], True))[0], None
        else:
            keeper = min(group, key=lambda k: (-(det[k] or 0.0), -(size[k] or 0.0), ids[k]))
            cluster = ids[keeper]
        result.clusters += 1
        for k in sorted(group, key=lambda k: ids[k]):
            keep = (k == keeper) if not earlier else (
                old.get(ids[k], (cluster, True))[1] if not tonight[k] else False)
            nb, cos, diff = best[k]
            pair = (min(k, nb), max(k, nb))
            rows.append({"face_id": ids[k], "cluster_id": cluster, "kind": KIND_DUPLICATE,
                         "rule": "exact" if distance[pair] == 0 else "near",
                         "matched_id": ids[nb], "distance": distance[pair], "cosine": cos,
                         "pixel_difference": diff, "keep": bool(keep),
                         "face_date": dates[k]})
            if tonight[k] and not keep:
                result.duplicates += 1
    return rows


def _contaminated(catalog: DataCatalog, faces: pa.Table, ids: list[str], words: np.ndarray,
                  valid: np.ndarray, tonight: np.ndarray, index: evalsets.EvalIndex,
                  model_version: str, cfg: DedupSettings,
                  result: DedupResult) -> list[dict[str, Any]]:
    mine = np.flatnonzero(tonight & valid)
    dist = hamming_matrix(words[mine], index.words)
    qi, ei = np.nonzero(dist <= cfg.eval_max_hamming)
    # Each face's nearest items only (the pixel check costs milliseconds a pair).
    order = np.lexsort((ei, dist[qi, ei], qi))
    qi, ei = qi[order], ei[order]
    start = np.r_[0, np.flatnonzero(qi[1:] != qi[:-1]) + 1] if len(qi) else np.zeros(0, int)
    rank = np.arange(len(qi)) - np.repeat(start, np.diff(np.r_[start, len(qi)]))
    qi, ei = qi[rank < cfg.eval_neighbours], ei[rank < cfg.eval_neighbours]
    pairs = [(int(mine[q]), int(e)) for q, e in zip(qi, ei, strict=True)]
    matches = _verify(catalog, ids, faces["ingest_date"].to_pylist(), pairs, model_version,
                      cfg.eval_min_cosine,
                      cfg.eval_max_pixel_difference, crops_b=index.crops,
                      emb_b=index.embeddings)
    best: dict[int, tuple[int, float, float]] = {}
    for a, e, cos, diff in matches:
        if a not in best or diff < best[a][2]:
            best[a] = (e, cos, diff)
    dates = faces["ingest_date"].to_pylist()
    rows = []
    for a, (e, cos, diff) in sorted(best.items(), key=lambda kv: ids[kv[0]]):
        item = index.items[e]
        rows.append({"face_id": ids[a], "cluster_id": item, "kind": KIND_CONTAMINATED,
                     "rule": item.split(":", 1)[0], "matched_id": item,
                     "distance": int(dist[np.searchsorted(mine, a), e]), "cosine": cos,
                     "pixel_difference": diff, "keep": False, "face_date": dates[a]})
    result.contaminated = len(rows)
    return rows


def excluded_faces(catalog: DataCatalog, ingest_date: str, dedup_version: str) -> set[str]:
    """Faces of the night that selection must leave out under ``dedup_version``: duplicates
    that are not their cluster's kept face, and contaminated faces."""
    flt = ((ds.field("ingest_date") == ingest_date)
           & (ds.field("dedup_version") == dedup_version)
           & (ds.field("keep") == False)  # noqa: E712 (a dataset expression, not a bool)
           & (ds.field("face_date") == ingest_date))
    return set(catalog.read("duplicates", columns=["face_id"], filter=flt)["face_id"]
               .to_pylist())


def night_counts(catalog: DataCatalog) -> dict[str, dict[str, int]]:
    """Per night: duplicates removed and contaminated faces caught by the dedup version of the
    night's latest curated version (nights whose selection ran without dedup are absent)."""
    con = catalog.connect()
    rows = con.execute("""
        WITH latest AS (
            SELECT ingest_date, arg_max(curated_version, created_at) AS v FROM curated
            GROUP BY ingest_date),
        applied AS (
            SELECT c.ingest_date,
                   any_value(json_extract_string(c.dedup, '$.dedup_version')) AS dv
            FROM curated c JOIN latest l
              ON c.ingest_date = l.ingest_date AND c.curated_version = l.v
            WHERE c.dedup IS NOT NULL GROUP BY c.ingest_date)
        SELECT a.ingest_date,
               count(x.face_id) FILTER (WHERE x.kind = 'duplicate' AND NOT x.keep),
               count(x.face_id) FILTER (WHERE x.kind = 'contaminated')
        FROM applied a LEFT JOIN duplicates x
          ON x.ingest_date = a.ingest_date AND x.dedup_version = a.dv
         AND x.face_date = a.ingest_date
        GROUP BY a.ingest_date ORDER BY a.ingest_date""").fetchall()
    return {d: {"duplicates_removed": int(r), "contaminated": int(c)} for d, r, c in rows}


def run_dedup(catalog: DataCatalog, ingest_date: str, model_version: str, settings: Settings,
              run_id: str) -> tuple[DedupResult | None, DedupApplied | None]:
    """Deduplicate the night (when ``dedup.enabled``) and say what selection must apply."""
    if not settings.dedup.enabled:
        return None, None
    found = deduplicate_night(catalog, ingest_date, model_version, settings, run_id)
    applied = DedupApplied(dedup_version=found.dedup_version, thresholds=found.thresholds,
                           excluded=excluded_faces(catalog, ingest_date, found.dedup_version))
    return found, applied
