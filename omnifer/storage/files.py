"""One URI scheme for local folders and S3, with atomic commits.

Every read and write in the pipeline goes through here, so ``file://``/plain paths and
``s3://`` behave the same (DESIGN: never ``open()`` a path that might be ``s3://``).

Commit protocol: a file becomes visible all at once or not at all. Locally it is written under
``<dataset>/_staging/`` and moved into place with ``os.replace`` (same file system, atomic);
on S3 an object appears only when its upload completes. File names are derived from the
shard's inputs, so a rerun rewrites the same names with the same rows instead of adding new
ones. Dataset discovery skips names starting with ``_`` or ``.``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from omnifer.errors import StorageError

log = logging.getLogger(__name__)
_lock = threading.Lock()


def s3_endpoint() -> str | None:
    return os.environ.get("OMNIFER_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")


@lru_cache(maxsize=8)
def _s3_filesystem(endpoint: str | None, region: str) -> pafs.S3FileSystem:
    kwargs: dict = {"region": region, "retry_strategy": pafs.AwsStandardS3RetryStrategy(5)}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host.rstrip("/"), scheme=scheme or "http")
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """File system and in-filesystem path for ``uri`` (plain path, file:// or s3://)."""
    if uri.startswith("s3://"):
        region = os.environ.get("OMNIFER_S3_REGION") or os.environ.get("AWS_REGION", "us-east-1")
        with _lock:
            fs = _s3_filesystem(s3_endpoint(), region)
        return fs, uri[len("s3://") :]
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    return pafs.LocalFileSystem(), str(Path(uri).absolute())


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ""


def _is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    try:
        with fs.open_input_stream(path) as fh:
            return fh.read()
    except (FileNotFoundError, OSError) as exc:
        raise StorageError(f"cannot read {uri}: {exc}") from None


def _publish_local(path: str, data: bytes, publish: Callable[[Path, str], None]) -> None:
    """Write ``data`` to a synced temporary file beside ``path``, then ``publish(tmp, path)``
    (a rename or a link): readers never see a half-written file."""
    parent = Path(path).parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write ``data`` so that readers see the old file, or the whole new one."""
    fs, path = resolve(uri)
    try:
        if _is_local(fs):
            _publish_local(path, data, os.replace)
        else:
            with fs.open_output_stream(path) as fh:
                fh.write(data)
    except OSError as exc:
        raise StorageError(f"cannot write {uri}: {exc}") from None


def create_exclusive(uri: str, data: bytes) -> bool:
    """Create ``uri`` with ``data`` only if it does not exist yet; True when this call did.

    The first of several concurrent writers wins, atomically, and readers never see a half
    file: locally the bytes go to a temporary file that is then ``os.link``-ed to the name
    (link fails if the name exists); on S3 a conditional ``PutObject`` with
    ``If-None-Match: *`` (S3 and moto answer 412 when the key exists). This is what lets
    two overlapping runs agree on one plan without a lock that a killed run could leave held.
    """
    fs, path = resolve(uri)
    if not _is_local(fs):
        return _s3_create_exclusive(uri, data)
    created = False

    def link(tmp: Path, dst: str) -> None:
        nonlocal created
        try:
            os.link(tmp, dst)  # fails when the name exists: another writer won
            created = True
        except FileExistsError:
            pass

    try:
        _publish_local(path, data, link)
    except OSError as exc:
        raise StorageError(f"cannot write {uri}: {exc}") from None
    return created


def _s3_create_exclusive(uri: str, data: bytes) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    from omnifer.sources import s3_client

    bucket, _, key = uri[len("s3://") :].partition("/")
    region = os.environ.get("OMNIFER_S3_REGION") or os.environ.get("AWS_REGION", "us-east-1")
    try:
        s3_client(s3_endpoint(), region).put_object(Bucket=bucket, Key=key, Body=data,
                                                     IfNoneMatch="*")
    except ClientError as exc:
        response = getattr(exc, "response", None) or {}
        code = str(response.get("Error", {}).get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
            return False
        raise StorageError(f"cannot write {uri}: {code or exc}") from None
    except BotoCoreError as exc:
        raise StorageError(f"cannot write {uri}: {type(exc).__name__}: {exc}") from None
    return True


def write_table_atomic(uri: str, table: pa.Table) -> None:
    """Write one Parquet file atomically (zstd, row groups small enough to stream)."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", row_group_size=4096)
    fs, path = resolve(uri)
    if not _is_local(fs):
        write_bytes_atomic(uri, sink.getvalue())
        return
    # Local: stage inside the dataset's _staging folder (skipped by readers), then rename.
    staging = Path(_dataset_dir(path)) / "_staging"
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


def list_files(uri: str, suffix: str = "") -> list[str]:
    """URIs of committed files under ``uri`` (recursive; skips ``_``/``.`` names)."""
    fs, path = resolve(uri)
    selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    scheme = "s3://" if uri.startswith("s3://") else ""
    out = []
    for info in fs.get_file_info(selector):
        if info.type != pafs.FileType.File or not info.path.endswith(suffix):
            continue
        rel = info.path[len(path) :].lstrip("/")
        if any(part.startswith(("_", ".")) for part in rel.split("/")):
            continue
        out.append(scheme + info.path)
    return sorted(out)


