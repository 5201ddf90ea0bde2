"""What a shard task does first when it runs on a Dask worker (a process that shares nothing).

* Once per worker process: cap glibc's malloc arenas and undo the mmap threshold that Dask's
  ``MALLOC_TRIM_THRESHOLD_`` freezes (see ``omnifer.runtime.heap``), and say in the flow run's log
  which worker this is. Detectors and models are then loaded on the first
  shard and kept for the life of the process (``omnifer.pipeline.workers.WorkerResources``), so a
  worker loads them once, not once per task; model files come from the worker's own
  ``OMNIFER_HOME`` (or its ``OMNIFER_MODEL_MIRROR``) and the catalog's model store.
* Once per worker process and run: check that the worker sees the flow's catalog, by reading
  the run record the flow wrote before submitting any shard. A local catalog path that only
  the flow's machine has would otherwise be created empty on the worker and filled there,
  out of everyone's sight; instead the shard fails with one line saying what to do.

Outside Dask (the thread runner) all of this is a no-op.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

from omnifer.catalog import DataCatalog, runs
from omnifer.config import is_remote
from omnifer.errors import StorageError
from omnifer.runtime import heap

_lock = threading.Lock()
_prepared: set[int] = set()  # pids (a forked worker must prepare again)
_seen_runs: set[tuple[str, str]] = set()


def dask_worker() -> Any | None:
    """The ``distributed.Worker`` running this code, or None (not on Dask / no extra)."""
    try:
        from distributed import get_worker
    except ImportError:
        return None
    try:
        return get_worker()
    except ValueError:
        return None


def prepare_dask_worker(catalog: DataCatalog, run_id: str, logger: Any) -> str | None:
    """On a Dask worker: set the process up once and check that it sees the catalog.

    Returns the worker's address (None outside Dask). Raises StorageError, in one line, when
    the catalog (``run_id``'s record in it) is not visible from this worker.
    """
    worker = dask_worker()
    if worker is None:
        return None
    pid = os.getpid()
    with _lock:
        first = pid not in _prepared
        if first:
            heap.limit_arenas(max(2, int(getattr(worker.state, "nthreads", 1) or 1)))
            heap.keep_large_blocks()  # undo what Dask's MALLOC_TRIM_THRESHOLD_ costs
            _prepared.add(pid)
    if first:
        logger.info("Dask worker %s (host %s, pid %d) takes shards of this run",
                    worker.address, socket.gethostname(), pid)
    check_catalog_visible(catalog, run_id, where=f"Dask worker {worker.address} "
                                                 f"(host {socket.gethostname()})")
    return str(worker.address)


def check_catalog_visible(catalog: DataCatalog, run_id: str, where: str) -> None:
    """Raise StorageError unless ``run_id``'s run record is readable here (once per run)."""
    root = catalog.aux_uri()
    key = (root, run_id)
    if key in _seen_runs:
        return
    record = catalog.aux_uri("_runs", f"{run_id}.json")
    try:
        visible = runs.get_run(catalog, run_id) is not None
    except (OSError, StorageError) as exc:
        raise StorageError(f"{where} cannot read the catalog at {root} ({exc}); give every "
                           "worker the same OMNIFER_S3_ENDPOINT_URL / AWS_* settings as the "
                           "flow") from None
    if not visible:
        if is_remote(root):
            hint = "give every worker the same OMNIFER_S3_ENDPOINT_URL / AWS_* as the flow"
        else:
            hint = ("a local catalog must be on a path every worker mounts; or put it on S3 "
                    "(data_catalog.yaml root: s3://bucket/prefix)")
        raise StorageError(f"{where} does not see the catalog at {root} (no run record "
                           f"{record}): {hint}")
    with _lock:
        _seen_runs.add(key)
