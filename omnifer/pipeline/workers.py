"""What a worker keeps between shards: warm models, and which content is already claimed.

:class:`WorkerResources` loads the detector (one per thread: OpenCV's are not thread-safe) and
the scorer (one per process) on first use and keeps them for the life of the worker, so a shard
never pays for loading a model. :class:`SeenIndex` knows which shard owns each content hash
(in this process); :class:`SharedClaims` makes those claims hold across processes (Dask).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import threading
import time
from typing import Any

import pyarrow.dataset as ds

from omnifer import storage
from omnifer.catalog.catalog import DataCatalog
from omnifer.catalog.plans import IngestParams, IngestPlan
from omnifer.curation.scoring import Scorer
from omnifer.faces.detectors import create_detector
from omnifer.models.checkpoints import load_checkpoint
from omnifer.models.versions import local_checkpoint

log = logging.getLogger(__name__)

STATUS_DUPLICATE = "duplicate"


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
        key = (params.detector, params.min_det_score, params.max_side, params.detect_scale,
               params.min_face_size, params.refine_px, params.whole_frame)
        cache = getattr(cls._local, "detectors", None)
        if cache is None:
            cache = cls._local.detectors = {}
        if key not in cache:
            started = time.monotonic()
            cache[key] = create_detector(
                params.detector, score_threshold=params.min_det_score, max_side=params.max_side,
                scale=params.detect_scale, min_face_size=params.min_face_size,
                refine_px=params.refine_px, whole_frame=params.whole_frame,
            )
            # the seconds first: "... in process <pid>" ends the line (tests count loads per pid)
            log.info("[%.2f s] loaded detector %s in process %d", time.monotonic() - started,
                     params.detector, os.getpid())
        return cache[key]

    @classmethod
    def scorer(cls, params: IngestParams) -> Any:
        # The URI is part of the key: two catalogs (or a re-registered version) may use the
        # same version name for different weights.
        key = f"{params.model_uri}:{params.model_version}:{params.score_batch_size}"
        with cls._lock:
            if key not in cls._scorers:
                started = time.monotonic()
                path = local_checkpoint(params.model_uri, params.model_version)
                cls._scorers[key] = Scorer(
                    load_checkpoint(path), batch_size=params.score_batch_size
                )
                log.info("[%.2f s] loaded model %s in process %d", time.monotonic() - started,
                         params.model_version, os.getpid())
            return cls._scorers[key]


class SeenIndex:
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
    _indexes: dict[tuple[str, ...], SeenIndex] = {}

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
    def for_plan(cls, catalog: DataCatalog, plan: IngestPlan) -> SeenIndex:
        # created_at too: a catalog wiped and re-made in one process reuses plan ids
        key = (catalog.uri("images"), plan.plan_id, plan.created_at.isoformat())
        with cls._lock:
            index = cls._indexes.get(key)
            if index is None:
                while len(cls._indexes) >= 2:  # a long-lived worker keeps only recent plans
                    cls._indexes.pop(next(iter(cls._indexes)))
                index = cls._indexes[key] = cls(catalog)
            return index

    @classmethod
    def forget_all(cls) -> None:
        """Drop every cached index (the next shard reads ``images`` again)."""
        with cls._lock:
            cls._indexes.clear()

    def claim(self, sha: str, shard_id: str) -> bool:
        """True when another shard owns ``sha``; else ``shard_id`` owns it from now on."""
        with self._claim_lock:
            return self._owners.setdefault(sha, shard_id) != shard_id

    def owner(self, sha: str) -> str | None:
        """The shard that owns ``sha`` here (None: nobody yet), without claiming it."""
        with self._claim_lock:
            return self._owners.get(sha)


class SharedClaims:
    """Content claims that hold across processes: one object per new content hash.

    Why: :class:`SeenIndex` claims content in memory, which is enough while all shards of a
    plan run in one process (the thread runner). On Dask they run in worker processes that
    share nothing, and the same bytes in two shards on two workers would both be ``ok`` (two
    rows per face). So there a shard claims each new hash in the catalog,
    ``_claims/ingest_date=D/<plan_id>/<sha256>`` created exclusively
    (:func:`omnifer.storage.files.create_exclusive`) with the shard id as its body: the first
    creator owns the content for good, a rerun of that shard finds its own claim and owns it
    again, every other shard marks its copy ``duplicate``. Claims go out on a small thread
    pool while the shard decodes and detects (S3 latency hidden); :meth:`lost` collects them
    before scoring. Cost: one small object per new image of the night.
    """

    _pool: cf.ThreadPoolExecutor | None = None
    _pool_lock = threading.Lock()

    def __init__(self, catalog: DataCatalog, plan: IngestPlan, shard_id: str) -> None:
        self._folder = catalog.aux_uri("_claims", f"ingest_date={plan.ingest_date}",
                                       plan.plan_id)
        self._shard_id = shard_id
        self._pending: dict[str, cf.Future[bool]] = {}
        with self._pool_lock:
            if SharedClaims._pool is None:
                SharedClaims._pool = cf.ThreadPoolExecutor(8, thread_name_prefix="claims")
            self._executor = SharedClaims._pool

    def _claim(self, sha: str) -> bool:
        uri = f"{self._folder}/{sha}"
        body = self._shard_id.encode()
        return storage.create_exclusive(uri, body) or storage.read_bytes(uri) == body

    def start(self, sha: str) -> None:
        """Claim ``sha`` for this shard in the background."""
        self._pending[sha] = self._executor.submit(self._claim, sha)

    def lost(self) -> set[str]:
        """The hashes another shard claimed first (waits for every claim; StorageError when
        the catalog cannot take them: the shard then fails and its rerun claims again)."""
        return {sha for sha, fut in self._pending.items() if not fut.result()}


class ShardSeen:
    """The ``seen`` set one shard hands to :func:`process_object`: ``sha in seen`` claims.

    With ``shared`` claims (shards of the plan in other processes), content not committed yet
    is claimed in the catalog instead of in memory;
    :func:`omnifer.pipeline.ingest.process_shard` then gives up what it lost
    (:meth:`SharedClaims.lost`).
    """

    def __init__(self, index: SeenIndex, shard_id: str,
                 shared: SharedClaims | None = None) -> None:
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


class AlreadySeen:
    """A ``seen`` set that holds everything: an object processed with it gets the rows of a
    duplicate (content another shard claimed first)."""

    def __contains__(self, sha: object) -> bool:
        return True

    def add(self, sha: str) -> None:
        """Nothing to do: everything is seen already."""
