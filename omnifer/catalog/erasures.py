"""Erasure requests (the ``erasures`` dataset) and the rows they make unwelcome in the catalog.

A request (:class:`ErasureRequest`, written by ``omnifer forget``) names content by rules — a
source prefix, an image's sha256, a face id — and records what they matched as sha256s and
face ids only (plus the source prefixes it was asked for). From the moment a request is
written (state ``requested``, before anything is removed) every writer of the catalog treats
its content as gone: the crawler gives such content the status ``erased`` and keeps no pixels
(:func:`omnifer.pipeline.ingest.process_object`), compaction drops its rows, and a writer that
commits rows while a request appears re-applies it (see :func:`new_request_ids`). That is what
keeps an ingest that overlaps a forget from bringing rows back.

Which columns a dataset is matched on is decided by name, so a dataset added later is handled
without code here: ``sha256``/``*_sha256`` (and ``…s`` lists) hold content hashes,
any other ``*_id`` (and ``…_ids`` lists) face ids, ``source_uri``/``*_source_uri`` source URIs
(matched by prefix). The removal itself is :mod:`omnifer.catalog.purge`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from omnifer import storage
from omnifer.catalog.catalog import DataCatalog
from omnifer.catalog.provenance import provenance, utc_now
from omnifer.catalog.schemas import ERASURES, PROVENANCE
from omnifer.errors import DatasetError

DATASET = "erasures"
STATUS_ERASED = "erased"
"""The ``images`` status of an object whose content (or source prefix) is erased."""

RuleKind = Literal["source_prefix", "sha256", "face_id"]
NOT_FACE_IDS = frozenset({name for name, _ in PROVENANCE} | {"request_id", "plan_id"})
"""``*_id`` columns that never hold a face id (provenance, bookkeeping)."""


class ErasureRule(BaseModel):
    """One thing to forget: every object under a source URI prefix, one image's content
    (sha256 of its bytes), or one face (``face_id``)."""

    rule: RuleKind
    value: str


class ErasureRequest(BaseModel):
    """One row of the ``erasures`` dataset (schema :data:`omnifer.catalog.schemas.ERASURES`)."""

    request_id: str
    rules: list[ErasureRule]
    reason: str = ""
    state: Literal["requested", "applied", "done"] = "requested"
    sha256s: list[str] = Field(default_factory=list)
    face_ids: list[str] = Field(default_factory=list)
    matched: dict[str, dict[str, int]] = Field(default_factory=dict)
    curated_versions: list[str] = Field(default_factory=list)
    stale_distilled: list[str] = Field(default_factory=list)
    flagged_models: list[str] = Field(default_factory=list)
    reports: list[str] = Field(default_factory=list)
    retrained_model: str | None = None
    requested_at: dt.datetime = Field(default_factory=utc_now)
    done_at: dt.datetime | None = None
    run_id: str | None = None

    @property
    def source_prefixes(self) -> list[str]:
        return [r.value for r in self.rules if r.rule == "source_prefix"]

    def rules_key(self) -> str:
        """The rules in a canonical form: two requests with the same key ask the same."""
        return json.dumps(sorted((r.rule, r.value) for r in self.rules))

    def to_table(self) -> pa.Table:
        row = self.model_dump(mode="python")
        row["rules"] = json.dumps([r.model_dump() for r in self.rules])
        row["matched"] = json.dumps(self.matched, sort_keys=True)
        for key in ("sha256s", "face_ids", "curated_versions", "stale_distilled",
                    "flagged_models", "reports"):
            row[key] = sorted(set(row[key]))
        stamp = provenance(self.run_id)
        row.update(code_version=stamp["code_version"], created_at=stamp["created_at"])
        return pa.Table.from_pylist([row], schema=ERASURES)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ErasureRequest:
        values = {k: v for k, v in row.items() if k in cls.model_fields and v is not None}
        values["rules"] = json.loads(row.get("rules") or "[]")
        values["matched"] = json.loads(row.get("matched") or "{}")
        return cls.model_validate(values)


def load_requests(catalog: DataCatalog) -> list[ErasureRequest]:
    """Every erasure request, oldest first (none when the catalog has no ``erasures``)."""
    if DATASET not in catalog.catalog.datasets:
        return []
    table = catalog.read(DATASET)
    requests = [ErasureRequest.from_row(r) for r in table.to_pylist()]
    return sorted(requests, key=lambda r: (r.requested_at, r.request_id))


def save_request(catalog: DataCatalog, request: ErasureRequest) -> None:
    """Write (or rewrite) the request's row: one file per request, replaced atomically."""
    catalog.write(DATASET, f"{request.request_id}.parquet", request.to_table())


