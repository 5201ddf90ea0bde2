"""``omnifer forget``: honour an erasure request everywhere the catalog carried the content.

The steps, each of which finds its work done when it runs again:

1. **Record the request** (``erasures/<request_id>.parquet``, state ``requested``) with what
   it matched — sha256s and face ids, never pixels — and what derives from it (curated
   versions, stale distilled versions, flagged models, reports). From this moment the crawler
   and every writer of the catalog treat the content as gone
   (:mod:`omnifer.catalog.erasures`).
2. **Distilled versions** made from it: rows and grids removed.
3. **Models** that learned from it: ``trained_on_erased`` events.
4. **Rows**: removed from every dataset, derived first, night by night
   (:mod:`omnifer.catalog.purge`), until a pass finds none; then state ``applied``.
5. **Reports** that showed a forgotten face or stale grid: rebuilt, or deleted.
6. With ``erasure.retrain``: a flagged primitive model is replaced (distil, retrain, promote).
7. State ``done``, with the time.

Killed anywhere and run again with the same rules, it resumes the unfinished request (same
id, the recorded content plus whatever the rules match now) and ends in the same catalog as
one uninterrupted run. Run again after ``done``, it finds nothing left and records nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable

from pydantic import BaseModel, Field

from omnifer.catalog.catalog import DataCatalog
from omnifer.catalog.erasures import (
    ErasureRequest,
    ErasureRule,
    content_of,
    load_requests,
    save_request,
)
from omnifer.catalog.plans import digest
from omnifer.catalog.provenance import utc_now
from omnifer.catalog.purge import faces_of, purge_rows
from omnifer.config import Settings, load_settings
from omnifer.erasure.derived import (
    drop_distilled,
    flag_models,
    needs_replacement,
    plan_replacement,
    rebuild_reports,
    retrain_replacement,
)
from omnifer.erasure.match import ErasurePlan, flagged_by, plan_erasure, reports_showing

log = logging.getLogger(__name__)

STEP_HOOKS: list[Callable[[str], None]] = []
"""Called with each step's name once it is committed (``requested``, ``distilled``, ``models``,
``rows``, ``applied``, ``reports``, ``retrained``, ``done``): fault-injection tests kill the
process here (``tests/helpers_forget.py``)."""

MAX_PASSES = 5


class ForgetResult(BaseModel):
    """What a forget did (or, with ``dry_run``, would do)."""

    request_id: str | None = None
    state: str
    dry_run: bool = False
    resumed: bool = False
    plan: ErasurePlan = Field(default_factory=ErasurePlan)
    removed: dict[str, dict[str, int]] = Field(default_factory=dict)
    distilled_rows: int = 0
    flagged_now: list[str] = Field(default_factory=list)
    reports: list[str] = Field(default_factory=list)
    retrained_model: str | None = None
    seconds: float = 0.0


def _step(name: str) -> None:
    for hook in STEP_HOOKS:
        hook(name)


def _new_request_id(rules: list[ErasureRule]) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    return f"e-{stamp}-{digest([r.model_dump() for r in rules])[:8]}"


def _merged(request: ErasureRequest, plan: ErasurePlan) -> ErasureRequest:
    """``request`` with what ``plan`` found added (a resumed request keeps what it recorded)."""
    def union(a: list[str], b: list[str]) -> list[str]:
        return sorted(set(a) | set(b))

    return request.model_copy(update={
        "sha256s": union(request.sha256s, plan.sha256s),
        "face_ids": union(request.face_ids, plan.face_ids),
        "curated_versions": union(request.curated_versions, plan.curated_versions),
        "stale_distilled": union(request.stale_distilled, plan.stale_distilled),
        "flagged_models": union(request.flagged_models, list(plan.flagged_models)),
        "reports": union(request.reports, plan.reports),
    })


def forget(catalog: DataCatalog, rules: list[ErasureRule], reason: str = "", *,
           dry_run: bool = False, settings: Settings | None = None,
           run_id: str | None = None) -> ForgetResult:
    """Erase what ``rules`` match from the catalog and everything derived; see the module
    docstring. ``settings``: for ``erasure.retrain`` (default: loaded). Raises
    :class:`~omnifer.errors.StorageError` when a file cannot be rewritten (run it again)."""
    started = time.monotonic()
    settings = settings or load_settings()  # invalid settings fail before anything is done
    key = ErasureRequest(request_id="-", rules=rules).rules_key()
    requests = load_requests(catalog)
    same = [r for r in requests if r.rules_key() == key]
    open_ = next((r for r in same if r.state != "done"), None)
    plan = plan_erasure(catalog, rules, open_.request_id if open_ else "",
                        content_of([open_]) if open_ else None)
    if dry_run:
        return ForgetResult(request_id=open_.request_id if open_ else None, state="dry-run",
                            dry_run=True, resumed=open_ is not None, plan=plan,
                            seconds=round(time.monotonic() - started, 3))
    if open_ is None and same and plan.empty:
        log.info("nothing left to erase: request %s is done", same[-1].request_id)
        return ForgetResult(request_id=same[-1].request_id, state="done", plan=plan,
                            seconds=round(time.monotonic() - started, 3))
    if open_ is None:
        request = ErasureRequest(request_id=_new_request_id(rules), rules=rules, reason=reason,
                                 matched=plan.rows, run_id=run_id)
    else:
        request = open_
        log.info("resuming erasure request %s (state %s)", request.request_id, request.state)
    request = _merged(request, plan)
    run_id = run_id or request.run_id or f"forget-{request.request_id}"
    request.run_id = request.run_id or run_id
    save_request(catalog, request)
    _step("requested")

    result = ForgetResult(request_id=request.request_id, state="requested",
                          resumed=open_ is not None, plan=plan)
    result.distilled_rows = drop_distilled(catalog, request.stale_distilled)
    _step("distilled")
    flagged = {**{v: "recorded by this request" for v in request.flagged_models},
               **flagged_by(catalog, request)}
    result.flagged_now = flag_models(catalog, request, flagged, run_id)
    _step("models")
    for _ in range(MAX_PASSES):  # again until a pass finds nothing (rows written meanwhile)
        content = content_of([request])
        more = faces_of(catalog, content) - set(request.face_ids)
        if more:  # faces of the content ingested meanwhile: record them before they go
            request.face_ids = sorted(set(request.face_ids) | more)
            save_request(catalog, request)
            content = content_of([request])
        removed = purge_rows(catalog, content, run_id)
        for name, per_folder in removed.items():
            for folder, n in per_folder.items():
                night = folder.removeprefix("ingest_date=") or "-"
                result.removed.setdefault(name, {})[night] = (
                    result.removed.get(name, {}).get(night, 0) + n)
        if not removed:
            break
    _step("rows")
    if request.state == "requested":
        request.state = "applied"
        save_request(catalog, request)
    _step("applied")

    shown = reports_showing(catalog, request.face_ids, request.stale_distilled)
    result.reports = rebuild_reports(catalog, [*request.reports, *shown], request.face_ids,
                                     request.stale_distilled)
    if set(shown) - set(request.reports):
        request.reports = sorted(set(request.reports) | set(shown))
        save_request(catalog, request)
    _step("reports")

    if settings.erasure.retrain and (request.retrained_model or needs_replacement(catalog)):
        if request.retrained_model is None:
            request.retrained_model = plan_replacement(catalog)
            save_request(catalog, request)
        result.retrained_model = retrain_replacement(catalog, settings, request.retrained_model,
                                                     run_id)
        _step("retrained")
    request.state = "done"
    request.done_at = utc_now()
    save_request(catalog, request)
    _step("done")
    result.state = "done"
    result.retrained_model = request.retrained_model
    result.seconds = round(time.monotonic() - started, 3)
    log.info("erasure %s done in %.1fs: %s", request.request_id, result.seconds,
             {k: sum(v.values()) for k, v in result.removed.items()})
    return result
