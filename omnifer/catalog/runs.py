"""Run records: what each flow run did, stage by stage, kept beside the catalog.

One small JSON document per run (``_runs/<run_id>.json``), rewritten atomically as stages
finish. Operators read them with ``omnifer runs``; a rerun finds the date and sources there.
Prefect keeps its own run history too, but the catalog must answer "what produced these rows"
even when the Prefect database is gone.

Every flow keeps its record the same way, with :func:`recorded_run`: start → stages → finished
(``completed``, or ``failed`` with the error when the flow raises before saying otherwise).

A record says ``running`` until its flow ends it; a run killed with SIGKILL (or a lost machine)
never does. So a running flow also writes a *heartbeat* (``heartbeat_at``, every
``runs.heartbeat_s``, from a daemon thread) and records where it runs (``host``, ``pid`` and the
process's start time). :func:`observe` turns a record into what is true now: ``crashed`` when
Prefect reports the flow run final (CRASHED, FAILED, ...) while the record still says running,
when the process is gone (same host), or when the heartbeat is older than
``runs.stale_after_s``. A rerun records ``resumes`` (the run it finishes) and the finished run
``resumed_by``. :func:`resolve_run` is the one way every command turns a run id, or a unique
prefix of one, into a record.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omnifer import storage
from omnifer.catalog.catalog import DataCatalog
from omnifer.errors import ConfigError, DatasetError
from omnifer.params import check_name

log = logging.getLogger(__name__)

# One lock for every record this process writes: the heartbeat thread and the flow's own
# stage / finish calls share the record dict, and json.dumps must not see it change.
_LOCK = threading.RLock()
_BEATS: dict[str, threading.Event] = {}  # run id -> stops its heartbeat thread


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def _uri(catalog: DataCatalog, run_id: str) -> str:
    return catalog.run_record_uri(check_name(run_id, "run id"))


def _save(catalog: DataCatalog, record: dict[str, Any]) -> None:
    with _LOCK:  # dump and write together: an older snapshot must never land last
        data = json.dumps(record, indent=1, default=str).encode()
        storage.write_bytes_atomic(_uri(catalog, record["run_id"]), data)


def start(
    catalog: DataCatalog, run_id: str, flow: str, ingest_date: str, parameters: dict[str, Any],
    *, resumes: str | None = None, heartbeat_s: float | None = None,
) -> dict[str, Any]:
    """Write the record of a starting run and keep its heartbeat until :func:`finish`.

    ``resumes``: the run this one finishes (``omnifer rerun``); that run's record gets
    ``resumed_by``. ``heartbeat_s``: seconds between heartbeats (default ``runs.heartbeat_s``).
    """
    if heartbeat_s is None:
        from omnifer.config import load_settings

        heartbeat_s = load_settings().runs.heartbeat_s
    record = {"run_id": run_id, "flow": flow, "ingest_date": ingest_date,
              "parameters": parameters, "state": "running", "started_at": _now(),
              "finished_at": None, "stages": {}, "summary": {}}
    if storage.exists(_uri(catalog, run_id)):  # a Prefect retry of the same run
        record = {**json.loads(storage.read_bytes(_uri(catalog, run_id))), "state": "running"}
    record.update(_whereabouts(), heartbeat_at=_now(), heartbeat_s=heartbeat_s)
    if resumes and resumes != run_id:
        record["resumes"] = resumes
    _save(catalog, record)
    if record.get("resumes"):
        _link(catalog, record["resumes"], run_id)
    _start_heartbeat(catalog, record, heartbeat_s)
    return record


def stage(
    catalog: DataCatalog, record: dict[str, Any], name: str, state: str, counts: dict[str, Any]
) -> None:
    with _LOCK:
        record["stages"][name] = {"state": state, "at": _now(), **counts}
    _save(catalog, record)


def finish(catalog: DataCatalog, record: dict[str, Any], state: str,
           summary: dict[str, Any]) -> None:
    with _LOCK:
        _stop_heartbeat(record["run_id"])
        record.update(state=state, finished_at=_now(), summary=summary)
    _save(catalog, record)


def list_runs(catalog: DataCatalog, limit: int = 20) -> list[dict[str, Any]]:
    records = [json.loads(storage.read_bytes(u))
               for u in storage.list_files(catalog.runs_uri(), ".json")]
    records.sort(key=lambda r: r.get("started_at") or "", reverse=True)
    return records[:limit]


def get_run(catalog: DataCatalog, run_id: str) -> dict[str, Any] | None:
    uri = _uri(catalog, run_id)
    return json.loads(storage.read_bytes(uri)) if storage.exists(uri) else None


# ------------------------------------------------------------------------- one run-id resolver
def resolve_run(catalog: DataCatalog, run_id: str) -> dict[str, Any]:
    """The record of run ``run_id``, or of the one run whose id starts with it.

    Every command that takes a run id (``omnifer runs``, ``rerun``, ``report``) goes through
    here. Raises :class:`DatasetError` (one line) when no run, or more than one, matches.
    """
    text = str(run_id or "").strip()
    exact = get_run(catalog, text) if _is_name(text) else None
    if exact is not None:
        return exact
    ids = sorted(u.rsplit("/", 1)[-1][: -len(".json")]
                 for u in storage.list_files(catalog.runs_uri(), ".json"))
    matches = [i for i in ids if text and i.startswith(text)]
    if len(matches) == 1:
        record = get_run(catalog, matches[0])
        if record is not None:
            return record
    if len(matches) > 1:
        shown = ", ".join(m[: max(len(text) + 4, 12)] + "…" for m in matches[:4])
        more = f" and {len(matches) - 4} more" if len(matches) > 4 else ""
        raise DatasetError(f"run id {text!r} is ambiguous: {len(matches)} runs start with it "
                           f"({shown}{more}); give more characters (see 'omnifer runs')")
    raise DatasetError(f"no run id starts with {text!r} in {catalog.runs_uri()} "
                       "(see 'omnifer runs')")


def _is_name(text: str) -> bool:
    try:
        check_name(text, "run id")
    except ConfigError:  # a prefix with '/' or '..' names no file: only a prefix match
        return False
    return True


# ------------------------------------------------------------------------- liveness
def _proc_started(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, Linux ``/proc``), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22 of proc(5): starttime


def _whereabouts() -> dict[str, Any]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_started": _proc_started(pid)}


def process_alive(record: dict[str, Any]) -> bool | None:
    """Whether the process that wrote ``record`` still runs: None when that cannot be known
    here (another host, or no pid recorded). A reused pid is told apart by its start time."""
    pid = record.get("pid")
    if not isinstance(pid, int) or record.get("host") != socket.gethostname():
        return None
    if Path("/proc/self/stat").exists():
        started = _proc_started(pid)
        return started is not None and record.get("pid_started") in (None, started)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _start_heartbeat(catalog: DataCatalog, record: dict[str, Any], interval: float) -> None:
    run_id = record["run_id"]
    with _LOCK:
        if run_id in _BEATS:  # a Prefect retry in the same process: one thread is enough
            return
        stop = _BEATS[run_id] = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            with _LOCK:
                if stop.is_set() or record.get("state") != "running":
                    return
                record["heartbeat_at"] = _now()
                try:
                    _save(catalog, record)
                except Exception as exc:  # the run goes on; a reader may call it stale
                    log.warning("heartbeat of run %s not written: %s", run_id, exc)

    threading.Thread(target=beat, name=f"omnifer-heartbeat-{run_id[:8]}", daemon=True).start()


def _stop_heartbeat(run_id: str) -> None:
    with _LOCK:
        stop = _BEATS.pop(run_id, None)
        if stop is not None:
            stop.set()


#: Prefect state types that mean the flow run is over.
PREFECT_FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def observe(
    record: dict[str, Any], prefect_state: str | None = None, *,
    stale_after_s: float | None = None, now: dt.datetime | None = None,
) -> tuple[str, str]:
    """``(state, why)``: the run's state as far as can be told now.

    A record that is not ``running`` is what it says. A ``running`` one is ``crashed`` when
    ``prefect_state`` (the flow run's state type in Prefect, when the caller could ask) is
    final, when its process is gone (same host), or when its heartbeat is older than
    ``stale_after_s`` (default ``runs.stale_after_s``, at least three heartbeats); ``why``
    says which. ``cancelled`` when Prefect says the run was cancelled.
    """
    state = str(record.get("state") or "?")
    if state != "running":
        return state, ""
    if prefect_state in PREFECT_FINAL:
        kind = "cancelled" if prefect_state == "CANCELLED" else "crashed"
        return kind, f"Prefect reports the flow run {prefect_state}; its record never ended"
    alive = process_alive(record)
    if alive is False:
        return "crashed", (f"its process (pid {record.get('pid')} on {record.get('host')}) "
                           "is gone")
    if stale_after_s is None:
        from omnifer.config import load_settings

        stale_after_s = load_settings().runs.stale_after_s
    stale_after_s = max(stale_after_s, 3 * float(record.get("heartbeat_s") or 0))
    last = record.get("heartbeat_at") or record.get("started_at")
    if last and alive is None:
        age = ((now or dt.datetime.now(dt.UTC)) - dt.datetime.fromisoformat(str(last)))
        if age.total_seconds() > stale_after_s:
            return "crashed", (f"no heartbeat for {age.total_seconds() / 60:.0f} min "
                               f"(stale after {stale_after_s:.0f} s)")
    return "running", ""


# ------------------------------------------------------------------------- crashes and reruns
def _link(catalog: DataCatalog, old_id: str, new_id: str) -> None:
    with _LOCK:
        old = get_run(catalog, old_id)
        if old is None or old.get("resumed_by") == new_id:
            return
        old["resumed_by"] = new_id
        _save(catalog, old)


def mark_crashed(catalog: DataCatalog, run_id: str, why: str) -> dict[str, Any] | None:
    """Write ``crashed`` (with ``why``) into a record that still says ``running``."""
    with _LOCK:
        record = get_run(catalog, run_id)
        if record is None or record.get("state") != "running":
            return record
        record.update(state="crashed", crash=why,
                      finished_at=record.get("heartbeat_at") or record.get("started_at"))
        _save(catalog, record)
        return record


def record_failure(
    catalog: DataCatalog, run_id: str, flow: str, ingest_date: str,
    parameters: dict[str, Any], state: str, error: str,
) -> dict[str, Any]:
    """End a run's record as ``state`` (``failed`` / ``crashed``) with ``error``.

    For a flow that raised: a record still ``running`` keeps its stages and gets the state;
    a run that failed before it wrote a record (no model, no sources) gets one now, so that
    ``omnifer runs`` lists it. A record already ended is left as it is.
    """
    with _LOCK:
        _stop_heartbeat(run_id)
        record = get_run(catalog, run_id)
        if record is None:
            record = {"run_id": run_id, "flow": flow, "ingest_date": ingest_date,
                      "parameters": parameters, "state": state, "started_at": _now(),
                      "finished_at": _now(), "stages": {}, "summary": {"error": error},
                      "error": error, **_whereabouts()}
        elif record.get("state") == "running":
            record.update(state=state, finished_at=_now(), error=error)
            record.setdefault("summary", {}).setdefault("error", error)
        else:
            return record
        _save(catalog, record)
        return record


# ------------------------------------------------------------------------- one context manager
class RunRecord:
    """A run's record while the run goes on; see :func:`recorded_run`."""

    def __init__(self, catalog: DataCatalog, record: dict[str, Any]) -> None:
        self.catalog = catalog
        self.record = record
        self.finished = False

    @property
    def run_id(self) -> str:
        return self.record["run_id"]

    def stage(self, name: str, state: str, counts: dict[str, Any]) -> None:
        """Record (or overwrite) stage ``name`` with its state and counts."""
        stage(self.catalog, self.record, name, state, counts)

    def finish(self, state: str, summary: dict[str, Any]) -> None:
        """Mark the run ``state`` (``completed`` / ``failed``) with its summary."""
        finish(self.catalog, self.record, state, summary)
        self.finished = True


@contextlib.contextmanager
def recorded_run(
    catalog: DataCatalog, run_id: str, flow: str, ingest_date: str, parameters: dict[str, Any],
    *, resumes: str | None = None,
) -> Iterator[RunRecord]:
    """Keep a flow run's record: started on entry (with its heartbeat; ``resumes`` links a
    rerun to the run it finishes); on exit ``completed`` unless the body finished it itself;
    ``failed`` with ``{"error": ...}`` when the body raises first.

    The four flows (nightly ingest, retry, distill, retrain) all keep their records this way.
    """
    run = RunRecord(catalog, start(catalog, run_id, flow, ingest_date, parameters,
                                   resumes=resumes))
    try:
        yield run
    except BaseException as exc:
        if not run.finished:
            run.finish("failed", {"error": str(exc) or type(exc).__name__})
        raise
    if not run.finished:
        run.finish("completed", {})
