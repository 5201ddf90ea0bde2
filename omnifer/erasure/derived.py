"""What follows an erasure beyond the rows: distilled sets, model versions, reports, a retrain.

* **Distilled versions** made from a curated version that lost rows are stale: distilled
  images still leak membership of the faces they were optimised on. Their rows and PNG grids
  are removed (:func:`drop_distilled`); the request keeps their names. The next distillation
  finds the curated rows undistilled again and builds a new version from the remaining faces
  (:func:`omnifer.distill.stage.distilled_version_for` names it after the request too).
* **Model versions** that learned from those rows get a ``trained_on_erased`` event
  (:func:`flag_models`); their weights stay where they are (the event says why), and with
  ``erasure.retrain`` a flagged primitive model is replaced at once
  (:func:`retrain_replacement`).
* **Run reports** that show a forgotten face (sample crops) or a stale distilled grid are built
  again from the catalog as it now is; a report that cannot be rebuilt is deleted
  (:func:`rebuild_reports`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from omnifer import storage
from omnifer.catalog.catalog import DataCatalog
from omnifer.catalog.erasures import ErasureRequest
from omnifer.catalog.schemas import DISTILLED
from omnifer.config import Settings
from omnifer.distill.config import make_config
from omnifer.distill.stage import distill_curated
from omnifer.erasure.match import report_needles
from omnifer.errors import OmniferError
from omnifer.models import versions as model_versions
from omnifer.report.build import build_report
from omnifer.training.retrain import next_version, retrain

log = logging.getLogger(__name__)


def drop_distilled(catalog: DataCatalog, stale: Iterable[str]) -> int:
    """Remove the rows and grids of the ``stale`` distilled versions; returns rows removed.

    A file that holds only stale rows is deleted; one that holds others too is rewritten
    without them (atomically, under its name). Nothing left to remove: nothing is written.
    """
    stale = set(stale)
    if not stale:
        return 0
    removed = 0
    for uri in storage.list_files(catalog.uri("distilled"), ".parquet"):
        fs, path = storage.resolve(uri)
        try:
            table = pq.read_table(path, filesystem=fs, schema=DISTILLED)
        except FileNotFoundError:
            continue
        hit = pc.is_in(table["distilled_version"], value_set=pa.array(sorted(stale), pa.string()))
        n = int(pc.sum(pc.cast(hit, pa.int64())).as_py() or 0)
        if not n:
            continue
        if n == table.num_rows:
            storage.delete(uri)
        else:
            storage.write_table_atomic(uri, table.filter(pc.invert(hit)))
        removed += n
    for version in sorted(stale):
        for grid in storage.list_files(catalog.distilled_grids_uri(version)):
            storage.delete(grid)
    if removed:
        log.info("removed %d images of stale distilled versions %s", removed, sorted(stale))
    return removed


def flag_models(catalog: DataCatalog, request: ErasureRequest, flagged: dict[str, str],
                run_id: str | None = None) -> list[str]:
    """Record ``trained_on_erased`` for each flagged version that does not carry this
    request's flag yet; returns the versions flagged now."""
    already = model_versions.flagged_versions(catalog)
    done = []
    for version, why in sorted(flagged.items()):
        if request.request_id in already.get(version, []):
            continue
        model_versions.flag_trained_on_erased(catalog, version, request.request_id, why, run_id)
        done.append(version)
    if done:
        log.info("flagged %s: trained on data erased by %s", ", ".join(done), request.request_id)
    return done


def _shows(page: bytes, needles: list[bytes]) -> bool:
    return any(n in page for n in needles)


def rebuild_reports(catalog: DataCatalog, uris: Iterable[str], face_ids: Iterable[str],
                    stale_distilled: Iterable[str]) -> list[str]:
    """Build again each report in ``uris`` that still shows one of ``face_ids`` or a stale
    distilled version; delete it when it cannot be rebuilt or still shows them. Returns the
    reports rebuilt or deleted now (a rerun finds none)."""
    needles = report_needles(face_ids, stale_distilled)
    touched = []
    for uri in sorted(set(uris)):
        try:
            page = storage.read_bytes(uri)
        except OmniferError:
            continue  # deleted already
        if not _shows(page, needles):
            continue
        run_id = uri.rsplit("/", 1)[-1].removesuffix(".html")
        try:
            build_report(catalog, run_id=run_id)
            page = storage.read_bytes(uri)
        except OmniferError as exc:
            log.info("report %s cannot be rebuilt (%s): deleted", uri, exc)
            page = None
        if page is None or _shows(page, needles):
            storage.delete(uri)
        touched.append(uri)
    return touched


def needs_replacement(catalog: DataCatalog) -> bool:
    """Whether the primitive model carries a ``trained_on_erased`` flag."""
    try:
        current, _ = model_versions.primitive_model(catalog)
    except OmniferError:
        return False
    return current in model_versions.flagged_versions(catalog)


def plan_replacement(catalog: DataCatalog) -> str:
    """The version name the replacement will be registered under (fixed before training, so a
    forget that is killed while training trains the same version when run again)."""
    return next_version(catalog)


def retrain_replacement(catalog: DataCatalog, settings: Settings, version: str,
                        run_id: str | None = None) -> str | None:
    """Replace a flagged primitive model: distil again when the recipe uses distilled images,
    then train ``version`` from the labeled set and what remains mined, without the flagged
    model as teacher, and promote it (``replace``). None when nothing needs replacing."""
    registered = model_versions.history(catalog, version)
    if not needs_replacement(catalog) and registered is not None:
        return version  # done by an earlier run of this request
    if not needs_replacement(catalog):
        return None
    rs = settings.retrain_settings()
    distilled = None
    if rs.recipe in ("distilled", "all"):
        distilled = distill_curated(catalog, make_config(rs.distill), run_id=run_id)
        distilled = distilled.distilled_version
    result = retrain(catalog, rs, distilled_version=distilled, run_id=run_id, version=version,
                     use_teacher=False, replace=True)
    log.info("trained %s to replace the flagged primitive model (%s)", result.model_version,
             json.dumps({"accuracy": result.accuracy, "parent": result.parent_version}))
    return result.model_version
