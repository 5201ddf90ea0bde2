"""Is anything erased still there? :func:`find_erased_present` looks everywhere omnifer writes.

What it checks, for the content of every erasure request (done or not): every Parquet file of
every dataset with a matching column — the files readers see and those they do not (replaced
by a compaction, left by a dead compactor) — the rows and PNG grids of stale distilled
versions, and the run reports. An empty answer means the catalog holds none of it; the
content's sha256s stay in ``erasures`` on purpose (they are what keeps it out). What it cannot
see is outside omnifer: object versions and backups of the storage (docs/operations.md,
"Erasure requests").
"""

from __future__ import annotations

from pydantic import BaseModel

from omnifer import storage
from omnifer.catalog.catalog import DataCatalog
from omnifer.catalog.erasures import content_of, load_requests
from omnifer.catalog.purge import erasable_datasets, faces_of, find_rows
from omnifer.erasure.match import reports_showing


class ErasedPresence(BaseModel):
    """One place that still holds erased content."""

    kind: str  # rows | distilled | grid | report
    dataset: str | None = None
    uri: str
    rows: int = 0
    visible: bool = True  # whether omnifer's readers see it (a replaced file is hidden)
    pending: bool = False  # a request that is not done yet covers it (forget is under way)


def find_erased_present(catalog: DataCatalog) -> list[ErasedPresence]:
    """Every place in the catalog that still holds content an erasure request names (empty
    when the catalog is clean); see the module docstring. What ``omnifer erasures check``
    prints (and, once ported, what ``omnifer catalog verify`` includes)."""
    requests = load_requests(catalog)
    if not requests:
        return []
    content = content_of(requests)
    content = content.with_face_ids(faces_of(catalog, content))
    pending = any(r.state != "done" for r in requests)
    out: list[ErasedPresence] = []
    for name in erasable_datasets(catalog):
        visible = set(storage.dataset_files(catalog.uri(name)))
        for uri, n in find_rows(catalog, name, content).items():
            out.append(ErasedPresence(kind="rows", dataset=name, uri=uri, rows=n,
                                      visible=uri in visible, pending=pending))
    stale = sorted({v for r in requests for v in r.stale_distilled})
    if stale:
        table = catalog.read("distilled", columns=["distilled_version"])
        left = [v for v in table["distilled_version"].to_pylist() if v in set(stale)]
        if left:
            out.append(ErasedPresence(kind="distilled", dataset="distilled",
                                      uri=catalog.uri("distilled"), rows=len(left),
                                      pending=pending))
        for version in stale:
            for grid in storage.list_files(catalog.distilled_grids_uri(version)):
                out.append(ErasedPresence(kind="grid", uri=grid, pending=pending))
    for uri in reports_showing(catalog, content.face_ids, stale):
        out.append(ErasedPresence(kind="report", uri=uri, pending=pending))
    return out
