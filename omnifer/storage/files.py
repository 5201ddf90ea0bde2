"""Files under one URI scheme for local folders and S3, with atomic commits.

Every read and write in the pipeline goes through :mod:`omnifer.storage`, so ``file://``/plain
paths and ``s3://`` behave the same (docs/architecture.md: never ``open()`` a path that might be
``s3://``). This module holds bytes and listings; :mod:`omnifer.storage.parquet` the Parquet
files and datasets, :mod:`omnifer.storage.compaction_state` which files readers see.

Commit protocol: a file becomes visible all at once or not at all. Locally it is written under
``<dataset>/_staging/`` and moved into place with ``os.replace`` (same file system, atomic);
on S3 an object appears only when its upload completes. File names are derived from the
shard's inputs, so a rerun rewrites the same names with the same rows instead of adding new
ones. Dataset discovery skips names starting with ``_`` or ``.``.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow.fs as pafs

from omnifer.errors import StorageError
from omnifer.storage.s3 import s3_client, s3_filesystem

log = logging.getLogger(__name__)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """File system and in-filesystem path for ``uri`` (plain path, file:// or s3://)."""
    if uri.startswith("s3://"):
        return s3_filesystem(), uri[len("s3://") :]
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    return pafs.LocalFileSystem(), str(Path(uri).absolute())


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ""


def is_local(fs: pafs.FileSystem) -> bool:
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
        if is_local(fs):
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
    if not is_local(fs):
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

    bucket, _, key = uri[len("s3://") :].partition("/")
    try:
        s3_client().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
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


def dataset_dir(path: str) -> str:
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