def request_ids(catalog: DataCatalog) -> frozenset[str]:
    """Ids of the requests in the catalog now (a cheap listing: one file per request)."""
    if DATASET not in catalog.catalog.datasets:
        return frozenset()
    return frozenset(uri.rsplit("/", 1)[-1].removesuffix(".parquet")
                     for uri in storage.dataset_files(catalog.uri(DATASET)))


def new_request_ids(catalog: DataCatalog, known: frozenset[str]) -> frozenset[str]:
    """Requests written since ``known`` was taken: a writer that committed rows meanwhile
    re-applies them (:func:`omnifer.catalog.purge.purge_rows`), since it may have written
    rows that the request's own pass had already looked for."""
    return request_ids(catalog) - known


# -- what is erased ------------------------------------------------------------------------------
def _is_string_list(t: pa.DataType) -> bool:
    return ((pa.types.is_list(t) or pa.types.is_large_list(t))
            and (pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type)))


def _kind(name: str, t: pa.DataType) -> str | None:
    if not (pa.types.is_string(t) or pa.types.is_large_string(t) or _is_string_list(t)):
        return None
    if "sha256" in name:
        return "sha"
    if name in ("source_uri", "source_uris") or name.endswith(("_source_uri", "_source_uris")):
        return "uri"
    if name.endswith(("_id", "_ids")) and name not in NOT_FACE_IDS:  # matched_id, cluster_id…
        return "face"
    return None


def erasure_columns(schema: pa.Schema) -> dict[str, str]:
    """Columns of ``schema`` that erasure matches on: name → ``sha``, ``face`` or ``uri``.

    By name: ``…sha256…`` holds content hashes, ``source_uri`` (``*_source_uri``) URIs, and
    every other ``*_id``/``*_ids`` column may hold face ids (a face id is 128 random-looking
    bits: it cannot be mistaken for a run or shard id), so a dataset that refers to faces
    under another name (``matched_id``, ``cluster_id``) is matched too."""
    return {f.name: kind for f in schema if (kind := _kind(f.name, f.type))}


@dataclass(frozen=True)
class ErasedContent:
    """What the catalog must not hold: content hashes, face ids, source URI prefixes."""

    sha256s: frozenset[str] = frozenset()
    face_ids: frozenset[str] = frozenset()
    source_prefixes: tuple[str, ...] = ()
    request_ids: frozenset[str] = frozenset()
    by_sha: dict[str, str] = field(default_factory=dict, compare=False)

    def __bool__(self) -> bool:
        return bool(self.sha256s or self.face_ids or self.source_prefixes)

    def digest(self) -> str:
        """Changes whenever what is erased changes (part of a compacted file's name)."""
        text = json.dumps([sorted(self.sha256s), sorted(self.face_ids),
                           sorted(self.source_prefixes)])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def with_face_ids(self, ids: Iterable[str]) -> ErasedContent:
        more = frozenset(ids) - self.face_ids
        if not more:
            return self
        return ErasedContent(self.sha256s, self.face_ids | more, self.source_prefixes,
                             self.request_ids, self.by_sha)

    def uri_erased(self, uri: str) -> str | None:
        """The erased source prefix ``uri`` falls under (None when none does)."""
        return next((p for p in self.source_prefixes if uri.startswith(p)), None)

    def mask(self, table: pa.Table) -> pa.Array:
        """True for each row of ``table`` that holds erased content (any matching column),
    except the rows that record the crawler skipping it (status ``erased``)."""
        values = {"sha": self.sha256s, "face": self.face_ids}
        hit = pa.array([False] * table.num_rows, pa.bool_())
        for name, kind in erasure_columns(table.schema).items():
            column = table[name]
            if kind == "uri":
                for prefix in self.source_prefixes:
                    hit = pc.or_(hit, pc.fill_null(pc.starts_with(column, prefix), False))
                continue
            if not values[kind]:
                continue
            value_set = pa.array(sorted(values[kind]), pa.string())
            if _is_string_list(column.type):
                column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
                flat = pc.is_in(pc.list_flatten(column), value_set=value_set)
                parents = pc.filter(pc.list_parent_indices(column), flat).to_numpy()
                rows = [False] * table.num_rows
                for i in parents:
                    rows[int(i)] = True
                hit = pc.or_(hit, pa.array(rows, pa.bool_()))
            else:
                hit = pc.or_(hit, pc.is_in(column, value_set=value_set))
        if "status" in table.column_names:  # the crawler's own record of skipping: no content
            hit = pc.and_(hit, pc.fill_null(pc.not_equal(table["status"], STATUS_ERASED), True))
        return hit

    def count(self, table: pa.Table) -> int:
        if not self or table.num_rows == 0:
            return 0
        return int(pc.sum(pc.cast(self.mask(table), pa.int64())).as_py() or 0)

    def keep(self, table: pa.Table) -> pa.Table:
        """``table`` without the rows that hold erased content."""
        if not self or table.num_rows == 0:
            return table
        return table.filter(pc.invert(self.mask(table)))


