"""The nightly ingest stage as plain library functions: plan, process shards, summarise.

Why shards and plans: a night's new objects are listed once and cut into shards of many
images; the cut is written down (:mod:`omnifer.catalog.plans`) before any work starts, so a
rerun after a crash finds the same shards with the same ids, skips those whose commit marker
exists, and rewrites the others under the same file names. That is what makes "kill it and
run it again" give exactly the rows of one clean run.

A shard is processed in one call (read → sha256 → decode → detect → align → score) with the
detector and model kept warm per worker (:class:`omnifer.pipeline.workers.WorkerResources`).
Every object becomes an ``images`` row with a ``status`` and ``error``; nothing a single image
does ends the shard. Selection (the night's curated set) is
:func:`omnifer.curation.curated.select_curated`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from omnifer.catalog import erasures
from omnifer.catalog.catalog import DataCatalog
from omnifer.catalog.plans import (
    IngestParams,
    IngestPlan,
    ObjectRef,
    ShardResult,
    ShardSpec,
    digest,
    load_plans,
    shard_done,
    write_marker,
    write_plan_exclusive,
)
from omnifer.catalog.provenance import provenance
from omnifer.catalog.purge import purge_rows
from omnifer.catalog.schemas import FACES, IMAGES, SCORES
from omnifer.catalog.verify import missing_shard_data
from omnifer.curation.hashing import face_hash
from omnifer.errors import DecodeError, OmniferError, SourceError
from omnifer.faces.aligned import AlignedInput
from omnifer.faces.detectors import detect_and_align, face_id
from omnifer.imaging.decode import decode_image
from omnifer.params import check_date
from omnifer.pipeline.workers import (
    STATUS_DUPLICATE,
    AlreadySeen,
    SeenIndex,
    ShardSeen,
    SharedClaims,
    WorkerResources,
)
from omnifer.runtime import heap
from omnifer.sources.base import FetchError, Source, list_objects, read_object
from omnifer.sources.listing import ListingReport
from omnifer.sources.parse import source_from_dict

log = logging.getLogger(__name__)

STATUS_OK = "ok"
STATUS_NO_FACE = "no_face"
ALIGNED_INPUT = AlignedInput()  # stateless: shared by every thread

__all__ = [
    "STATUS_DUPLICATE", "STATUS_NO_FACE", "STATUS_OK", "IngestParams", "IngestPlan", "ObjectRef",
    "ShardResult", "ShardSpec", "load_plans", "needs_detector", "plan_ingest", "process_object",
    "process_shard", "score_faces", "shard_done", "summarize",
]


def needs_detector(sources: list[Source]) -> bool:
    """Whether any source is detected (an all-aligned plan never loads a detector)."""
    return any(s.faces != "aligned" for s in sources)


# -- planning --------------------------------------------------------------------------------
def _seen_versions(catalog: DataCatalog, uris: list[str]) -> set[tuple[str, str | None]]:
    """(URI, version) of the ``images`` rows of ``uris`` (filtered in Arrow: a catalog of a
    million images would be a million Python tuples, ~1 s a night)."""
    table = catalog.read("images", columns=["source_uri", "source_version"],
                         filter=ds.field("source_uri").isin(pa.array(uris, pa.string())))
    return set(zip(table["source_uri"].to_pylist(), table["source_version"].to_pylist(),
                   strict=True))


def plan_ingest(
    catalog: DataCatalog,
    sources: list[Any],
    ingest_date: str,
    params: IngestParams,
    shard_size: int = 256,
) -> IngestPlan:
    """The work of one night: resume an unfinished plan, else list what is new and cut it.

    Objects whose (URI, ETag/mtime) are already in ``images`` are skipped without reading them.
    A plan with no objects is returned but not written.

    Overlapping runs (two nightly runs started at once on one catalog) are made safe by
    *idempotent commits*, not by a lock: the plan number is fixed before listing (the count
    of plans seen at the start, plus one) and the plan file is created exclusively
    (:func:`omnifer.storage.files.create_exclusive`: ``os.link`` locally, ``If-None-Match: *`` on
    S3). The run that loses the race adopts the winner's plan instead of writing its own, so
    both process the same shards, and a shard's files have fixed names with the same rows:
    whichever run commits last, each object has one row. Why not a lease: a SIGKILLed holder
    leaves it behind, and taking over a stale lease needs clocks and compare-and-swap; why
    not a Prefect concurrency limit: the library (CLI, notebooks) must be safe without
    Prefect. The price of overlap is repeated work, never repeated rows.

    An object listed by two sources is planned once. ``plan.listing`` counts what listing
    met (:class:`omnifer.sources.listing.ListingReport`, plus ``unchanged`` and ``planned``).
    Raises ConfigError for a malformed ``ingest_date``.
    """
    check_date(ingest_date, "ingest date")
    plans = load_plans(catalog, ingest_date)
    for plan in reversed(plans):
        if any(shard_done(catalog, s) is None for s in plan.shards):
            log.info("resuming plan %s (%d shards)", plan.plan_id, len(plan.shards))
            return plan
        break
    number = len(plans) + 1
    report = ListingReport()
    found = [(i, obj) for i, spec in enumerate(sources) for obj in list_objects(spec, report)]
    listed = len(found)
    seen = _seen_versions(catalog, sorted({obj.uri for _, obj in found}))
    objects: list[ObjectRef] = []
    for index, obj in found:
        if (obj.uri, obj.version) in seen:
            continue
        seen.add((obj.uri, obj.version))  # one object listed by two sources: one row
        objects.append(ObjectRef(source=index, uri=obj.uri, size=obj.size,
                                 version=obj.version))
    fp = params.fingerprint()
    shards = []
    for start in range(0, len(objects), shard_size):
        chunk = objects[start : start + shard_size]
        shard_id = digest([fp, [o.model_dump() for o in chunk]])[:20]
        shards.append(ShardSpec(shard_id=shard_id, ingest_date=ingest_date, objects=chunk))
    plan = IngestPlan(
        plan_id=f"{ingest_date}-{number:03d}",
        ingest_date=ingest_date,
        sources=[s.model_dump(mode="json") for s in sources],
        params=params,
        shards=shards,
        listing={**report.as_dict(), "unchanged": listed - len(objects),
                 "planned": len(objects)},
    )
    log.info("listed %d objects, %d new, %d shards (ignored %d junk, excluded %d, skipped %d "
             "odd entries)", listed, len(objects), len(shards), plan.listing["ignored"],
             plan.listing["excluded"], plan.listing["skipped_entries"])
    if shards:
        mine = plan
        plan = write_plan_exclusive(catalog, plan, number)
        if plan is not mine:
            # Another run created this plan while we were listing: do its plan, not ours.
            log.info("plan %s was created by an overlapping run; adopting it", plan.plan_id)
    return plan


# -- processing one shard ----------------------------------------------------------------------
def process_shard(
    catalog: DataCatalog, plan: IngestPlan, shard: ShardSpec, run_id: str,
    shared_claims: bool = False,
) -> ShardResult:
    """Decode, detect, align and score one shard, then commit it (images last, marker after).

    Already committed → returns the committed result without doing anything (its
    ``missing_data`` names the datasets that lost its rows since: see
    :func:`omnifer.catalog.verify.missing_shard_data`). ``shared_claims``: other shards of
    the plan run in other processes (Dask workers), so content is claimed in the catalog
    (:class:`omnifer.pipeline.workers.SharedClaims`), not only in memory.
    """
    done = shard_done(catalog, shard)
    if done is not None:
        missing = missing_shard_data(catalog, shard.ingest_date, shard.shard_id, done.images,
                                     done.faces)
        if missing:
            log.warning("shard %s of %s: its marker says done but its %s rows are gone; not "
                        "rebuilt (run `omnifer catalog verify --repair`, then rerun)",
                        shard.shard_id, shard.ingest_date, "/".join(missing))
        return done.model_copy(update={"skipped": True, "missing_data": missing})
    started = time.monotonic()
    params = plan.params
    sources = [source_from_dict(s) for s in plan.sources]
    detector = WorkerResources.detector(params) if needs_detector(sources) else None
    seen = ShardSeen(SeenIndex.for_plan(catalog, plan), shard.shard_id,
                     SharedClaims(catalog, plan, shard.shard_id) if shared_claims else None)
    stamp = provenance(run_id, shard.shard_id)
    erased = erasures.erased_content(catalog)

    image_rows: list[dict[str, Any]] = []
    face_rows: list[dict[str, Any]] = []
    crops: list[np.ndarray] = []
    for obj in shard.objects:
        row, faces, obj_crops = process_object(obj, sources[obj.source], params, detector,
                                               seen, stamp, erased)
        image_rows.append(row)
        face_rows.extend(faces)
        crops.extend(obj_crops)
    if seen.shared is not None and (lost := seen.shared.lost()):
        # Another shard claimed these bytes first: the rows a duplicate gets, as if the
        # claim had been lost in memory (the object is read again; duplicates are rare).
        for i, (obj, row) in enumerate(zip(shard.objects, image_rows, strict=True)):
            if row.get("sha256") in lost and row["status"] != STATUS_DUPLICATE:
                image_rows[i] = process_object(obj, sources[obj.source], params, detector,
                                               AlreadySeen(), stamp, erased)[0]
        keep = [i for i, f in enumerate(face_rows) if f["image_sha256"] not in lost]
        face_rows = [face_rows[i] for i in keep]
        crops = [crops[i] for i in keep]

    score_rows = score_faces(params, face_rows, crops, stamp)
    date = shard.ingest_date
    name = f"part-{shard.shard_id}.parquet"
    catalog.write("faces", name, pa.Table.from_pylist(face_rows, schema=FACES), ingest_date=date)
    catalog.write("scores", name, pa.Table.from_pylist(score_rows, schema=SCORES),
                  ingest_date=date)
    catalog.write("images", name, pa.Table.from_pylist(image_rows, schema=IMAGES),
                  ingest_date=date)
    result = ShardResult(
        shard_id=shard.shard_id,
        images=len(image_rows),
        by_status=dict(Counter(r["status"] for r in image_rows)),
        faces=len(face_rows),
        seconds=round(time.monotonic() - started, 3),
    )
    write_marker(catalog, date, result)
    if erasures.new_request_ids(catalog, erased.request_ids):
        # An erasure was requested while this shard ran: it may not have seen our files.
        purge_rows(catalog, erasures.erased_content(catalog), run_id, nights=[date])
    del image_rows, face_rows, crops, score_rows
    heap.trim()  # a night of shards must not creep up in RSS (see omnifer.runtime.heap)
    return result


def process_object(
    obj: ObjectRef, source: Source, params: IngestParams, detector: Any,
    seen: set[str] | ShardSeen | AlreadySeen, stamp: dict[str, Any],
    erased: erasures.ErasedContent | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[np.ndarray]]:
    """One source object → its ``images`` row, its face rows and their crops (unscored).

    Shared by :func:`process_shard` and :mod:`omnifer.pipeline.retry` so that a retried image
    gets exactly the rows a clean run would have given it. ``seen`` holds content already
    ingested (a new sha256 is added to it; ``process_shard`` passes a :class:`ShardSeen`, whose
    membership test claims the content); ``stamp`` holds the provenance columns every row
    carries (:func:`omnifer.catalog.provenance.provenance`). A source of pre-aligned crops
    (``faces="aligned"``) is not detected: the whole image is its one face
    (:class:`omnifer.faces.aligned.AlignedInput`), and ``detector`` may be None.

    ``erased``: what erasure requests forbid (:mod:`omnifer.catalog.erasures`). An object under
    an erased source prefix is not read; erased content, whatever its URI, is recognised by
    its sha256 after reading and before decoding. Both get the status ``erased`` and keep
    neither hash nor pixels; an erased face found in other content is left out.
    """
    aligned = source.faces == "aligned"
    if aligned:
        detector = ALIGNED_INPUT
    det = {"detector": detector.name, "detector_version": detector.version}
    row: dict[str, Any] = {"source_uri": obj.uri, "source_version": obj.version,
                           "n_faces": 0, **det, **stamp}
    face_rows: list[dict[str, Any]] = []
    crops: list[np.ndarray] = []
    if erased and erased.uri_erased(obj.uri):
        row.update(status=erasures.STATUS_ERASED, error="source erased on request")
        return row, face_rows, crops
    try:
        data = read_object(source, obj, params.max_bytes)
    except FetchError as exc:
        if exc.transient:  # the store is down, not the object: fail the shard, rerun reads it
            raise SourceError(f"source unavailable after retries, shard not committed: {exc}"
                              ) from None
        row.update(status=exc.status, error=str(exc))
        return row, face_rows, crops
    sha = hashlib.sha256(data).hexdigest()
    if erased and sha in erased.sha256s:
        row.update(status=erasures.STATUS_ERASED,
                   error=f"content erased on request {erased.by_sha.get(sha, '')}".strip())
        return row, face_rows, crops
    row.update(sha256=sha, bytes=len(data))
    if sha in seen:
        row.update(status=STATUS_DUPLICATE, error="content already ingested")
        return row, face_rows, crops
    seen.add(sha)
    try:
        decoded = decode_image(data, max_pixels=params.max_pixels)
    except DecodeError as exc:
        row.update(status=exc.status, error=str(exc))
        return row, face_rows, crops
    row.update(width=decoded.width, height=decoded.height, format=decoded.format)
    try:
        faces = (detector.faces(decoded.image) if aligned else
                 detect_and_align(decoded.image, detector, min_face_size=params.min_face_size,
                                  min_score=params.min_det_score))
    except Exception as exc:  # a detector failure is one image's problem, not the night's
        log.warning("detection failed on %s: %s", obj.uri, exc)
        row.update(status="detect_failed", error=f"{type(exc).__name__}: {exc}")
        return row, face_rows, crops
    if erased and erased.face_ids:
        faces = [f for f in faces if face_id(sha, np.asarray(f.detection.bbox, np.float32))
                 not in erased.face_ids]
    row.update(n_faces=len(faces), status=STATUS_OK if faces else STATUS_NO_FACE)
    for face in faces:
        bbox = np.asarray(face.detection.bbox, dtype=np.float32)
        ok, jpeg = cv2.imencode(".jpg", face.crop,
                                [cv2.IMWRITE_JPEG_QUALITY, params.crop_jpeg_quality])
        face_rows.append({
            "face_id": face_id(sha, bbox),
            "image_sha256": sha,
            "source_uri": obj.uri,
            "face_index": face.face_index,
            "bbox": bbox.tolist(),
            "landmarks5": np.asarray(face.detection.landmarks5, np.float32).ravel().tolist(),
            "det_score": float(face.detection.score),
            "face_size": float(min(bbox[2] - bbox[0], bbox[3] - bbox[1])),
            "crop": jpeg.tobytes(),
            "face_hash": face_hash(face.crop),  # for deduplication (omnifer.curation.dedup)
            **det,
            **stamp,
        })
        crops.append(face.crop)
    return row, face_rows, crops


def score_faces(
    params: IngestParams, face_rows: list[dict[str, Any]], crops: list[np.ndarray],
    stamp: dict[str, Any],
) -> list[dict[str, Any]]:
    """Score rows for ``face_rows`` (their ``crops`` in the same order); a scorer failure
    becomes ``score_failed`` rows, a missing model raises."""
    if not crops:
        return []
    base = [{"face_id": f["face_id"], "model_version": params.model_version,
             "det_score": f["det_score"], "face_size": f["face_size"], **stamp}
            for f in face_rows]
    try:
        scorer = WorkerResources.scorer(params)
        batch = scorer.score(np.stack(crops))
    except OmniferError:
        raise  # a missing/corrupt model is the run's problem: fail loudly, not per face
    except Exception as exc:
        log.warning("scoring failed for a shard: %s", exc)
        return [{**b, "status": "score_failed", "error": f"{type(exc).__name__}: {exc}"}
                for b in base]
    classes = scorer.classes
    rows = []
    for i, b in enumerate(base):
        label_index = int(batch.label[i])
        rows.append({
            **b,
            "label": classes[label_index],
            "label_index": label_index,
            "probs": batch.probs[i].astype(np.float32).tolist(),
            "confidence": float(batch.confidence[i]),
            "margin": float(batch.margin[i]),
            "entropy": float(batch.entropy[i]),
            "flip_agreement": bool(batch.flip_agreement[i]) if batch.flip_tta else None,
            # null when the model gives no embedding (an ONNX model without one)
            "similarity": (None if np.isnan(batch.similarity[i])
                           else float(batch.similarity[i])),
            "embedding": (batch.embedding[i].astype(np.float32).tolist()
                          if batch.embedding.shape[1] else None),
            "status": STATUS_OK,
            "error": None,
        })
    return rows


# -- summary -------------------------------------------------------------------------------------
def summarize(catalog: DataCatalog, ingest_date: str) -> dict[str, Any]:
    """What the night produced, read back from the committed Parquet files."""
    check_date(ingest_date, "ingest date")
    con = catalog.connect()
    date = ingest_date.replace("'", "''")

    def rows(sql: str) -> list[tuple]:
        return con.execute(sql).fetchall()

    by_status = dict(rows(f"SELECT status, count(*) FROM images WHERE ingest_date = '{date}' "
                          "GROUP BY status ORDER BY status"))
    faces = rows(f"SELECT count(*) FROM faces WHERE ingest_date = '{date}'")[0][0]
    scored = rows(f"SELECT count(*) FROM scores WHERE ingest_date = '{date}'")[0][0]
    per_class = dict(rows(f"SELECT label, count(*) FROM curated WHERE ingest_date = '{date}' "
                          "GROUP BY label ORDER BY label"))
    return {
        "ingest_date": ingest_date,
        "images": sum(by_status.values()),
        "images_by_status": by_status,
        "faces": faces,
        "scored": scored,
        "selected": sum(per_class.values()),
        "selected_per_class": per_class,
    }
