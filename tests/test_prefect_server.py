"""The deployment path for real: a Prefect server, work pools, a process worker, a deployment.

What an operator does after ``make demo`` (docs/operations.md), run as it is written there:
``prefect server start`` on 127.0.0.1 with its own PREFECT_HOME (SQLite in a temp folder),
``deploy/create-pools.sh``, ``prefect deploy`` from ``deploy/prefect.yaml``, ``prefect worker
start``, ``prefect deployment run``; then the flow run must reach COMPLETED on the server and
its rows must be in the catalog. A second run fails a shard on purpose (a folder where its
Parquet file must go); ``omnifer rerun`` against the same server finishes only that shard.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from omnifer.catalog import DataCatalog, runs
from omnifer.config import load_catalog, load_settings
from omnifer.models import versions
from omnifer.pipeline import ingest
from omnifer.sources import parse_source

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"
PREFECT = str(BIN / "prefect") if (BIN / "prefect").exists() else "prefect"
OMNIFER = str(BIN / "omnifer") if (BIN / "omnifer").exists() else "omnifer"
DATE = "2026-12-01"
DATE2 = "2026-12-02"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> dict | list | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read() or b"null")
    except OSError:
        return None


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the process group: a worker ignores SIGINT once its server is gone."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


@pytest.fixture()
def prefect_server(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A real ``prefect server start`` on a free 127.0.0.1 port; yields the environment that
    points the CLI, the worker and its flow runs at it."""
    port = _free_port()
    home = tmp_path / "prefect_home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        HOME=str(tmp_path), PREFECT_HOME=str(home), DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home}/prefect.db",
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_UI_ENABLED="false", PREFECT_UI_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="2", PREFECT_WORKER_PREFETCH_SECONDS="5",
    )
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed in finally
    server = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 150
        while _get(f"http://127.0.0.1:{port}/api/health") is not True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "server not healthy in 150 s"
            time.sleep(0.5)
        yield env
    finally:
        _kill(server)
        log.close()


def _run(cmd: list[str], env: dict[str, str], timeout: int = 120) -> str:
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    return proc.stdout + proc.stderr


