"""Which files of a dataset readers see: the compaction state.

A dataset's compaction state says, per partition folder, which compacted file is current and
which files it replaced. It lives in ``<dataset>/_compaction/<seq>.json``: each compaction
creates the next sequence number exclusively (so two compactors cannot both win), and readers
apply the newest state to what they list (:func:`dataset_files`). The compactor itself is
:mod:`omnifer.catalog.compaction`.
"""

from __future__ import annotations

import json

import pyarrow.fs as pafs

from omnifer.errors import StorageError
from omnifer.storage.files import create_exclusive, delete, list_files, read_bytes, resolve

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
