"""Subprocess side of the fault tests: run one night, and die or fail where told.

``python tests/helpers_faults.py MODE CATALOG_YAML SOURCE DATE SHARD_SIZE``

MODE:
  clean                 run the night normally
  kill-staged:K         SIGKILL itself when the K-th Parquet file is staged, before its rename
  kill-marker:K         SIGKILL itself before the rename of the K-th shard marker
  fsize:BYTES           run with RLIMIT_FSIZE = BYTES (a full disk: writes fail with EFBIG)
  compact-kill:POINT    do not ingest (SOURCE is ignored): compact DATE and SIGKILL itself
                        when publishing the first compaction state, before-switch or
                        after-switch (the state file linked, nothing deleted yet)

Prints one line ``committed=N failed=M`` and, per failed shard, ``FAILED <id>: <error>``;
exits 1 when a shard failed.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
from pathlib import Path


def _kill_on_rename(kind: str, nth: int) -> None:
    real_replace = os.replace
    count = {"n": 0}

    def replace(src, dst, *args, **kwargs):  # noqa: ANN001, ANN202 - os.replace's signature
        text = os.fsdecode(dst)
        hit = (kind == "staged" and os.fsdecode(src).endswith(".parquet.tmp")) or (
            kind == "marker" and "/_shards/" in text)
        if hit:
            count["n"] += 1
            if count["n"] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace


def _kill_on_switch(point: str) -> None:
    real_link = os.link

    def link(src, dst, *args, **kwargs):  # noqa: ANN001, ANN202 - os.link's signature
        if "/_compaction/" in os.fsdecode(dst):
            if point == "before-switch":
                os.kill(os.getpid(), signal.SIGKILL)
            real_link(src, dst, *args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        return real_link(src, dst, *args, **kwargs)

    os.link = link


def _compact(catalog_yaml: str, date: str) -> int:
    from omnifer.catalog import DataCatalog
    from omnifer.catalog.compaction import compact_night
    from omnifer.config import load_catalog

    compact_night(DataCatalog(load_catalog(Path(catalog_yaml))), date, "sub-compact")
    return 0


def main(argv: list[str]) -> int:
    mode, catalog_yaml, source, date, shard_size = argv
    if mode.startswith("compact-kill:"):
        _kill_on_switch(mode.split(":")[1])
        return _compact(catalog_yaml, date)
    if mode.startswith("kill-"):
        kind, nth = mode[len("kill-"):].split(":")
        _kill_on_rename(kind, int(nth))
    elif mode.startswith("fsize:"):
        limit = int(mode.split(":")[1])
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of dying
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    from omnifer.catalog import DataCatalog
    from omnifer.config import load_catalog
    from omnifer.testing.faults import run_night

    catalog = DataCatalog(load_catalog(Path(catalog_yaml)))
    result = run_night(catalog, [source], date, int(shard_size), run_id=f"sub-{mode}")
    print(f"committed={result.committed} failed={len(result.failed)}", flush=True)
    for shard_id, error in result.failed.items():
        print(f"FAILED {shard_id}: {error}", flush=True)
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