def _wait_final(api: str, flow_run_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = _get(f"{api}/flow_runs/{flow_run_id}")
        if run and run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(1)
    raise AssertionError(f"flow run {flow_run_id} not finished in {timeout} s: {run}")


def _deployment_run(env: dict[str, str], params: dict) -> str:
    out = _run([PREFECT, "deployment", "run", "nightly-ingest/nightly-ingest",
                "--params", json.dumps(params)], env)
    match = re.search(r"UUID: ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})",
                      out)
    assert match, out
    return match.group(1)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_deployment_on_a_local_server_runs_and_a_failed_run_is_finished_by_rerun(
    prefect_server: dict[str, str], ops_world: Path, ops_model: Path, omnifer_home: Path,
    tmp_path: Path,
) -> None:
    env = dict(prefect_server)
    api = env["PREFECT_API_URL"]
    raw = yaml.safe_load((REPO / "data_catalog.yaml").read_text())
    raw["root"] = str(tmp_path / "catalog")
    cat_path = tmp_path / "data_catalog.yaml"
    cat_path.write_text(yaml.safe_dump(raw))
    catalog = DataCatalog(load_catalog(cat_path))
    versions.register_version(catalog, ops_model, "v1", metrics={"accuracy": 0.5})
    versions.record_event(catalog, "v1", "promoted", {"accuracy": 0.5})
    env.update(OMNIFER_CATALOG=str(cat_path), OMNIFER_HOME=str(omnifer_home),
               OMNIFER_REPO=str(REPO), OMNIFER_PROGRESS="log")
    env.pop("OMNIFER_CATALOG_ROOT", None)

    # The operator's steps, as docs/operations.md writes them.
    out = _run(["bash", "deploy/create-pools.sh"], {**env, "PREFECT": PREFECT})
    assert "cpu" in out
    _run(["bash", "deploy/create-pools.sh"], {**env, "PREFECT": PREFECT})  # idempotent
    out = _run([PREFECT, "--no-prompt", "deploy", "--prefect-file", "deploy/prefect.yaml",
                "--name", "nightly-ingest"], env, timeout=180)
    deployment = _get(f"{api}/deployments/name/nightly-ingest/nightly-ingest")
    assert deployment and deployment["work_pool_name"] == "cpu", out
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 2 * * *"]

    # Two batches of new scenes: one for a clean night, one for a night that fails a shard.
    files = sorted(p for p in (ops_world / "unlabeled").rglob("*") if p.is_file())
    batches = [tmp_path / "night1", tmp_path / "night2"]
    for i, path in enumerate(files):
        dest = batches[i % 2] / path.relative_to(ops_world / "unlabeled")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)

    worker_log = open(tmp_path / "worker.log", "w")  # noqa: SIM115 - closed in finally
    worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "cpu"], env=env,
                              cwd=tmp_path, stdout=worker_log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        params = {"date": DATE, "sources": [str(batches[0])], "shard_size": 8, "workers": 2}
        run_id = _deployment_run(env, params)
        run = _wait_final(api, run_id, timeout=240)
        assert run["state"]["type"] == "COMPLETED", (tmp_path / "worker.log").read_text()[-4000:]
        record = runs.get_run(catalog, run_id)
        assert record and record["state"] == "completed" and record["ingest_date"] == DATE
        con = catalog.connect()
        n_files = sum(1 for p in batches[0].rglob("*") if p.is_file())
        assert con.execute("SELECT count(*) FROM images").fetchone()[0] == n_files
        assert con.execute("SELECT count(DISTINCT run_id) FROM faces").fetchone() == (1,)
        assert con.execute("SELECT any_value(run_id) FROM faces").fetchone() == (run_id,)
        faces = con.execute("SELECT count(*) FROM faces").fetchone()[0]
        assert faces > 0 and record["summary"]["faces"] == faces

        # Night 2: plan it as the flow will (to know the shard ids), block one shard's commit.
        settings = load_settings()
        version, uri = versions.primitive_model(catalog)
        plan = ingest.plan_ingest(
            catalog, [parse_source(str(batches[1]))], DATE2,
            ingest.IngestParams(**settings.ingest.model_dump(exclude={"shard_size", "workers"}),
                                model_version=version, model_uri=uri), shard_size=4)
        assert len(plan.shards) == 3
        doomed = plan.shards[1].shard_id
        obstacle = Path(catalog.file_uri("faces", f"part-{doomed}.parquet", ingest_date=DATE2))
        obstacle.mkdir(parents=True)
        params = {"date": DATE2, "sources": [str(batches[1])], "shard_size": 4, "workers": 2}
        failed_id = _deployment_run(env, params)
        run = _wait_final(api, failed_id, timeout=240)
        assert run["state"]["type"] == "FAILED", (tmp_path / "worker.log").read_text()[-4000:]
        record = runs.get_run(catalog, failed_id)
        assert record["stages"]["shards"]["failed_ids"] == [doomed]
        assert record["summary"]["plan_id"] == plan.plan_id

        obstacle.rmdir()  # the fix; then the operator's rerun, against the same server
        out = _run([OMNIFER, "rerun", failed_id], {**env, "COLUMNS": "200"}, timeout=240)
        assert "2 committed shard(s) skipped, 1 ran again, 0 failed" in " ".join(out.split())
        (again,) = [r for r in runs.list_runs(catalog) if r["ingest_date"] == DATE2
                    and r["run_id"] != failed_id]
        assert again["state"] == "completed" and again["stages"]["shards"]["ran_ids"] == [doomed]
        assert _get(f"{api}/flow_runs/{again['run_id']}")["state"]["type"] == "COMPLETED"
        con = catalog.connect()
        run_of = dict(con.execute("SELECT shard_id, list(DISTINCT run_id) FROM images WHERE "
                                  "ingest_date = ? GROUP BY 1", [DATE2]).fetchall())
        assert run_of == {s.shard_id: [again["run_id"] if s.shard_id == doomed else failed_id]
                          for s in plan.shards}
        n2 = sum(1 for p in batches[1].rglob("*") if p.is_file())
        assert con.execute("SELECT count(*), count(DISTINCT source_uri) FROM images WHERE "
                           "ingest_date = ?", [DATE2]).fetchone() == (n2, n2)
    finally:
        _kill(worker)
        worker_log.close()
