"""Check that the catalog's bookkeeping and its data agree; repair what would block a rerun.

Why: the bookkeeping beside the data outlives it. After a night's data folders were deleted,
its shard markers (``_shards/ingest_date=D/<shard>.json``) still said "done", so ingest and
``rerun --date D --force`` skipped every shard and rebuilt nothing; a compaction state that
names a deleted file hides the files it replaced. :func:`verify_catalog` (``omnifer catalog
verify``) finds four kinds of disagreement:

* ``state_missing_file``: a dataset's compaction state names a compacted file that is gone
  (the night reads as empty, and the files it replaced stay hidden);
* ``marker_without_data``: a shard's marker says done, but fewer of its rows are in the
  catalog than the marker counts (``images``; ``faces`` and ``scores``, one per face);
* ``data_without_marker``: rows of a shard that never committed (a crashed shard's files;
  a rerun of the night rewrites them under the same names);
* ``duplicate_key``: rows of one key twice (:data:`KEYS`).

``repair=True`` makes a rerun rebuild what is missing, and nothing else: a broken compaction
entry is dropped (publishing the next state, so readers see the night's files again), and a
shard whose data is missing is *forgotten*: its remaining rows are taken out of every nightly
dataset (its own files deleted, its rows filtered out of a compacted file, its file names no
longer hidden by the state), then its marker is deleted. ``omnifer rerun --date D --force``
(or the next ingest of D) then rebuilds it under the same file names, exactly once. Every
step can be repeated after a crash: a half-done repair is found and finished by the next
``verify --repair``. ``data_without_marker`` and ``duplicate_key`` are reported, not changed
(their rows may be someone's work in progress; the finding says what to run).

Run it while no ingest, retry or compaction of the same catalog is running: a shard being
written is "data without marker" for a moment.

:func:`missing_shard_data` is the cheap check that
:func:`omnifer.pipeline.ingest.process_shard` makes when
a marker says done, so that a rerun says when markers blocked it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any, Literal

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from omnifer import storage
from omnifer.catalog.catalog import DataCatalog
from omnifer.catalog.shard_repair import NIGHTLY, forget_shards
from omnifer.errors import StorageError
from omnifer.params import check_date

log = logging.getLogger(__name__)

"""The datasets a shard writes (one file each), which its marker vouches for."""

KEYS: dict[str, tuple[str, ...]] = {"images": ("source_uri", "source_version")}
"""Row keys checked for duplicates where they differ from ``data_catalog.yaml``'s ``key``:
an ``images`` row is one listed object version (the planner's seen set), whatever its
content hash. Other datasets use the catalog's key; rows with a NULL key part are skipped
there, while ``images`` groups NULL versions (URLs have none) together."""

FindingKind = Literal["state_missing_file", "marker_without_data", "data_without_marker",
                      "duplicate_key"]


class Finding(BaseModel):
    """One disagreement; ``action`` says what ``repair`` did or what to run."""

    kind: FindingKind
    ingest_date: str | None = None
    dataset: str | None = None
    shard_id: str | None = None
    detail: str
    action: str = ""
    repaired: bool = False


class VerifyReport(BaseModel):
    """What :func:`verify_catalog` checked and found."""

    nights: list[str] = Field(default_factory=list)
    markers: int = 0
    findings: list[Finding] = Field(default_factory=list)
    repair: bool = False
    seconds: float = 0.0

    @property
    def unresolved(self) -> list[Finding]:
        """Findings that still stand (all of them without ``repair``)."""
        return [f for f in self.findings if not f.repaired]

    def counts(self) -> dict[str, int]:
        return dict(Counter(f.kind for f in self.findings))


# -- reading the bookkeeping -----------------------------------------------------------------
def _folder(date: str) -> str:
    return f"ingest_date={date}"


def _date_of(part: str) -> str | None:
    return part.removeprefix("ingest_date=") if part.startswith("ingest_date=") else None


def _markers(catalog: DataCatalog) -> dict[str, dict[str, Any]]:
    """date → {shard id → marker JSON} for every shard marker in the catalog."""
    from omnifer.catalog.plans import ShardResult

    out: dict[str, dict[str, Any]] = {}
    for uri in storage.list_files(catalog.aux_uri("_shards"), ".json"):
        folder, name = uri.rsplit("/", 2)[-2:]
        date = _date_of(folder)
        if date is None:
            continue
        try:
            marker = ShardResult.model_validate_json(storage.read_bytes(uri))
        except (StorageError, ValueError):
            continue  # vanished since listing, or not a marker
        out.setdefault(date, {})[name.removesuffix(".json")] = marker
    return out


def _plan_shards(catalog: DataCatalog) -> dict[str, dict[str, str]]:
    """date → {shard id → plan id} over every written plan."""
    from omnifer.catalog.plans import IngestPlan

    out: dict[str, dict[str, str]] = {}
    for uri in storage.list_files(catalog.aux_uri("_plans"), ".json"):
        try:
            plan = IngestPlan.model_validate_json(storage.read_bytes(uri))
        except (StorageError, ValueError):
            continue
        for shard in plan.shards:
            out.setdefault(plan.ingest_date, {})[shard.shard_id] = plan.plan_id
    return out


def _data_nights(catalog: DataCatalog) -> set[str]:
    nights: set[str] = set()
    for name in NIGHTLY:
        base = storage.resolve(catalog.uri(name))[1].rstrip("/") + "/"
        for uri in storage.list_files(catalog.uri(name), ".parquet"):
            date = _date_of(uri.removeprefix("s3://").removeprefix(base).split("/", 1)[0])
            if date is not None:
                nights.add(date)
        _, partitions = storage.compaction_state(catalog.uri(name))
        nights |= {d for d in map(_date_of, partitions) if d is not None}
    return nights


def _rows_by_shard(catalog: DataCatalog, name: str, date: str) -> Counter[str]:
    table = catalog.read(name, columns=["shard_id"], filter=ds.field("ingest_date") == date)
    return Counter(s for s in table["shard_id"].to_pylist() if s is not None)


# -- the check a rerun makes -----------------------------------------------------------------
_cache_lock = threading.Lock()
_shards_in_file: dict[tuple[str, int | None, int | None], frozenset[str]] = {}
_visible: dict[tuple[str, str], tuple[float, list[str]]] = {}
_VISIBLE_TTL_S = 10.0


def _file_shards(uri: str) -> frozenset[str]:
    """Shard ids with rows in one Parquet file (read once per file version per process)."""
    fs, path = storage.resolve(uri)
    info = fs.get_file_info(path)
    key = (uri, info.size, info.mtime_ns)
    with _cache_lock:
        if key in _shards_in_file:
            return _shards_in_file[key]
    try:
        column = pq.read_table(path, filesystem=fs, columns=["shard_id"])["shard_id"]
        shards = frozenset(s for s in column.to_pylist() if s is not None)
    except (OSError, pa.ArrowInvalid):
        shards = frozenset()
    with _cache_lock:
        if len(_shards_in_file) > 256:
            _shards_in_file.clear()
        _shards_in_file[key] = shards
    return shards


def _visible_files(catalog: DataCatalog, name: str, date: str) -> list[str]:
    """The night's visible files of ``name``, listed at most every few seconds per process:
    a rerun asks this for each of its committed shards, whose files do not change."""
    key = (catalog.uri(name), date)
    now = time.monotonic()
    with _cache_lock:
        hit = _visible.get(key)
        if hit is not None and now - hit[0] < _VISIBLE_TTL_S:
            return hit[1]
    files = catalog.partition_files(name, ingest_date=date)
    with _cache_lock:
        _visible[key] = (now, files)
    return files


def missing_shard_data(catalog: DataCatalog, date: str, shard_id: str,
                       images: int = 1, faces: int = 1) -> list[str]:
    """The nightly datasets in which a committed shard has no rows at all although its marker
    counts some (``images``/``faces`` from the marker; faces stand for scores too).

    Cheap enough for every skipped shard of a rerun: a listing of the night's folder (cached
    for a few seconds) and, for a compacted night, its file's ``shard_id`` column (cached per
    file version). Exact row counts are :func:`verify_catalog`'s job.
    """
    from omnifer.catalog.compaction import shard_of

    missing = []
    for name, expected in (("images", images), ("faces", faces), ("scores", faces)):
        if expected <= 0:
            continue
        files = _visible_files(catalog, name, date)
        names = [f.rsplit("/", 1)[-1] for f in files]
        if any(shard_of(n) == shard_id for n in names):
            continue
        if any(n.startswith(storage.COMPACTED_PREFIX) and shard_id in _file_shards(f)
               for f, n in zip(files, names, strict=True)):
            continue
        missing.append(name)
    return missing


# -- the whole check -------------------------------------------------------------------------
def verify_catalog(catalog: DataCatalog, dates: Iterable[str] | None = None,
                   repair: bool = False) -> VerifyReport:
    """Compare the catalog's bookkeeping with its data (see the module docstring).

    ``dates``: only these nights (ISO dates; ConfigError otherwise); default every night
    that has markers, plans, files or compaction state. ``repair``: fix what blocks a rerun
    (broken compaction entries, markers of missing data). Returns a :class:`VerifyReport`;
    raises only for storage errors.
    """
    started = time.monotonic()
    wanted = None if dates is None else {check_date(d, "--date") for d in dates}
    report = VerifyReport(repair=repair)

    # 1. Compaction states first: they decide which files readers see.
    for name, spec in catalog.catalog.datasets.items():
        if "ingest_date" in spec.partitioning:
            report.findings += _check_states(catalog, name, wanted, repair)

    markers = _markers(catalog)
    plans = _plan_shards(catalog)
    nights = set(markers) | set(plans) | _data_nights(catalog)
    if wanted is not None:
        nights &= wanted
    report.nights = sorted(nights)
    report.markers = sum(len(markers.get(d, {})) for d in nights)

    # 2. Markers against rows, night by night.
    for date in report.nights:
        report.findings += _check_night(catalog, date, markers.get(date, {}),
                                        plans.get(date, {}), repair)

    # 3. Rows of one key twice.
    report.findings += _check_keys(catalog, wanted)
    report.seconds = round(time.monotonic() - started, 3)
    with _cache_lock:  # what this process cached may just have changed
        _visible.clear()
    return report


def _check_states(catalog: DataCatalog, name: str, wanted: set[str] | None,
                  repair: bool) -> list[Finding]:
    uri = catalog.uri(name)
    for _attempt in range(5):
        seq, partitions = storage.compaction_state(uri)
        broken = {}
        for folder, entry in partitions.items():
            date = _date_of(folder)
            if wanted is not None and date not in wanted:
                continue
            file = entry.get("file")
            if file and not storage.exists(f"{uri.rstrip('/')}/{folder}/{file}"):
                broken[folder] = file
        findings = [Finding(kind="state_missing_file", ingest_date=_date_of(folder),
                            dataset=name, detail=f"compaction state {seq} names {file}, which "
                            "is gone: the night reads as empty and the files it replaced stay "
                            "hidden", action="drop the entry (--repair)")
                    for folder, file in sorted(broken.items())]
        if not broken or not repair:
            return findings
        kept = {k: v for k, v in partitions.items() if k not in broken}
        info = {"dataset": name, "changed": ",".join(sorted(broken)), "run_id": "verify-repair",
                "repair": "dropped entries naming missing files"}
        if storage.publish_compaction(uri, seq + 1, kept, info):
            for f in findings:
                f.repaired, f.action = True, f"dropped from the state (now {seq + 1})"
            return findings
    raise StorageError(f"could not repair the compaction state of {name}: it kept changing")


def _check_night(catalog: DataCatalog, date: str, markers: dict[str, Any],
                 planned: dict[str, str], repair: bool) -> list[Finding]:
    rows = {name: _rows_by_shard(catalog, name, date) for name in NIGHTLY}
    findings: list[Finding] = []
    forget: list[str] = []
    for sid, marker in sorted(markers.items()):
        expected = {"images": marker.images, "faces": marker.faces, "scores": marker.faces}
        short = {n: (rows[n].get(sid, 0), want) for n, want in expected.items()
                 if rows[n].get(sid, 0) < want}
        if not short:
            continue
        detail = "marker says done, but " + ", ".join(
            f"{n} has {have} of {want} rows" for n, (have, want) in short.items())
        findings.append(Finding(kind="marker_without_data", ingest_date=date,
                                dataset=",".join(short), shard_id=sid, detail=detail,
                                action=f"forget the shard, then `omnifer rerun --date {date} "
                                "--force` rebuilds it (--repair)"))
        forget.append(sid)
    for sid in sorted(set().union(*rows.values()) - set(markers)):
        counts = ", ".join(f"{n} {rows[n][sid]}" for n in NIGHTLY if rows[n].get(sid))
        where = (f"in plan {planned[sid]}: `omnifer rerun --date {date}` finishes it"
                 if sid in planned else "in no plan: delete its part files by hand or keep "
                 "them")
        findings.append(Finding(kind="data_without_marker", ingest_date=date, shard_id=sid,
                                dataset=",".join(n for n in NIGHTLY if rows[n].get(sid)),
                                detail=f"rows of a shard that never committed ({counts})",
                                action=where))
    if repair and forget:
        forget_shards(catalog, date, forget, _file_shards)
        for f in findings:
            if f.kind == "marker_without_data":
                f.repaired = True
                f.action = (f"forgotten (rows and marker removed); `omnifer rerun --date "
                            f"{date} --force` rebuilds it")
    return findings


def _check_keys(catalog: DataCatalog, wanted: set[str] | None) -> list[Finding]:
    con = catalog.connect()
    findings = []
    for name, spec in catalog.catalog.datasets.items():
        key = KEYS.get(name) or tuple(spec.key)
        if not key:
            continue
        cols = ", ".join(f'"{k}"' for k in key)
        where = [] if name in KEYS else [f'"{k}" IS NOT NULL' for k in key]
        if wanted is not None and "ingest_date" in spec.partitioning:
            dates = ", ".join(f"'{d}'" for d in sorted(wanted))
            where.append(f"ingest_date IN ({dates})")
        sql = (f'SELECT {cols}, count(*) AS n FROM "{name}"'
               + (f" WHERE {' AND '.join(where)}" if where else "")
               + f" GROUP BY {cols} HAVING count(*) > 1 ORDER BY n DESC, {cols}")
        dups = con.execute(sql).fetchall()
        if not dups:
            continue
        first = ", ".join(f"{k}={v!r}" for k, v in zip(key, dups[0][:-1], strict=True))
        findings.append(Finding(
            kind="duplicate_key", dataset=name,
            detail=f"{len(dups)} key(s) ({', '.join(key)}) have 2+ rows, "
                   f"{sum(d[-1] - 1 for d in dups)} extra rows; first: {first} "
                   f"({dups[0][-1]} rows)",
            action=f'not repaired; list them: omnifer sql "SELECT {cols}, count(*) FROM '
                   f'{name} GROUP BY ALL HAVING count(*) > 1"'))
    return findings


__all__ = ["KEYS", "NIGHTLY", "Finding", "VerifyReport", "missing_shard_data",
           "verify_catalog"]
