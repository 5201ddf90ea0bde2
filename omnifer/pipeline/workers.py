"""What a worker keeps between shards: warm models, and which content is already claimed.

:class:`WorkerResources` loads the detector (one per thread: OpenCV's are not thread-safe) and
the scorer (one per process) on first use and keeps them for the life of the worker, so a shard
never pays for loading a model. :class:`SeenIndex` knows which shard owns each content hash.
"""

from __future__ import annotations

import threading
from typing import Any

import pyarrow.dataset as ds

from omnifer.catalog.catalog import DataCatalog
from omnifer.catalog.plans import IngestParams, IngestPlan
from omnifer.curation.scoring import Scorer
from omnifer.faces.detectors import create_detector
from omnifer.models.checkpoints import load_checkpoint
from omnifer.models.versions import local_checkpoint

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
        key = (params.detector, params.min_det_score, params.max_side)
        cache = getattr(cls._local, "detectors", None)
        if cache is None:
            cache = cls._local.detectors = {}
        if key not in cache:
            cache[key] = create_detector(
                params.detector, score_threshold=params.min_det_score, max_side=params.max_side
            )
        return cache[key]

    @classmethod
    def scorer(cls, params: IngestParams) -> Any:
        # The URI is part of the key: two catalogs (or a re-registered version) may use the
        # same version name for different weights.
        key = f"{params.model_uri}:{params.model_version}:{params.score_batch_size}"
        with cls._lock:
            if key not in cls._scorers:
                path = local_checkpoint(params.model_uri, params.model_version)
                cls._scorers[key] = Scorer(
                    load_checkpoint(path), batch_size=params.score_batch_size
                )
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


class ShardSeen:
    """The ``seen`` set one shard hands to :func:`process_object`: ``sha in seen`` claims."""

    def __init__(self, index: SeenIndex, shard_id: str) -> None:
        self._index, self._shard_id = index, shard_id
        self._mine: set[str] = set()  # the same bytes twice in one shard: the 2nd is a dup

    def __contains__(self, sha: object) -> bool:
        if sha in self._mine:
            return True
        self._mine.add(str(sha))
        return self._index.claim(str(sha), self._shard_id)

    def add(self, sha: str) -> None:
        """Nothing to do: the membership test has claimed ``sha`` already."""
