"""The nightly ingest stage as plain library functions: plan, process shards, select.

Why shards and plans: a night's new objects are listed once and cut into shards of many
images; the cut is written down (``_plans/ingest_date=D/plan-NNN.json``) before any work starts,
so a rerun after a crash finds the same shards with the same ids, skips those whose marker
(``_shards/ingest_date=D/<id>.json``) exists, and rewrites the others under the same file names.
That is what makes "kill it and run it again" give exactly the rows of one clean run.

A shard is processed in one call (read → sha256 → decode → detect → align → score) with the
detector and model kept warm per worker (:class:`WorkerResources`). Every object becomes an
``images`` row with a ``status`` and ``error``; nothing a single image does ends the shard.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import threading
import time
from collections import Counter
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from pydantic import BaseModel, Field

from omnifer import heap, storage
from omnifer.catalog import DataCatalog
from omnifer.errors import DecodeError, OmniferError, SourceError
from omnifer.params import check_date, check_name
from omnifer.schemas import FACES, IMAGES, SCORES
from omnifer.version import code_version

log = logging.getLogger(__name__)

STATUS_OK = "ok"
STATUS_NO_FACE = "no_face"
STATUS_DUPLICATE = "duplicate"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class IngestParams(BaseModel):
    """Everything that changes a shard's output; its fingerprint is part of the shard id."""

    detector: str = "yunet"
    min_det_score: float = 0.6
    min_face_size: int = 32
    max_side: int = 1280
    # Detection scale (omnifer.faces.FaceFinder): "auto" | "full", refinement size, frame pass
    detect_scale: str = "auto"
    refine_px: int | None = None
    whole_frame: bool = True
    max_pixels: int = 40_000_000
    max_bytes: int = 50_000_000
    crop_jpeg_quality: int = 95
    score_batch_size: int = 128
    model_version: str
    model_uri: str

    def fingerprint(self) -> str:
        return _digest(self.model_dump())[:16]


class ObjectRef(BaseModel):
    source: int  # index into IngestPlan.sources
    uri: str
    size: int | None = None
    version: str | None = None


class ShardSpec(BaseModel):
    shard_id: str
    ingest_date: str
    objects: list[ObjectRef]


class IngestPlan(BaseModel):
    plan_id: str
    ingest_date: str
    sources: list[dict[str, Any]]
    params: IngestParams
    shards: list[ShardSpec]
    created_at: dt.datetime = Field(default_factory=_now)
    # What listing saw (omnifer.sources.ListingReport.as_dict() + unchanged/planned): every
    # listed object is planned (-> one images row) or unchanged (its row is from a past night).
    listing: dict[str, Any] = Field(default_factory=dict)

    @property
    def n_objects(self) -> int:
        return sum(len(s.objects) for s in self.shards)


class ShardResult(BaseModel):
    shard_id: str
    skipped: bool = False
    # Skipped because its marker says done, although these datasets hold none of its rows
    # (the data was deleted): `omnifer catalog verify --repair` lets a rerun rebuild it.
    missing_data: list[str] = Field(default_factory=list)
    images: int = 0
    by_status: dict[str, int] = Field(default_factory=dict)
    faces: int = 0
    seconds: float = 0.0


# -- locations -------------------------------------------------------------------------------
def _plan_dir(catalog: DataCatalog, date: str) -> str:
    return catalog.aux_uri("_plans", f"ingest_date={date}")


def _marker_uri(catalog: DataCatalog, date: str, shard_id: str) -> str:
    return catalog.aux_uri("_shards", f"ingest_date={date}", f"{shard_id}.json")


def shard_done(catalog: DataCatalog, shard: ShardSpec) -> ShardResult | None:
    """The committed result of ``shard``, or None when it still has to run."""
    uri = _marker_uri(catalog, shard.ingest_date, shard.shard_id)
    if not storage.exists(uri):
        return None
    return ShardResult.model_validate_json(storage.read_bytes(uri))


def load_plans(catalog: DataCatalog, date: str) -> list[IngestPlan]:
    files = storage.list_files(_plan_dir(catalog, date), ".json")
    return [IngestPlan.model_validate_json(storage.read_bytes(f)) for f in files]


