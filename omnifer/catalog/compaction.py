"""Nightly compaction: one Parquet file per night and dataset instead of one per shard.

Why: DuckDB pays per file, not per row. The flow commits one file per shard and dataset,
because that is what makes a shard's commit atomic and a rerun exact; a million faces are then
~5 000 files per dataset and every query over them takes seconds (``benchmarks/queries.py``).
Once a night's shards have committed, their files are merged into one.

The protocol, and why readers never see a row twice or miss one:

1. The inputs are the partition's visible files whose shard has committed (its marker under
   ``_shards/`` exists) and the partition's current compacted file, if any.
2. Their rows are streamed (never all in memory) into ``compact-<digest>.parquet``, the digest
   taken over the inputs' names, sizes and modification times, so that a rerun after a crash
   writes the same name. No compaction state names that file yet, so omnifer's readers skip it.
3. If no input changed meanwhile (``retry-failed`` rewrites files in place), the next
   compaction state is created exclusively
   (:func:`omnifer.storage.compaction_state.publish_compaction`): it names the new file
   and lists the inputs under ``replaces``. That one small write is the
   switch; a second compactor of the same dataset loses it and starts over.
4. The replaced files are deleted. A crash before that leaves them hidden by the state; the
   next compaction deletes them.

Erased content (:mod:`omnifer.catalog.erasures`) is dropped while merging: what every
request names, read when the compaction starts; a request written while it merged is applied
right after its switch, with another merge of the same night. Erasure uses the same switch to
take rows out of a night at once (``force=True`` with the request's content; see
:mod:`omnifer.catalog.purge`).

Readers that apply the state: everything in omnifer (``storage.dataset_files``: the catalog's
DuckDB views, ``omnifer sql``, ``DataCatalog.read``). A plain DuckDB glob over
``ingest_date=*/*.parquet`` sees a night twice between steps 2 and 4 (milliseconds; after a
crash, until the next compaction), so query through the catalog while compactions may run.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import BaseModel

from omnifer import storage
from omnifer.catalog import erasures
from omnifer.catalog.catalog import DataCatalog
from omnifer.catalog.plans import committed_shards
from omnifer.catalog.provenance import provenance
from omnifer.catalog.schemas import SCHEMAS
from omnifer.errors import StorageError

log = logging.getLogger(__name__)

NIGHTLY_DATASETS = ("images", "faces", "scores")
"""The datasets a shard writes one file each into: the ones compaction merges."""

ORPHAN_AGE_S = 3600.0
"""A compacted file that no state names and that is older than this was left by a compactor
that died before publishing; younger ones may belong to a compactor still at work."""


class CompactionResult(BaseModel):
    """What compacting one dataset's night did."""

    dataset: str
    ingest_date: str
    inputs: int = 0
    rows: int = 0
    file: str | None = None
    removed: int = 0
    skipped: str | None = None
    seconds: float = 0.0


def shard_of(name: str) -> str | None:
    """The shard a file name belongs to (``part-<id>.parquet``, ``part-<id>-retry-<h>.parquet``)."""
    if not name.startswith("part-") or not name.endswith(".parquet"):
        return None
    return name[len("part-") : -len(".parquet")].split("-retry-")[0]


def compact_night(catalog: DataCatalog, date: str, run_id: str,
                  datasets: tuple[str, ...] = NIGHTLY_DATASETS) -> list[CompactionResult]:
    """Compact ``date`` in each of ``datasets`` (each dataset's switch is atomic on its own)."""
    return [compact_partition(catalog, name, date, run_id) for name in datasets]


