"""Removing erased rows from the datasets' files, atomically, locally and on S3.

:func:`purge_rows` takes what is erased (:class:`omnifer.catalog.erasures.ErasedContent`) and
removes its rows from every dataset that has a matching column, derived datasets first
(``curated``, ``scores``, any other face-keyed one, then ``faces``, then ``images``), so a
reader in between never sees a row whose source is gone while what was made from it stays.

How a file is rewritten, and why readers never see a half-erased night:

* A night of a nightly dataset (``images``, ``faces``, ``scores``) is switched all at once: its
  committed files are merged, minus the erased rows, into one new compacted file that a new
  compaction state publishes (:func:`omnifer.catalog.compaction.compact_partition` with the
  erased content, ``force=True``). That is the same single small write that makes compaction
  atomic, and it is exclusive: a compactor working at the same time loses the switch (or we
  do) and starts over from what the winner published.
* Every other file holding erased rows — the files of another dataset (a curated version,
  one file each), a shard file whose shard has not committed yet, a compacted file no state
  names — is rewritten under its own name, staged and renamed (moved on S3) into place.
* Files a compaction state has replaced are hidden from readers already; they are deleted.

Each step looks for erased rows again before it writes, so a rerun after a crash finds the
work done and writes nothing: the result is that of one clean pass.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from omnifer import storage
from omnifer.catalog.catalog import DataCatalog
from omnifer.catalog.compaction import NIGHTLY_DATASETS, ORPHAN_AGE_S, compact_partition
from omnifer.catalog.erasures import (
    DATASET,
    ErasedContent,
    count_in_file,
    erasure_columns,
    filter_file,
)
from omnifer.catalog.schemas import SCHEMAS

log = logging.getLogger(__name__)


def erasable_datasets(catalog: DataCatalog) -> list[str]:
    """Datasets with a column erasure matches on, in removal order: rows that refer to faces
    only first (scores, curated, duplicates, …), then faces, then the rest (images)."""
    ranked = []
    for name in catalog.catalog.datasets:
        if name == DATASET or name not in SCHEMAS:
            continue
        kinds = set(erasure_columns(SCHEMAS[name]).values())
        if kinds:
            rank = 0 if kinds == {"face"} else 1 if "face_id" in SCHEMAS[name].names else 2
            ranked.append((rank, name))
    return [name for _, name in sorted(ranked)]


def _folder(catalog: DataCatalog, name: str, uri: str) -> str:
    base = storage.resolve(catalog.uri(name))[1].rstrip("/") + "/"
    return uri.removeprefix("s3://").removeprefix(base).rpartition("/")[0]


def disk_files(catalog: DataCatalog, name: str, nights: Iterable[str] | None = None) -> list[str]:
    """Every Parquet file of ``name`` in storage, whether readers see it or not (files a
    compaction replaced, compacted files no state names); only ``nights`` when given."""
    files = storage.list_files(catalog.uri(name), ".parquet")
    if nights is None:
        return files
    folders = {f"ingest_date={n}" for n in nights}
    return [f for f in files if _folder(catalog, name, f) in folders]


def find_rows(catalog: DataCatalog, name: str, content: ErasedContent,
              nights: Iterable[str] | None = None) -> dict[str, int]:
    """File URI → rows holding erased content, over every file of ``name`` in storage."""
    schema = SCHEMAS[name]
    if not content or not erasure_columns(schema):
        return {}
    out = {}
    for uri in disk_files(catalog, name, nights):
        if n := count_in_file(uri, schema, content):
            out[uri] = n
    return out


def visible_rows(catalog: DataCatalog, name: str, content: ErasedContent,
                 nights: Iterable[str] | None = None) -> dict[str, int]:
    """Partition folder (``ingest_date=D``, or ``""``) → erased rows that readers see now."""
    visible = set(storage.dataset_files(catalog.uri(name)))
    out: dict[str, int] = defaultdict(int)
    for uri, n in find_rows(catalog, name, content, nights).items():
        if uri in visible:
            out[_folder(catalog, name, uri)] += n
    return dict(out)


def faces_of(catalog: DataCatalog, content: ErasedContent,
             nights: Iterable[str] | None = None) -> set[str]:
    """Face ids of the faces whose image content or source URI is erased (every faces file in
    storage, so a face in a hidden file is known too)."""
    by_image = ErasedContent(sha256s=content.sha256s, source_prefixes=content.source_prefixes)
    if not by_image or "faces" not in catalog.catalog.datasets:
        return set()
    columns = ["face_id", "image_sha256", "source_uri"]
    schema = pa.schema([SCHEMAS["faces"].field(c) for c in columns])
    found: set[str] = set()
    for uri in disk_files(catalog, "faces", nights):
        fs, path = storage.resolve(uri)
        try:
            table = pq.read_table(path, filesystem=fs, columns=columns, schema=schema)
        except (OSError, pa.ArrowInvalid):
            continue  # gone meanwhile, or a partial file of a writer at work
        hit = table.filter(by_image.mask(table))
        found.update(f for f in hit["face_id"].to_pylist() if f)
    return found


def purge_dataset(catalog: DataCatalog, name: str, content: ErasedContent, run_id: str,
                  nights: Iterable[str] | None = None) -> dict[str, int]:
    """Remove the erased rows from every file of ``name``; see the module docstring.

    Returns folder → rows removed that readers saw (``{}`` when there were none, e.g. on a
    rerun). Raises :class:`~omnifer.errors.StorageError` when a file cannot be rewritten.
    """
    hits = find_rows(catalog, name, content, nights)
    if not hits:
        return {}
    uri = catalog.uri(name)
    schema = SCHEMAS[name]
    visible = set(storage.dataset_files(uri))
    removed: dict[str, int] = defaultdict(int)
    for file, n in hits.items():
        if file in visible:
            removed[_folder(catalog, name, file)] += n
    folders = {_folder(catalog, name, f) for f in hits}
    if name in NIGHTLY_DATASETS:
        for folder in sorted(f for f in folders if f.startswith("ingest_date=")):
            if any(f in visible and _folder(catalog, name, f) == folder for f in hits):
                compact_partition(catalog, name, folder.removeprefix("ingest_date="), run_id,
                                  erased=content, force=True)
    # What still holds erased rows: other datasets' files, uncommitted shards, hidden files.
    _, partitions = storage.compaction_state(uri)
    for file in disk_files(catalog, name):
        folder = _folder(catalog, name, file)
        if folder not in folders or not count_in_file(file, schema, content):
            continue
        state = partitions.get(folder, {})
        filename = file.rsplit("/", 1)[-1]
        if filename in state.get("replaces", ()):
            storage.delete(file)  # hidden for good: only a compaction's sweep was left to do
        else:
            filter_file(file, schema, content)
    for folder in folders:
        sweep_staging(catalog, name, folder)
    log.info("erased %d rows of %s (%s)", sum(removed.values()), name,
             ", ".join(sorted(f or "-" for f in removed)) or "hidden files only")
    return dict(removed)


def sweep_staging(catalog: DataCatalog, name: str, folder: str = "") -> int:
    """Delete the staged leftovers of dead writers (``_staging/``, untouched for longer than
    :data:`omnifer.catalog.compaction.ORPHAN_AGE_S`): they may hold rows of erased content."""
    fs, path = storage.resolve(catalog.uri(name))
    infos = fs.get_file_info(pafs.FileSelector(f"{path.rstrip('/')}/_staging",
                                               allow_not_found=True))
    now = time.time_ns()
    stale = [i.path for i in infos if i.type == pafs.FileType.File and i.mtime_ns is not None
             and now - i.mtime_ns > ORPHAN_AGE_S * 1e9]
    for p in stale:
        try:
            fs.delete_file(p)
        except (FileNotFoundError, OSError):
            pass
    return len(stale)


def purge_rows(catalog: DataCatalog, content: ErasedContent, run_id: str,
               nights: Iterable[str] | None = None) -> dict[str, dict[str, int]]:
    """Remove the rows of ``content`` (and of the faces of its images) from every dataset,
    derived datasets first. Returns dataset → folder → rows removed that readers saw."""
    if not content:
        return {}
    nights = list(nights) if nights is not None else None
    content = content.with_face_ids(faces_of(catalog, content, nights))
    out = {}
    for name in erasable_datasets(catalog):
        if removed := purge_dataset(catalog, name, content, run_id, nights):
            out[name] = removed
    return out