# -- compaction state -------------------------------------------------------------------------
# A dataset's compaction state says, per partition folder, which compacted file is current and
# which files it replaced. It lives in ``<dataset>/_compaction/<seq>.json``: each compaction
# creates the next sequence number exclusively (so two compactors cannot both win), and readers
# apply the newest state to what they list. See :mod:`omnifer.compaction`.
COMPACTION_DIR = "_compaction"
COMPACTED_PREFIX = "compact-"


def _compaction_seqs(uri: str) -> list[int]:
    fs, path = resolve(uri)
    selector = pafs.FileSelector(f"{path}/{COMPACTION_DIR}", allow_not_found=True)
    names = (info.path.rsplit("/", 1)[-1] for info in fs.get_file_info(selector)
             if info.type == pafs.FileType.File)
    return sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())


def compaction_uri(uri: str, seq: int) -> str:
    return f"{uri.rstrip('/')}/{COMPACTION_DIR}/{seq:08d}.json"


def compaction_state(uri: str) -> tuple[int, dict]:
    """``(seq, partitions)`` of the newest compaction state of the dataset at ``uri``.

    ``partitions`` maps a partition folder (``ingest_date=D``) to ``{"file": name,
    "replaces": [names]}``; ``(0, {})`` when the dataset was never compacted.
    """
    for _ in range(5):
        seqs = _compaction_seqs(uri)
        if not seqs:
            return 0, {}
        try:
            state = json.loads(read_bytes(compaction_uri(uri, seqs[-1])))
        except StorageError:  # pruned between the listing and the read: list again
            continue
        return seqs[-1], state.get("partitions", {})
    raise StorageError(f"cannot read the compaction state of {uri}: it keeps changing")


def dataset_files(uri: str) -> list[str]:
    """The committed Parquet files of the dataset at ``uri``, as readers must see them.

    Every file :func:`list_files` finds, minus those a compaction replaced and minus compacted
    files no compaction state names (a compactor that died before publishing). The state is
    read before and checked after the listing, so the listing is judged by the state it was
    taken under: a compaction that publishes meanwhile makes us list again, never see a night
    twice or not at all.
    """
    base = resolve(uri)[1].rstrip("/") + "/"
    for _ in range(10):
        seq, partitions = compaction_state(uri)
        files = list_files(uri, ".parquet")
        if (_compaction_seqs(uri) or [0])[-1] == seq:
            return [f for f in files
                    if _visible(f.removeprefix("s3://").removeprefix(base), partitions)]
    raise StorageError(f"cannot list {uri}: its compaction state keeps changing")


def _visible(rel: str, partitions: dict) -> bool:
    folder, _, name = rel.rpartition("/")
    return is_visible(name, partitions.get(folder, {}))


def is_visible(name: str, partition: dict) -> bool:
    """Whether a file of a partition folder is seen, given that folder's compaction state."""
    if name.startswith(COMPACTED_PREFIX):
        return partition.get("file") == name
    return name not in partition.get("replaces", ())


def publish_compaction(uri: str, seq: int, partitions: dict, info: dict) -> bool:
    """Make ``partitions`` the dataset's compaction state number ``seq``; False when another
    compactor published ``seq`` first (the caller then starts over from the newest state)."""
    body = {"seq": seq, "partitions": partitions, **info}
    return create_exclusive(compaction_uri(uri, seq),
                            json.dumps(body, indent=1, sort_keys=True).encode())


def prune_compaction_states(uri: str, keep: int = 20) -> None:
    """Delete all but the newest ``keep`` states (each holds the whole dataset's state)."""
    for seq in _compaction_seqs(uri)[:-keep]:
        delete(compaction_uri(uri, seq))


def write_batches_atomic(uri: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch],
                         row_group_rows: int = 16_384, row_group_bytes: int = 64 << 20) -> int:
    """Stream ``batches`` into one Parquet file that appears all at once; returns its rows.

    For files too large to build in memory (a night's compacted faces): batches are gathered
    into row groups of about ``row_group_rows`` rows or ``row_group_bytes`` bytes, written to
    ``<dataset>/_staging/`` and then moved into place (a rename locally, a server-side copy on
    S3), so a crash leaves at most a staged file that readers skip.
    """
    fs, path = resolve(uri)
    staging = f"{_dataset_dir(path)}/_staging/{uuid.uuid4().hex}.parquet.tmp"
    rows = 0
    try:
        if _is_local(fs):
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
        if _is_local(fs):
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


def _dataset_dir(path: str) -> str:
    """The dataset folder above a file's hive partition folders (``<dataset>/k=v/f``)."""
    parent = _parent(path)
    while parent.rsplit("/", 1)[-1].count("=") and _parent(parent):
        parent = _parent(parent)
    return parent


def delete(uri: str) -> None:
    fs, path = resolve(uri)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass


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