# -- planning --------------------------------------------------------------------------------
def _seen_versions(catalog: DataCatalog) -> set[tuple[str, str | None]]:
    table = catalog.read("images", columns=["source_uri", "source_version"])
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
    (:func:`omnifer.storage.create_exclusive`: ``os.link`` locally, ``If-None-Match: *`` on
    S3). The run that loses the race adopts the winner's plan instead of writing its own, so
    both process the same shards, and a shard's files have fixed names with the same rows:
    whichever run commits last, each object has one row. Why not a lease: a SIGKILLed holder
    leaves it behind, and taking over a stale lease needs clocks and compare-and-swap; why
    not a Prefect concurrency limit: the library (CLI, notebooks) must be safe without
    Prefect. The price of overlap is repeated work, never repeated rows.
    """
    from omnifer.sources import ListingReport, list_objects

    check_date(ingest_date, "ingest date")
    plans = load_plans(catalog, ingest_date)
    for plan in reversed(plans):
        if any(shard_done(catalog, s) is None for s in plan.shards):
            log.info("resuming plan %s (%d shards)", plan.plan_id, len(plan.shards))
            return plan
        break
    number = len(plans) + 1
    seen = _seen_versions(catalog)
    objects: list[ObjectRef] = []
    listed = 0
    report = ListingReport()
    for index, spec in enumerate(sources):
        for obj in list_objects(spec, report):
            listed += 1
            if (obj.uri, obj.version) in seen:
                continue
            seen.add((obj.uri, obj.version))  # one object listed by two sources: one row
            objects.append(ObjectRef(source=index, uri=obj.uri, size=obj.size,
                                     version=obj.version))
    fp = params.fingerprint()
    shards = []
    for start in range(0, len(objects), shard_size):
        chunk = objects[start : start + shard_size]
        shard_id = _digest([fp, [o.model_dump() for o in chunk]])[:20]
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
        uri = _plan_dir(catalog, ingest_date) + f"/plan-{number:03d}.json"
        if not storage.create_exclusive(uri, plan.model_dump_json(indent=1).encode()):
            # Another run created this plan while we were listing: do its plan, not ours.
            plan = IngestPlan.model_validate_json(storage.read_bytes(uri))
            log.info("plan %s was created by an overlapping run; adopting it", plan.plan_id)
    return plan


# -- warm per-worker resources -----------------------------------------------------------------
class WorkerResources:
    """Detectors (one per thread: OpenCV's are not thread-safe) and scorers (one per process).

    Loaded on first use and kept for the life of the worker, so a shard never pays for
    loading a model.
    """

    _local = threading.local()
    _scorers: dict[str, Any] = {}
    _lock = threading.Lock()

    @classmethod
    def detector(cls, params: IngestParams) -> Any:
        from omnifer.faces import create_detector

        key = (params.detector, params.min_det_score, params.max_side, params.detect_scale,
               params.min_face_size, params.refine_px, params.whole_frame)
        cache = getattr(cls._local, "detectors", None)
        if cache is None:
            cache = cls._local.detectors = {}
        if key not in cache:
            cache[key] = create_detector(
                params.detector, score_threshold=params.min_det_score, max_side=params.max_side,
                scale=params.detect_scale, min_face_size=params.min_face_size,
                refine_px=params.refine_px, whole_frame=params.whole_frame,
            )
            log.info("loaded detector %s in process %d", params.detector, os.getpid())
        return cache[key]

    @classmethod
    def scorer(cls, params: IngestParams) -> Any:
        from omnifer.model import load_checkpoint
        from omnifer.registry import local_checkpoint
        from omnifer.scoring import Scorer

        # The URI is part of the key: two catalogs (or a re-registered version) may use the
        # same version name for different weights.
        key = f"{params.model_uri}:{params.model_version}:{params.score_batch_size}"
        with cls._lock:
            if key not in cls._scorers:
                path = local_checkpoint(params.model_uri, params.model_version)
                cls._scorers[key] = Scorer(
                    load_checkpoint(path), batch_size=params.score_batch_size
                )
                log.info("loaded model %s in process %d", params.model_version, os.getpid())
            return cls._scorers[key]


# -- processing one shard ----------------------------------------------------------------------
class _SeenIndex:
    """Which shard owns each content hash: read from ``images`` once per plan per process.

    Why: reading the whole ``sha256`` column at the start of every shard cost O(catalog) per
    shard, and the catalog grows every night; and shards of one plan running side by side did
    not see each other's content until it was committed. Here the column is read once, when
    the plan's first shard starts in this process, and the shards of the plan then *claim*
    new content in memory: the first shard to read some bytes keeps them, the others mark
    them ``duplicate``. As before, a rerun of a shard does not see its own committed rows;
    ``duplicate`` rows own nothing (so a shard that died after claiming content gets it back
    on its rerun). Shards of one plan in *other* processes only see each other's commits from
    before the index was read.
    """

    _MANY = "\0many"  # content committed by two or more shards: seen by every shard
    _lock = threading.Lock()
    _indexes: dict[tuple[str, ...], _SeenIndex] = {}

    def __init__(self, catalog: DataCatalog) -> None:
        table = catalog.read("images", columns=["sha256", "shard_id"],
                             filter=ds.field("sha256").is_valid()
                             & (ds.field("status") != STATUS_DUPLICATE))
        owners: dict[str, str] = {}
        for sha, shard in zip(table["sha256"].to_pylist(), table["shard_id"].to_pylist(),
                              strict=True):
            prev = owners.setdefault(sha, shard or self._MANY)
            if prev != shard:
                owners[sha] = self._MANY
        self._owners = owners
        self._claim_lock = threading.Lock()

    @classmethod
    def for_plan(cls, catalog: DataCatalog, plan: IngestPlan) -> _SeenIndex:
        # created_at too: a catalog wiped and re-made in one process reuses plan ids
        key = (catalog.uri("images"), plan.plan_id, plan.created_at.isoformat())
        with cls._lock:
            index = cls._indexes.get(key)
            if index is None:
                while len(cls._indexes) >= 2:  # a long-lived worker keeps only recent plans
                    cls._indexes.pop(next(iter(cls._indexes)))
                index = cls._indexes[key] = cls(catalog)
            return index

    def claim(self, sha: str, shard_id: str) -> bool:
        """True when another shard owns ``sha``; else ``shard_id`` owns it from now on."""
        with self._claim_lock:
            return self._owners.setdefault(sha, shard_id) != shard_id

    def owner(self, sha: str) -> str | None:
        """The shard that owns ``sha`` here (None: nobody yet), without claiming it."""
        with self._claim_lock:
            return self._owners.get(sha)


class _SharedClaims:
    """Content claims that hold across processes: one object per new content hash.

    Why: :class:`_SeenIndex` claims content in memory, which is enough while all shards of a
    plan run in one process (the thread runner). On Dask they run in worker processes that
    share nothing, and the same bytes in two shards on two workers would both be ``ok`` (two
    rows per face). So there a shard claims each new hash in the catalog,
    ``_claims/ingest_date=D/<plan_id>/<sha256>`` created exclusively
    (:func:`omnifer.storage.create_exclusive`) with the shard id as its body: the first
    creator owns the content for good, a rerun of that shard finds its own claim and owns it
    again, every other shard marks its copy ``duplicate``. Claims go out on a small thread
    pool while the shard decodes and detects (S3 latency hidden); :meth:`lost` collects them
    before scoring. Cost: one small object per new image of the night.
    """

    _pool: Any = None
    _pool_lock = threading.Lock()

    def __init__(self, catalog: DataCatalog, plan: IngestPlan, shard_id: str) -> None:
        self._folder = catalog.aux_uri("_claims", f"ingest_date={plan.ingest_date}",
                                       plan.plan_id)
        self._shard_id = shard_id
        self._pending: dict[str, Any] = {}
        with self._pool_lock:
            if _SharedClaims._pool is None:
                import concurrent.futures as cf

                _SharedClaims._pool = cf.ThreadPoolExecutor(8, thread_name_prefix="claims")

    def _claim(self, sha: str) -> bool:
        uri = f"{self._folder}/{sha}"
        body = self._shard_id.encode()
        return storage.create_exclusive(uri, body) or storage.read_bytes(uri) == body

    def start(self, sha: str) -> None:
        """Claim ``sha`` for this shard in the background."""
        self._pending[sha] = self._pool.submit(self._claim, sha)

    def lost(self) -> set[str]:
        """The hashes another shard claimed first (waits for every claim; StorageError when
        the catalog cannot take them: the shard then fails and its rerun claims again)."""
        return {sha for sha, fut in self._pending.items() if not fut.result()}


class _ShardSeen:
    """The ``seen`` set one shard hands to :func:`process_object`: ``sha in seen`` claims.

    With ``shared`` claims (shards of the plan in other processes), content not committed yet
    is claimed in the catalog instead of in memory; :func:`process_shard` then gives up
    what it lost (:meth:`_SharedClaims.lost`).
    """

    def __init__(self, index: _SeenIndex, shard_id: str,
                 shared: _SharedClaims | None = None) -> None:
        self._index, self._shard_id = index, shard_id
        self._mine: set[str] = set()  # the same bytes twice in one shard: the 2nd is a dup
        self.shared = shared

    def __contains__(self, sha: object) -> bool:
        if sha in self._mine:
            return True
        self._mine.add(str(sha))
        if self.shared is None:
            return self._index.claim(str(sha), self._shard_id)
        owner = self._index.owner(str(sha))  # committed before this process read the index
        if owner is not None and owner != self._shard_id:
            return True
        self.shared.start(str(sha))
        return False

    def add(self, sha: str) -> None:
        """Nothing to do: the membership test has claimed ``sha`` already."""


def process_shard(
    catalog: DataCatalog, plan: IngestPlan, shard: ShardSpec, run_id: str,
    shared_claims: bool = False,
) -> ShardResult:
    """Decode, detect, align and score one shard, then commit it (images last, marker after).

    Already committed → returns the committed result without doing anything.
    ``shared_claims``: other shards of the plan run in other processes (Dask workers), so
    content is claimed in the catalog (:class:`_SharedClaims`), not only in memory.
    """
    from omnifer.sources import source_from_dict

    done = shard_done(catalog, shard)
    if done is not None:
        from omnifer.verify import missing_shard_data

        missing = missing_shard_data(catalog, shard.ingest_date, shard.shard_id, done.images,
                                     done.faces)
        if missing:
            log.warning("shard %s of %s: its marker says done but its %s rows are gone; not "
                        "rebuilt (run `omnifer catalog verify --repair`, then rerun)",
                        shard.shard_id, shard.ingest_date, "/".join(missing))
        return done.model_copy(update={"skipped": True, "missing_data": missing})
    started = time.monotonic()
    params = plan.params
    detector = WorkerResources.detector(params)
    sources = [source_from_dict(s) for s in plan.sources]
    seen = _ShardSeen(_SeenIndex.for_plan(catalog, plan), shard.shard_id,
                      _SharedClaims(catalog, plan, shard.shard_id) if shared_claims else None)
    stamp = {"run_id": run_id, "shard_id": shard.shard_id, "code_version": code_version(),
             "created_at": _now()}

    image_rows: list[dict[str, Any]] = []
    face_rows: list[dict[str, Any]] = []
    crops: list[np.ndarray] = []
    for obj in shard.objects:
        row, faces, obj_crops = process_object(obj, sources[obj.source], params, detector,
                                               seen, stamp)
        image_rows.append(row)
        face_rows.extend(faces)
        crops.extend(obj_crops)
    if seen.shared is not None and (lost := seen.shared.lost()):
        # Another shard claimed these bytes first: the rows a duplicate gets, as if the
        # claim had been lost in memory (the object is read again; duplicates are rare).
        class _Taken:
            def __contains__(self, sha: object) -> bool:
                return True

            def add(self, sha: str) -> None:
                pass

        for i, (obj, row) in enumerate(zip(shard.objects, image_rows, strict=True)):
            if row.get("sha256") in lost and row["status"] != STATUS_DUPLICATE:
                image_rows[i] = process_object(obj, sources[obj.source], params, detector,
                                               _Taken(), stamp)[0]
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
    storage.write_bytes_atomic(_marker_uri(catalog, date, shard.shard_id),
                               result.model_dump_json().encode())
    del image_rows, face_rows, crops, score_rows
    heap.trim()  # a night of shards must not creep up in RSS (see omnifer.heap)
    return result


def process_object(
    obj: ObjectRef, source: Any, params: IngestParams, detector: Any,
    seen: set[str] | _ShardSeen, stamp: dict[str, Any],
) -> tuple[dict[str, Any], list[dict[str, Any]], list[np.ndarray]]:
    """One source object → its ``images`` row, its face rows and their crops (unscored).

    Shared by :func:`process_shard` and ``omnifer.retry`` so that a retried image gets exactly
    the rows a clean run would have given it. ``seen`` holds content already ingested (a new
    sha256 is added to it; ``process_shard`` passes a :class:`_ShardSeen`, whose membership
    test claims the content); ``stamp`` holds the provenance columns every row carries.
    """
    from omnifer.decode import decode_image
    from omnifer.faces import detect_and_align, face_id
    from omnifer.sources import FetchError, read_object

    det = {"detector": detector.name, "detector_version": detector.version}
    row: dict[str, Any] = {"source_uri": obj.uri, "source_version": obj.version,
                           "n_faces": 0, **det, **stamp}
    face_rows: list[dict[str, Any]] = []
    crops: list[np.ndarray] = []
    try:
        data = read_object(source, obj, params.max_bytes)
    except FetchError as exc:
        if exc.transient:  # the store is down, not the object: fail the shard, rerun reads it
            raise SourceError(f"source unavailable after retries, shard not committed: {exc}"
                              ) from None
        row.update(status=exc.status, error=str(exc))
        return row, face_rows, crops
    sha = hashlib.sha256(data).hexdigest()
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
        faces = detect_and_align(decoded.image, detector,
                                 min_face_size=params.min_face_size,
                                 min_score=params.min_det_score)
    except Exception as exc:  # a detector failure is one image's problem, not the night's
        log.warning("detection failed on %s: %s", obj.uri, exc)
        row.update(status="detect_failed", error=f"{type(exc).__name__}: {exc}")
        return row, face_rows, crops
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
            "flip_agreement": bool(batch.flip_agreement[i]),
            # null when the model gives no embedding (an ONNX model without one)
            "similarity": (None if np.isnan(batch.similarity[i])
                           else float(batch.similarity[i])),
            "embedding": (batch.embedding[i].astype(np.float32).tolist()
                          if batch.embedding.shape[1] else None),
            "status": STATUS_OK,
            "error": None,
        })
    return rows


# -- selection -----------------------------------------------------------------------------------
class CuratedResult(BaseModel):
    curated_version: str
    candidates: int
    selected: int
    per_class: dict[str, int]


def curated_version_for(ingest_date: str, policy_json: str, model_version: str) -> str:
    return f"{ingest_date}.{_digest([policy_json, model_version])[:8]}"


def select_curated(
    catalog: DataCatalog, ingest_date: str, policy: Any, model_version: str, run_id: str
) -> CuratedResult:
    """Apply the selection policy to the night's scores and commit the curated set.

    Runs over the whole night (class balance and top-K are per night), after every shard is
    committed. The file name comes from the curated version, so a rerun replaces, not adds.
    """
    from omnifer.selection import select_samples

    check_date(ingest_date, "ingest date")
    check_name(model_version, "model version")
    flt = (ds.field("ingest_date") == ingest_date) & (ds.field("model_version") == model_version)
    flt = flt & (ds.field("status") == STATUS_OK)
    scores = catalog.read("scores", columns=["face_id", "label", "confidence", "similarity",
                                             "flip_agreement", "det_score", "face_size", "margin"],
                          filter=flt)
    # A face can only be curated once per night even if identical bytes came twice.
    if scores.num_rows:
        _, first = np.unique(np.asarray(scores["face_id"].to_pylist(), dtype=object),
                             return_index=True)
        scores = scores.take(pa.array(np.sort(first)))
    from omnifer.selection import adapt_policy

    policy = adapt_policy(policy, scores)  # e.g. no similarity gate for a model without one
    policy_json = policy.to_json()
    version = curated_version_for(ingest_date, policy_json, model_version)
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
        "run_id": pa.array([run_id] * n),
        "shard_id": pa.array([None] * n, pa.string()),
        "code_version": pa.array([code_version()] * n),
        "created_at": pa.array([_now()] * n, pa.timestamp("us", tz="UTC")),
    })
    catalog.write("curated", f"part-{version}.parquet", table, ingest_date=ingest_date)
    per_class = dict(sorted(Counter(table["label"].to_pylist()).items()))
    return CuratedResult(curated_version=version, candidates=scores.num_rows, selected=n,
                         per_class=per_class)


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