def compact_partition(catalog: DataCatalog, name: str, date: str, run_id: str,
                      attempts: int = 5, erased: erasures.ErasedContent | None = None,
                      force: bool = False) -> CompactionResult:
    """Merge the committed files of one night of ``name`` into one; see the module docstring.

    Idempotent: a night that is one file already is left alone (``skipped`` says why), unless
    ``force``: then even one file is merged again (how erasure rewrites a night). Rows holding
    ``erased`` content (default: every erasure request's) are left out.
    """
    started = time.monotonic()
    result = CompactionResult(dataset=name, ingest_date=date)
    dataset_uri = catalog.uri(name)
    folder = f"ingest_date={date}"
    folder_uri = catalog.file_uri(name, "x", ingest_date=date).rsplit("/", 1)[0]
    fs, folder_path = storage.resolve(folder_uri)
    done = committed_shards(catalog, date)
    content = erasures.erased_content(catalog) if erased is None else erased
    for _ in range(attempts):
        seq, partitions = storage.compaction_state(dataset_uri)
        current = partitions.get(folder, {})
        present = {uri.rsplit("/", 1)[-1] for uri in storage.list_files(folder_uri, ".parquet")}
        visible = sorted(n for n in present if storage.is_visible(n, current))
        inputs = [n for n in visible if n == current.get("file") or shard_of(n) in done]
        if len(inputs) < 2 and not (force and inputs):
            result.skipped = "already one file" if inputs else "no committed files"
            result.removed = _sweep(fs, folder_path, present, current)
            break
        paths = [f"{folder_path}/{n}" for n in inputs]
        stats = _stats(fs, paths)
        key = repr(sorted(zip(inputs, stats, strict=True)))
        digest = hashlib.sha256((key + content.digest() if content else key).encode())
        out = f"{storage.COMPACTED_PREFIX}{digest.hexdigest()[:20]}.parquet"
        rows = storage.write_batches_atomic(f"{folder_uri}/{out}", SCHEMAS[name],
                                            _batches(fs, paths, SCHEMAS[name], content))
        if _stats(fs, paths) != stats:  # an input was rewritten meanwhile: start over
            log.info("compaction of %s %s: an input changed while merging; again", name, date)
            storage.delete(f"{folder_uri}/{out}")
            continue
        still_there = set(current.get("replaces", ())) & present
        replaces = sorted(still_there | (set(inputs) - {out}))
        new = {**partitions, folder: {"file": out, "replaces": replaces}}
        stamp = provenance(run_id)
        info = {"dataset": name, "changed": folder, "run_id": run_id,
                "code_version": stamp["code_version"],
                "created_at": stamp["created_at"].isoformat()}
        if not storage.publish_compaction(dataset_uri, seq + 1, new, info):
            log.info("compaction of %s %s: another compactor published first; again", name, date)
            continue
        result.inputs, result.rows, result.file = len(inputs), rows, out
        result.removed = _sweep(fs, folder_path, present, new[folder])
        storage.prune_compaction_states(dataset_uri)
        if erased is None and erasures.new_request_ids(catalog, content.request_ids):
            # A request came while we merged: our file may hold its rows. Apply it now.
            fresh = erasures.erased_content(catalog)
            if erasures.count_in_file(f"{folder_uri}/{out}", SCHEMAS[name], fresh):
                compact_partition(catalog, name, date, run_id, attempts, erased=fresh,
                                  force=True)
        break
    else:
        raise StorageError(f"could not compact {name} {date} in {attempts} attempts: its files "
                           "or the compaction state kept changing; run it again later")
    result.seconds = round(time.monotonic() - started, 3)
    if result.file:
        log.info("compacted %s %s: %d files, %d rows -> %s", name, date, result.inputs,
                 result.rows, result.file)
    return result


def _stats(fs: pafs.FileSystem, paths: list[str]) -> list[tuple[int | None, int | None]]:
    infos = fs.get_file_info(paths)
    return [(i.size, i.mtime_ns) if i.type == pafs.FileType.File else (None, None)
            for i in infos]


def _batches(fs: pafs.FileSystem, paths: list[str], schema: pa.Schema,
             erased: erasures.ErasedContent) -> Iterator[pa.RecordBatch]:
    """The inputs' rows in file order, a row group at a time, in the dataset's schema, minus
    the rows holding ``erased`` content."""
    for path in paths:
        try:
            parquet = pq.ParquetFile(fs.open_input_file(path))
            for batch in parquet.iter_batches(batch_size=4096):
                table = pa.Table.from_batches([batch])
                for f in schema:  # a column added since the file was written reads as null
                    if f.name not in table.column_names:
                        table = table.append_column(f, pa.nulls(table.num_rows, f.type))
                table = table.select(schema.names).cast(schema)
                yield from erased.keep(table).to_batches()
        except (OSError, pa.ArrowInvalid) as exc:
            raise StorageError(f"cannot read {path} for compaction: {exc}") from None


def _sweep(fs: pafs.FileSystem, folder_path: str, present: set[str], partition: dict) -> int:
    """Delete what the state hides: replaced files, and compacted files nobody published."""
    doomed = sorted(present & set(partition.get("replaces", ())))
    unnamed = [n for n in present
               if n.startswith(storage.COMPACTED_PREFIX) and n != partition.get("file")]
    now = time.time_ns()
    for name, info in zip(unnamed, fs.get_file_info([f"{folder_path}/{n}" for n in unnamed]),
                          strict=True):
        if info.mtime_ns is not None and now - info.mtime_ns > ORPHAN_AGE_S * 1e9:
            doomed.append(name)
    for name in doomed:
        try:
            fs.delete_file(f"{folder_path}/{name}")
        except FileNotFoundError:
            pass
        except OSError as exc:  # hidden anyway: the next compaction tries again
            log.warning("could not delete replaced file %s/%s: %s", folder_path, name, exc)
    return len(doomed)


def nights(catalog: DataCatalog, name: str = "images") -> list[str]:
    """Every ingest date that has files in ``name`` (what ``omnifer catalog compact --all``
    walks)."""
    dates = set()
    for uri in storage.dataset_files(catalog.uri(name)):
        folder = uri.rsplit("/", 2)[-2]
        if folder.startswith("ingest_date="):
            dates.add(folder.removeprefix("ingest_date="))
    return sorted(dates)
