"""Repair of shards whose data is gone (``omnifer catalog verify --repair``): forget them.

A shard is forgotten by removing its remaining rows (its own files, and its rows inside a
night's compacted file), making its file names visible again in the compaction state, and only
then deleting its marker, so that ``omnifer rerun --date D --force`` rebuilds it exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from omnifer import storage
from omnifer.catalog.catalog import DataCatalog
from omnifer.catalog.schemas import SCHEMAS
from omnifer.errors import StorageError

log = logging.getLogger("omnifer.verify")

#: The datasets written per shard of a night.
NIGHTLY = ("images", "faces", "scores")


def forget_shards(catalog: DataCatalog, date: str, shard_ids: list[str],
                  shards_in: Callable[[str], frozenset[str]]) -> None:
    """Take every row of ``shard_ids`` out of the night's nightly datasets, make their file
    names visible again, then delete their markers (in that order: a crash leaves a marker
    without data, which the next repair finishes). ``shards_in(uri)``: the shard ids whose
    rows a compacted file holds."""
    from omnifer.catalog.compaction import shard_of

    doomed = set(shard_ids)
    folder = f"ingest_date={date}"
    for name in NIGHTLY:
        dataset_uri = catalog.uri(name)
        folder_uri = catalog.file_uri(name, "x", ingest_date=date).rsplit("/", 1)[0]
        present = storage.list_files(folder_uri, ".parquet")
        for uri in present:
            file = uri.rsplit("/", 1)[-1]
            if shard_of(file) in doomed:
                storage.delete(uri)  # the shard's own files, visible or hidden
            elif file.startswith(storage.COMPACTED_PREFIX) and doomed & shards_in(uri):
                drop_shard_rows(uri, SCHEMAS[name], doomed)
        for _attempt in range(5):  # names of the forgotten shards must not stay hidden
            seq, partitions = storage.compaction_state(dataset_uri)
            entry = partitions.get(folder)
            if not entry or not any(shard_of(n) in doomed for n in entry.get("replaces", ())):
                break
            replaces = [n for n in entry.get("replaces", ()) if shard_of(n) not in doomed]
            new = {**partitions, folder: {**entry, "replaces": replaces}}
            info = {"dataset": name, "changed": folder, "run_id": "verify-repair",
                    "repair": f"forgot {len(doomed)} shard(s)"}
            if storage.publish_compaction(dataset_uri, seq + 1, new, info):
                break
        else:
            raise StorageError(f"could not update the compaction state of {name}: it kept "
                               "changing")
    for sid in sorted(doomed):
        storage.delete(catalog.shard_marker_uri(date, sid))
    log.info("verify --repair: forgot %d shard(s) of %s: %s", len(doomed), date,
             ", ".join(sorted(doomed)))


def drop_shard_rows(uri: str, schema: pa.Schema, shard_ids: set[str]) -> None:
    """Rewrite one compacted file without the rows of ``shard_ids`` (atomically, streamed)."""
    import pyarrow.compute as pc

    fs, path = storage.resolve(uri)
    keep = pa.array(sorted(shard_ids), pa.string())

    def batches() -> Any:
        parquet = pq.ParquetFile(fs.open_input_file(path))
        for batch in parquet.iter_batches(batch_size=4096):
            table = pa.Table.from_batches([batch]).select(schema.names).cast(schema)
            mask = pc.invert(pc.fill_null(pc.is_in(table["shard_id"], value_set=keep), False))
            yield from table.filter(mask).to_batches()

    storage.write_batches_atomic(uri, schema, batches())
