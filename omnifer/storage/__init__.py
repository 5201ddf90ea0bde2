"""One URI scheme for local folders and S3, with atomic commits (``from omnifer import storage``).

Commit protocol: a file becomes visible all at once or not at all. Locally it is written under
``<dataset>/_staging/`` and moved into place with ``os.replace`` (same file system, atomic);
on S3 an object appears only when its upload completes. File names are derived from the
shard's inputs, so a rerun rewrites the same names with the same rows instead of adding new
ones. Dataset discovery skips names starting with ``_`` or ``.``.

Modules: :mod:`~omnifer.storage.s3` (endpoint, region, clients), :mod:`~omnifer.storage.files`
(bytes, listings, exclusive creation), :mod:`~omnifer.storage.compaction_state` (which files
readers see), :mod:`~omnifer.storage.parquet` (Parquet files and datasets),
:mod:`~omnifer.storage.ignore` (system junk and ``exclude`` globs: one rule for every listing).
"""

from omnifer.storage.compaction_state import (
    COMPACTED_PREFIX,
    COMPACTION_DIR,
    compaction_state,
    compaction_uri,
    dataset_files,
    is_visible,
    prune_compaction_states,
    publish_compaction,
)
from omnifer.storage.files import (
    create_exclusive,
    dataset_dir,
    delete,
    exists,
    is_local,
    list_files,
    read_bytes,
    resolve,
    write_bytes_atomic,
)
from omnifer.storage.parquet import dataset, read_table, write_batches_atomic, write_table_atomic

__all__ = [
    "COMPACTED_PREFIX", "COMPACTION_DIR", "compaction_state", "compaction_uri", "create_exclusive",
    "dataset", "dataset_dir", "dataset_files", "delete", "exists", "is_local", "is_visible",
    "list_files", "prune_compaction_states", "publish_compaction", "read_bytes", "read_table",
    "resolve", "write_batches_atomic", "write_bytes_atomic", "write_table_atomic",
]
