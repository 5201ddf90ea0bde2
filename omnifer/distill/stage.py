"""The distill stage over the catalog: curated versions → the ``distilled`` dataset.

:func:`omnifer.distill.methods.distill` works on any sampler; this module picks what to distil (the
current curated versions), streams their crops from Parquet, and commits the result with its
provenance: one ``distilled/part-<version>.parquet`` file plus a PNG grid per class under
``_distilled_grids/<version>/``. The distilled version is a digest of the curated versions and
the parameters, so a rerun finds the committed file and does nothing.

Erasure (``omnifer forget``) removes the distilled versions made from a forgotten face and
records them as stale; the digest then also covers the requests that took rows out of those
curated versions, so the rebuild from the remaining faces is a new version, not the old name
with other images. Distillation waits for an unfinished request on its curated versions, and
withdraws its own output when a request for them comes while it runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pyarrow.compute as pc
from pydantic import BaseModel

from omnifer import storage
from omnifer.catalog import erasures
from omnifer.catalog.catalog import DataCatalog
from omnifer.config import join_uri
from omnifer.curation import curated
from omnifer.distill.config import DistillConfig
from omnifer.distill.methods import distill
from omnifer.distill.result import save_grids
from omnifer.distill.samplers import ParquetClassSampler
from omnifer.errors import DatasetError
from omnifer.labels import CLASSES

log = logging.getLogger(__name__)


class DistillResult(BaseModel):
    """What the distill stage did: the distilled version, what it came from, where the grids are.
    """

    distilled_version: str
    curated_versions: list[str]
    curated_rows: int
    method: str
    ipc: int
    skipped: bool = False
    wall_time_s: float = 0.0
    grids_uri: str = ""


ALGORITHM_REVISION = 2
"""Bumped when a change to the methods makes the same parameters give other images, so that a
distilled version names what made it: 2 = the CPU speed-up of 2026-11-30 (DSA draws applied
to all classes in one call, per-class embedding on CPU; docs/performance.md)."""


def distilled_version_for(curated_versions: Sequence[str], config: DistillConfig,
                          erasure_ids: Sequence[str] = ()) -> str:
    """``d-<digest>`` of the curated versions, the parameters (not device or threads) and
    :data:`ALGORITHM_REVISION`, and of the erasure requests that removed rows from those
    versions, if any."""
    params = config.model_dump(mode="json", exclude={"device", "threads"})
    key: list = [sorted(curated_versions), params, {"revision": ALGORITHM_REVISION}]
    if erasure_ids:
        key.append(sorted(erasure_ids))
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return f"d-{digest[:12]}"


def _erasures_of(catalog: DataCatalog, versions: Sequence[str]
                 ) -> tuple[frozenset[str], list[str]]:
    """(every request id, the ids of the requests that took rows out of ``versions``); raises
    when one of those is not finished (its rows may still be there)."""
    requests = erasures.load_requests(catalog)
    touching = [r for r in requests if set(r.curated_versions) & set(versions)]
    pending = [r.request_id for r in touching if r.state == "requested"]
    if pending:
        raise DatasetError(f"erasure request {pending[0]} on these curated versions is not "
                           "finished: run the same 'omnifer forget' again, then distil")
    return frozenset(r.request_id for r in requests), [r.request_id for r in touching]


def withdraw(catalog: DataCatalog, version: str) -> None:
    """Delete a distilled version's file and grids (it holds images made from erased faces)."""
    storage.delete(catalog.file_uri("distilled", f"part-{version}.parquet"))
    for grid in storage.list_files(catalog.distilled_grids_uri(version)):
        storage.delete(grid)


def _model_hflip(catalog: DataCatalog, model_version: str | None) -> bool:
    """The ``hflip`` of ``model_version``'s card (default: the primitive model's); True when
    the catalog has no such model (faces)."""
    from omnifer.errors import OmniferError
    from omnifer.models.checkpoints import read_card
    from omnifer.models.versions import local_checkpoint, primitive_model

    try:
        version, uri = primitive_model(catalog)
        if model_version not in (None, version):
            rows = catalog.read("models", columns=["model_version", "uri"]).to_pylist()
            version = model_version
            uri = next(r["uri"] for r in rows if r["model_version"] == model_version and r["uri"])
        return read_card(local_checkpoint(uri, version)).hflip
    except (OmniferError, StopIteration):
        return True


def latest_distilled_version(catalog: DataCatalog) -> str | None:
    """The most recently committed distilled version (None when there is none)."""
    con = catalog.connect()
    row = con.execute("SELECT arg_max(distilled_version, created_at) FROM distilled").fetchone()
    return row[0] if row else None


def distill_curated(
    catalog: DataCatalog,
    config: DistillConfig,
    curated_versions: Sequence[str] | None = None,
    model_version: str | None = None,
    run_id: str | None = None,
    work_dir: Path | str | None = None,
) -> DistillResult:
    """Distil the curated versions (default: the current ones of ``model_version``)."""
    versions = list(curated_versions or curated.current_versions(catalog, model_version))
    if not versions:
        raise DatasetError("nothing to distil: the catalog has no curated rows yet "
                           "(run the nightly ingest first)")
    if config.hflip is None:  # a property of the data: the model card knows it
        config = config.model_copy(update={"hflip": _model_hflip(catalog, model_version)})
    known, erasure_ids = _erasures_of(catalog, versions)
    version = distilled_version_for(versions, config, erasure_ids)
    grids_uri = catalog.distilled_grids_uri(version)
    existing = catalog.read("distilled", columns=["distilled_version"])
    if existing.num_rows and pc.any(pc.equal(existing["distilled_version"], version)).as_py():
        log.info("distilled version %s is already committed: skipped", version)
        return DistillResult(distilled_version=version, curated_versions=versions,
                              curated_rows=curated.count_rows(catalog, versions),
                              method=config.method, ipc=config.ipc, skipped=True,
                              grids_uri=grids_uri)
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="omnifer-distill-") as tmp:
        crops = Path(tmp) / "curated-crops.parquet"
        n = curated.export_crops(catalog, versions, crops)
        # Classes come from the labels present: a class nobody was curated for is left out
        # (with a warning) rather than failing the night.
        sampler = ParquetClassSampler(crops, None, config.image_size)
        classes = list(sampler.classes)
        absent = [c for c in CLASSES if c not in classes]
        if absent:
            log.warning("no curated faces of %s: distilled set leaves them out", absent)
        log.info("distilling %d curated faces (%s) into %d per class", n, ", ".join(versions),
                 config.ipc)
        result = distill(sampler, classes, config)
        for grid in save_grids(result, Path(tmp) / "grids"):
            storage.write_bytes_atomic(join_uri(grids_uri, grid.name), grid.read_bytes())
    table = result.to_arrow(curated_version=",".join(versions), distilled_version=version,
                            run_id=run_id)
    catalog.write("distilled", f"part-{version}.parquet", table)
    late = [r for r in erasures.load_requests(catalog) if r.request_id not in known
            and set(r.curated_versions) & set(versions)]
    if late:  # a request for these faces came while we distilled: our images may show them
        withdraw(catalog, version)
        raise DatasetError(f"erasure request {late[0].request_id} came while distilling "
                           f"{version}: withdrawn; distil again once it is done")
    return DistillResult(distilled_version=version, curated_versions=versions, curated_rows=n,
                          method=config.method, ipc=config.ipc,
                          wall_time_s=round(result.wall_time_s, 2), grids_uri=grids_uri)
