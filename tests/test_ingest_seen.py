"""Content de-duplication across the shards of one plan (the seen-index read once per plan).

Planted answer: four files with the same bytes, one per shard, processed at the same time:
exactly one of them is ingested, the other three are ``duplicate``; a rerun of any shard gives
the same rows, also in a fresh process (index read again from the committed Parquet).
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from omnifer.catalog import DataCatalog
from omnifer.catalog.plans import delete_marker
from omnifer.pipeline import ingest
from omnifer.pipeline.workers import SeenIndex
from omnifer.sources import parse_source

DATE = "2026-11-30"


def _statuses(catalog: DataCatalog) -> dict[str, str]:
    t = catalog.read("images", columns=["source_uri", "status"])
    return dict(zip(t["source_uri"].to_pylist(), t["status"].to_pylist(), strict=True))


def test_shards_of_one_plan_ingest_shared_content_once(
    omnifer_home: Path, data_catalog: DataCatalog, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    blank = cv2.imencode(".png", np.full((64, 80, 3), 200, np.uint8))[1].tobytes()  # no face
    for i in range(4):
        (src / f"copy{i}.png").write_bytes(blank)
    params = ingest.IngestParams(model_version="v0", model_uri=str(tmp_path / "unused"))
    plan = ingest.plan_ingest(data_catalog, [parse_source(str(src))], DATE, params,
                              shard_size=1)
    assert len(plan.shards) == 4

    def run(shard: ingest.ShardSpec) -> ingest.ShardResult:
        return ingest.process_shard(data_catalog, plan, shard, "run-1")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(run, plan.shards))
    first = _statuses(data_catalog)
    assert Counter(first.values()) == {"no_face": 1, "duplicate": 3}, first

    # Rerun every shard in a "fresh process" (no index in memory): the same rows, because a
    # shard does not see its own rows and duplicate rows own nothing.
    SeenIndex.forget_all()
    for shard in plan.shards:
        delete_marker(data_catalog, DATE, shard.shard_id)
    for shard in reversed(plan.shards):  # the other order: ownership must not follow it
        run(shard)
    assert _statuses(data_catalog) == first