def content_of(requests: Iterable[ErasureRequest]) -> ErasedContent:
    requests = list(requests)
    by_sha = {sha: r.request_id for r in requests for sha in r.sha256s}
    return ErasedContent(
        sha256s=frozenset(by_sha),
        face_ids=frozenset(f for r in requests for f in r.face_ids),
        source_prefixes=tuple(sorted({p for r in requests for p in r.source_prefixes})),
        request_ids=frozenset(r.request_id for r in requests),
        by_sha=by_sha,
    )


def erased_content(catalog: DataCatalog) -> ErasedContent:
    """What every request in the catalog (requested or done) erases."""
    return content_of(load_requests(catalog))


# -- files -----------------------------------------------------------------------------------
def count_in_file(uri: str, schema: pa.Schema, content: ErasedContent) -> int:
    """Rows of the Parquet file ``uri`` that hold erased content (reads only the matched
    columns); 0 for a file that cannot be read (a partial file of a writer still at work)."""
    columns = list(erasure_columns(schema))
    if not content or not columns:
        return 0
    columns += ["status"] if "status" in schema.names else []
    fs, path = storage.resolve(uri)
    try:
        table = pq.read_table(path, filesystem=fs, columns=columns,
                              schema=pa.schema([schema.field(c) for c in columns]))
    except FileNotFoundError:
        return 0
    except (OSError, pa.ArrowInvalid):
        return 0
    return content.count(table)


def _kept_batches(fs: Any, path: str, schema: pa.Schema, content: ErasedContent,
                  removed: list[int]) -> Iterator[pa.RecordBatch]:
    parquet = pq.ParquetFile(fs.open_input_file(path))
    for batch in parquet.iter_batches(batch_size=4096):
        table = pa.Table.from_batches([batch])
        table = table.select([n for n in schema.names if n in table.column_names])
        for f in schema:
            if f.name not in table.column_names:
                table = table.append_column(f, pa.nulls(table.num_rows, f.type))
        table = table.select(schema.names).cast(schema)
        kept = content.keep(table)
        removed[0] += table.num_rows - kept.num_rows
        yield from kept.to_batches()


def filter_file(uri: str, schema: pa.Schema, content: ErasedContent) -> int:
    """Rewrite the Parquet file ``uri`` without the rows holding erased content, atomically
    and under the same name (streamed: staged, then renamed / moved into place). Returns the
    rows removed; a file with none is left untouched, so a rerun does nothing."""
    if count_in_file(uri, schema, content) == 0:
        return 0
    fs, path = storage.resolve(uri)
    removed = [0]
    try:
        storage.write_batches_atomic(uri, schema,
                                     _kept_batches(fs, path, schema, content, removed))
    except (OSError, pa.ArrowInvalid) as exc:
        raise DatasetError(f"cannot rewrite {uri} without erased rows: {exc}") from None
    return removed[0]


# -- lineage ---------------------------------------------------------------------------------
def lineage_touches(lineage: dict[str, Any], request: ErasureRequest) -> bool:
    """Whether a model whose ``train_datasets`` lineage is ``lineage`` learned from rows that
    ``request`` erased: it used a curated version that lost rows, or a distilled version made
    from one, and was not trained after the rows were gone (``lineage["erasures"]``)."""
    if request.request_id in (lineage.get("erasures") or []):
        return False
    curated = set(lineage.get("curated") or [])
    return bool(curated & set(request.curated_versions)
                or lineage.get("distilled") in set(request.stale_distilled))
