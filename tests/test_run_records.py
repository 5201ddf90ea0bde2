"""Run records that tell the truth: crashed runs, runs that failed before writing a record, and
one run-id resolver for every command (issue 23).

A SIGKILLed process is real (a subprocess that writes its record and heartbeat, then is
killed); the flows run on Prefect's test server; the catalog is real files."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from omnifer.catalog import DataCatalog, runs
from omnifer.errors import DatasetError, OmniferError

REPO = Path(__file__).resolve().parents[1]
DATE = "2026-11-30"

_WRITER = """
import sys, time
from omnifer.catalog import runs
from omnifer.catalog import DataCatalog
from omnifer.config import load_catalog
catalog = DataCatalog(load_catalog(sys.argv[1]))
runs.start(catalog, sys.argv[2], "nightly-ingest", "2026-11-30", {"sources": ["/x"]},
           heartbeat_s=0.2)
print("started", flush=True)
time.sleep(300)
"""


def _cli(*args: str) -> tuple[int, str]:
    """(exit code, output or the one-line error) of ``omnifer ARGS`` in-process."""
    from omnifer.cli import app

    res = CliRunner().invoke(app, list(args))
    if isinstance(res.exception, OmniferError):
        return res.exception.exit_code, str(res.exception)
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    return res.exit_code, res.output


def _ended(catalog: DataCatalog, run_id: str, **extra: object) -> None:
    record = runs.start(catalog, run_id, "nightly-ingest", DATE, {"sources": ["/x"]})
    record.update(extra)
    runs.finish(catalog, record, "completed", {"ingest_date": DATE, "images": 0})


def test_a_sigkilled_run_shows_as_crashed(data_catalog: DataCatalog, catalog_file: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    run_id = "4c1d2e3f-0000-4000-8000-000000000001"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(catalog_file), run_id],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == "started"
        first = runs.get_run(data_catalog, run_id)
        assert first["pid"] == proc.pid and first["host"] == socket.gethostname()
        deadline = time.monotonic() + 20
        while runs.get_run(data_catalog, run_id)["heartbeat_at"] == first["heartbeat_at"]:
            assert time.monotonic() < deadline, "no heartbeat"
            time.sleep(0.05)
        code, out = _cli("runs")
        assert code == 0 and run_id in out and "running" in out and "crashed" not in out
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert runs.get_run(data_catalog, run_id)["state"] == "running"  # it could not say more
    code, out = _cli("runs")
    assert code == 0 and "crashed" in out and "running" not in out
    code, out = _cli("runs", run_id[:6])  # a unique prefix will do
    shown = json.loads(out)
    assert shown["run_id"] == run_id and shown["observed_state"] == "crashed"
    assert f"pid {proc.pid}" in shown["observed_because"]


def test_observe_prefect_state_heartbeat_and_a_reused_pid() -> None:
    now = dt.datetime(2026, 11, 30, 3, 0, tzinfo=dt.UTC)
    elsewhere = {"run_id": "r", "state": "running", "host": "another-machine", "pid": 1,
                 "heartbeat_s": 30, "heartbeat_at": (now - dt.timedelta(seconds=60)).isoformat()}
    assert runs.observe(elsewhere, now=now, stale_after_s=180)[0] == "running"
    assert runs.observe(elsewhere, "RUNNING", now=now, stale_after_s=180)[0] == "running"
    state, why = runs.observe(elsewhere, "CRASHED", now=now, stale_after_s=180)
    assert state == "crashed" and "CRASHED" in why
    assert runs.observe(elsewhere, "CANCELLED", now=now, stale_after_s=180)[0] == "cancelled"
    later = now + dt.timedelta(minutes=5)
    state, why = runs.observe(elsewhere, now=later, stale_after_s=180)
    assert state == "crashed" and "no heartbeat for 6 min" in why
    # Stale is never sooner than three heartbeats.
    slow = {**elsewhere, "heartbeat_s": 120}
    assert runs.observe(slow, now=later, stale_after_s=180)[0] == "running"
    # This very process is alive; the same pid with another start time is another process.
    here = {"run_id": "r", "state": "running", **runs._whereabouts()}
    assert runs.process_alive(here) is True
    assert runs.observe(here, now=later, stale_after_s=1)[0] == "running"
    assert runs.process_alive({**here, "pid_started": "1"}) is False
    assert runs.observe({**here, "state": "failed"}, "CRASHED") == ("failed", "")


def test_one_resolver_for_runs_rerun_and_report(data_catalog: DataCatalog,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    ids = ["aaaa1111-0000-4000-8000-000000000001", "aaaa2222-0000-4000-8000-000000000002",
           "bbbb3333-0000-4000-8000-000000000003"]
    for run_id in ids:
        _ended(data_catalog, run_id)
    assert runs.resolve_run(data_catalog, "bbbb")["run_id"] == ids[2]
    assert runs.resolve_run(data_catalog, ids[0])["run_id"] == ids[0]
    with pytest.raises(DatasetError, match="ambiguous: 2 runs start with it"):
        runs.resolve_run(data_catalog, "aaaa")

    for command in (["runs"], ["rerun"], ["report"]):
        code, err = _cli(*command, "aaaa")
        assert code == 4 and err.startswith("run id 'aaaa' is ambiguous: 2 runs start with it")
        assert "aaaa1111" in err and "aaaa2222" in err and "\n" not in err
        code, err = _cli(*command, "cccc")
        assert code == 4 and err.startswith("no run id starts with 'cccc'"), err
    # The unique prefix reaches the same record everywhere.
    code, out = _cli("runs", "aaaa2")
    assert code == 0 and json.loads(out)["run_id"] == ids[1]
    code, out = _cli("rerun", "bbbb")
    assert code == 0 and f"run {ids[2]} completed: nothing to rerun" in " ".join(out.split())


def test_a_run_that_fails_before_its_record_is_listed(
    prefect_harness, data_catalog: DataCatalog, ops_world: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows.ingest import nightly_ingest

    monkeypatch.setenv("COLUMNS", "250")
    config = tmp_path / "omnifer.yaml"
    config.write_text("ingest: {shard_size: 8}\n")  # no sources here
    monkeypatch.setenv("OMNIFER_CONFIG", str(config))
    monkeypatch.delenv("OMNIFER_SOURCES", raising=False)

    # No primitive model (an empty catalog): the run fails at once, and says what to run.
    state = nightly_ingest(date=DATE, sources=[str(ops_world / "unlabeled")],
                           return_state=True)
    assert state.is_failed()
    no_model = runs.get_run(data_catalog, str(state.state_details.flow_run_id))
    assert no_model["state"] == "failed" and no_model["ingest_date"] == DATE
    assert "'omnifer models register CHECKPOINT --version v1 --promote'" in no_model["error"]
    assert no_model["parameters"]["sources"] == [str(ops_world / "unlabeled")]

    # No sources anywhere: the message names every place a source can come from.
    state = nightly_ingest(date=DATE, return_state=True)
    assert state.is_failed()
    no_sources = runs.get_run(data_catalog, str(state.state_details.flow_run_id))
    assert no_sources["state"] == "failed"
    assert "omnifer.yaml" in no_sources["error"] and "OMNIFER_SOURCES" in no_sources["error"]

    code, out = _cli("runs")
    assert code == 0
    assert no_model["run_id"] in out and no_sources["run_id"] in out
    assert out.count("failed") >= 2 and out.count("error: ") >= 2, out
