"""Parquet files and datasets over :mod:`omnifer.storage.files`: atomic writes, streamed
writes, and reads that apply the compaction state (:mod:`omnifer.storage.compaction_state`)."""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from omnifer.errors import StorageError
from omnifer.storage.compaction_state import dataset_files
from omnifer.storage.files import dataset_dir, is_local, resolve, write_bytes_atomic


def write_table_atomic(uri: str, table: pa.Table) -> None:
    """Write one Parquet file atomically (zstd, row groups small enough to stream)."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", row_group_size=4096)
    fs, path = resolve(uri)
    if not is_local(fs):
        write_bytes_atomic(uri, sink.getvalue())
        return
    # Local: stage inside the dataset's _staging folder (skipped by readers), then rename.
    staging = Path(dataset_dir(path)) / "_staging"
    try:
        staging.mkdir(parents=True, exist_ok=True)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = staging / f"{uuid.uuid4().hex}.parquet.tmp"
        try:
            with open(tmp, "wb") as fh:
                fh.write(sink.getvalue())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot write {uri}: {exc}") from None


def write_batches_atomic(uri: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch],
                         row_group_rows: int = 16_384, row_group_bytes: int = 64 << 20) -> int:
    """Stream ``batches`` into one Parquet file that appears all at once; returns its rows.

    For files too large to build in memory (a night's compacted faces): batches are gathered
    into row groups of about ``row_group_rows`` rows or ``row_group_bytes`` bytes, written to
    ``<dataset>/_staging/`` and then moved into place (a rename locally, a server-side copy on
    S3), so a crash leaves at most a staged file that readers skip.
    """
    fs, path = resolve(uri)
    staging = f"{dataset_dir(path)}/_staging/{uuid.uuid4().hex}.parquet.tmp"
    rows = 0
    try:
        if is_local(fs):
            Path(staging).parent.mkdir(parents=True, exist_ok=True)
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        with fs.open_output_stream(staging) as sink, \
                pq.ParquetWriter(sink, schema, compression="zstd") as writer:
            pending: list[pa.RecordBatch] = []
            size = 0
            for batch in batches:
                pending.append(batch)
                size += batch.nbytes
                if sum(b.num_rows for b in pending) >= row_group_rows or size >= row_group_bytes:
                    rows += _write_group(writer, schema, pending)
                    pending, size = [], 0
            rows += _write_group(writer, schema, pending)
        if is_local(fs):
            with open(staging, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(staging, path)
        else:
            fs.move(staging, path)
    except OSError as exc:
        raise StorageError(f"cannot write {uri}: {exc}") from None
    finally:
        try:
            fs.delete_file(staging)
        except (FileNotFoundError, OSError):
            pass
    return rows


def _write_group(writer: pq.ParquetWriter, schema: pa.Schema,
                 batches: list[pa.RecordBatch]) -> int:
    if not batches:
        return 0
    table = pa.Table.from_batches(batches, schema=schema)
    writer.write_table(table, row_group_size=max(table.num_rows, 1))
    return table.num_rows


def dataset(
    uri: str, schema: pa.Schema | None = None, partition_cols: tuple[str, ...] = (),
    files: list[str] | None = None,
) -> ds.Dataset:
    """A Parquet dataset over committed files (empty when none exist).

    ``schema`` is the file schema; ``partition_cols`` are hive folder keys (``date=…``), typed
    as strings so that ``2026-11-29`` stays the text it is in the path. ``files``: what
    :func:`dataset_files` returned, when the caller has listed already.
    """
    fs, path = resolve(uri)
    files = [f.removeprefix("s3://") for f in (dataset_files(uri) if files is None else files)]
    part_schema = pa.schema([(c, pa.string()) for c in partition_cols])
    full = None
    if schema is not None:
        full = pa.schema(list(schema) + [f for f in part_schema if f.name not in schema.names])
    if not files:
        return ds.dataset(full.empty_table() if full is not None else pa.table({}))
    return ds.dataset(
        files,
        filesystem=fs,
        format="parquet",
        partitioning=ds.partitioning(part_schema, flavor="hive") if partition_cols else None,
        partition_base_dir=path,
        schema=full,
    )


def read_table(
    uri: str,
    columns: list[str] | None = None,
    filter: ds.Expression | None = None,
    schema: pa.Schema | None = None,
    partition_cols: tuple[str, ...] = (),
) -> pa.Table:
    """Read a dataset (or the subset ``columns``/``filter``) into memory.

    A compaction may delete the files it replaced between our listing and our read; then the
    listing has changed and the read is simply done again over the new one.
    """
    files = dataset_files(uri)
    for _ in range(3):
        try:
            return dataset(uri, schema, partition_cols, files).to_table(columns=columns,
                                                                         filter=filter)
        except (OSError, pa.ArrowInvalid) as exc:
            listed, files = files, dataset_files(uri)
            if files == listed:
                raise StorageError(f"cannot read dataset {uri}: {exc}") from None
    raise StorageError(f"cannot read dataset {uri}: its files keep changing")
