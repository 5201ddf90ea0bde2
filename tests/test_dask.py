"""Shards on Dask for real: a Prefect server, a LocalCluster of two worker processes on
127.0.0.1, the sources and the catalog on moto's S3 server.

The nightly flow with ``task_runner="dask"`` must give exactly the rows of the same night run
with threads; a Dask worker SIGKILLed mid-shard, then a rerun, must too. The world holds copies
of scenes from eight shards under other names, so that shards on the two processes meet the
same bytes (one of each pair ends ``ok``, the other ``duplicate``, never two rows per face).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from omnifer.testing.faults import (
    catalog_rows,
    compare_rows,
    duplicate_keys,
    make_catalog,
    promote_tiny_model,
)

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(REPO / ".venv" / "bin" / "prefect")
DATE = "2026-12-03"
BUCKET_RAW, BUCKET_LAKE = "dask-raw", "dask-lake"
SOURCE = f"s3://{BUCKET_RAW}/night"
COPIES = 8  # scenes of 8 shards uploaded twice: as themselves and under copies/ (last)
CLEAN = {"lost": 0, "duplicated": 0, "changed": 0}

pytest.importorskip("prefect_dask", reason="the dask extra: pip install -e '.[dask]'")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _api(url: str, body: dict | None = None) -> dict | list | None:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")
    except OSError:
        return None


@pytest.fixture(scope="module")
def dask_env(tmp_path_factory: pytest.TempPathFactory, s3_server: str, omnifer_home: Path,
             ) -> Iterator[dict[str, str]]:
    """A ``prefect server start`` on 127.0.0.1 and the environment the flow and the Dask
    workers share (S3 endpoint, PREFECT_HOME); yields the API URL and endpoint."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    tmp = tmp_path_factory.mktemp("dask_prefect")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(HOME=str(tmp), PREFECT_HOME=str(tmp / "home"), DO_NOT_TRACK="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false",
               PREFECT_SERVER_UI_ENABLED="false",
               PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{tmp}/prefect.db")
    log = open(tmp / "server.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port",
                               str(port)], env=env, cwd=tmp, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 150
        while _api(f"{api}/health") is not True:
            assert server.poll() is None, (tmp / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "Prefect server not healthy in 150 s"
            time.sleep(0.5)
        with pytest.MonkeyPatch.context() as mp:
            # Inherited by the Dask worker processes, which are started after this.
            mp.setenv("OMNIFER_S3_ENDPOINT_URL", s3_server)
            mp.setenv("AWS_ENDPOINT_URL", s3_server)
            mp.setenv("PREFECT_API_URL", api)
            mp.setenv("PREFECT_HOME", str(tmp / "client"))
            with temporary_settings(updates={PREFECT_API_URL: api}):
                yield {"api": api, "s3": s3_server}
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def cluster(dask_env: dict[str, str]) -> Iterator[object]:
    """A LocalCluster of two worker processes (one thread each) on 127.0.0.1, warmed up."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as lc, Client(lc) as client:
        client.run(__import__, "tasks.ingest")  # imports only; models load on first shard
        yield lc


@pytest.fixture(scope="module")
def night(dask_env: dict[str, str], small_world: Path) -> tuple[int, list[tuple[str, str]]]:
    """The world's scenes in a bucket, plus COPIES of them under ``copies/``; returns the
    object count and the (original, copy) URI pairs."""
    s3 = boto3.client("s3", endpoint_url=dask_env["s3"], region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET_RAW)
    s3.create_bucket(Bucket=BUCKET_LAKE)
    unlabeled = small_world / "unlabeled"
    files = sorted(p for p in unlabeled.rglob("*") if p.is_file())
    pairs = []
    for path in files:
        s3.upload_file(str(path), BUCKET_RAW, f"night/{path.relative_to(unlabeled)}")
    for i, path in enumerate(files[::5][:COPIES]):  # one from each of 8 shards
        key = f"night/copies/copy-{i}{path.suffix}"
        s3.upload_file(str(path), BUCKET_RAW, key)
        pairs.append((f"{SOURCE}/{path.relative_to(unlabeled)}", f"s3://{BUCKET_RAW}/{key}"))
    return len(files) + COPIES, pairs


def _catalog(tmp_path: Path, name: str):
    catalog, path = make_catalog(tmp_path, name, data_root=f"s3://{BUCKET_LAKE}/{name}")
    promote_tiny_model(catalog, tmp_path / f"model-{name}")
    return catalog, path


def _run(cat_path: Path, **kwargs):
    from flows.ingest import nightly_ingest

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMNIFER_CATALOG", str(cat_path))
        return nightly_ingest(date=DATE, sources=[SOURCE], shard_size=4, workers=2,
                              return_state=True, **kwargs)


def _rows(catalog, pairs: list[tuple[str, str]]) -> dict[str, list[tuple]]:
    """Rows of the night minus the pairs' image rows (which copy wins is a race, for threads
    too), after checking that each pair has one ``ok``/``no_face`` row and one duplicate."""
    rows = catalog_rows(catalog)
    status = {r[0]: r[2] for r in rows["images"]}
    for uris in pairs:
        assert sorted(status[u] == "duplicate" for u in uris) == [False, True], \
            {u: status[u] for u in uris}
    skip = {u for p in pairs for u in p}
    rows["images"] = [r for r in rows["images"] if r[0] not in skip]
    return rows


@pytest.fixture(scope="module")
def threads_rows(dask_env, night, tmp_path_factory: pytest.TempPathFactory):
    """The reference: the same night with the thread runner."""
    tmp = tmp_path_factory.mktemp("threads")
    catalog, path = _catalog(tmp, "threads")
    state = _run(path, task_runner="threads")
    assert state.is_completed(), state.message
    assert duplicate_keys(catalog) == {"images": 0, "faces": 0, "scores": 0}
    rows = _rows(catalog, night[1])
    assert len(rows["images"]) == night[0] - 2 * COPIES and rows["faces"]
    return rows


def _flow_logs(api: str, flow_run_id: str, want: int, timeout: float = 60) -> list[str]:
    """The flow run's log messages, once ``want`` shard lines have arrived (workers send
    their logs to the API in batches)."""
    deadline = time.monotonic() + timeout
    while True:
        logs = _api(f"{api}/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}},
                                           "limit": 200}) or []
        messages = [entry["message"] for entry in logs]
        if sum(" images, " in m for m in messages) >= want or time.monotonic() > deadline:
            return messages


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_nightly_flow_on_a_dask_cluster_gives_the_rows_of_the_thread_runner(
    dask_env, cluster, night, threads_rows, tmp_path: Path
) -> None:
    catalog, path = _catalog(tmp_path, "dask")
    state = _run(path, task_runner="dask", dask_address=cluster.scheduler_address)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["images"] == night[0] and summary["failed_shards"] == []

    assert _rows(catalog, night[1]) == threads_rows
    assert compare_rows(threads_rows, _rows(catalog, night[1])) == CLEAN
    assert duplicate_keys(catalog) == {"images": 0, "faces": 0, "scores": 0}

    # The shards ran in both worker processes, not here; each process loaded the model once
    # for all its shards; and their log lines reached the flow run.
    n_shards = -(-night[0] // 4)
    messages = _flow_logs(dask_env["api"], summary["run_id"], n_shards)
    shard_pids = Counter(m.rsplit("(pid ", 1)[1].rstrip(")") for m in messages
                         if " images, " in m and "(pid " in m)
    assert sum(shard_pids.values()) == n_shards, messages
    assert len(shard_pids) == 2 and str(os.getpid()) not in shard_pids
    loads = Counter(m.rsplit(" ", 1)[1] for m in messages if "loaded model v1 in process" in m)
    assert loads == {pid: 1 for pid in shard_pids}, (loads, shard_pids)
    # Some original and its copy were in shards of different processes (what needs the
    # claims in the catalog): else this test did not test that.
    pid_of = {m.split("shard ", 1)[1].split(":")[0]: m.rsplit("(pid ", 1)[1].rstrip(")")
              for m in messages if " images, " in m and "(pid " in m}
    shard_of = dict(catalog.connect().execute("SELECT source_uri, shard_id FROM images")
                    .fetchall())
    assert any(pid_of[shard_of[a]] != pid_of[shard_of[b]] for a, b in night[1]), pid_of
    assert any("shards run on Dask: scheduler" in m and "2 worker(s)" in m for m in messages)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_dask_worker_killed_mid_shard_then_a_rerun_gives_the_clean_rows(
    dask_env, cluster, night, threads_rows, tmp_path: Path
) -> None:
    from distributed import Client

    catalog, path = _catalog(tmp_path, "killed")
    killed: dict[str, object] = {}
    stop = threading.Event()

    def kill_a_busy_worker() -> None:
        # Once one shard has committed, SIGKILL a worker process while a shard runs on it.
        with Client(cluster.scheduler_address) as client:
            deadline = time.monotonic() + 300
            while not stop.is_set() and time.monotonic() < deadline:
                committed = catalog.read("images").num_rows
                busy = [w for w, keys in client.processing().items() if keys]
                if committed and busy:
                    pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
                    os.kill(pid, signal.SIGKILL)
                    killed.update(pid=pid, committed=committed)
                    return
                time.sleep(0.05)

    killer = threading.Thread(target=kill_a_busy_worker, daemon=True)
    killer.start()
    first = _run(path, task_runner="dask", dask_address=cluster.scheduler_address)
    stop.set()
    killer.join(timeout=30)
    assert killed, "no worker was killed: the run ended before a shard ran after the first"
    with pytest.raises(ProcessLookupError):
        os.kill(int(killed["pid"]), 0)  # really gone
    # Dask gave the lost shard to a live worker (or the run failed it): either way the
    # other shards committed, and a rerun finishes what is missing.
    if not first.is_completed():
        assert "shard(s) failed" in str(first.message)
    again = _run(path, task_runner="dask", dask_address=cluster.scheduler_address)
    assert again.is_completed(), again.message

    assert compare_rows(threads_rows, _rows(catalog, night[1])) == CLEAN
    assert duplicate_keys(catalog) == {"images": 0, "faces": 0, "scores": 0}
    with Client(cluster.scheduler_address) as client:
        # The nanny replaces the killed worker, but in its own time: a new process that
        # imports the worker's modules, which on a loaded 2-core machine outlasts the rerun.
        client.wait_for_workers(n_workers=2, timeout=180)
        assert len(client.scheduler_info()["workers"]) == 2
        assert killed["pid"] not in client.run(os.getpid).values()


@pytest.mark.slow  # the check is quick, the module's server and cluster are not
def test_a_worker_that_does_not_see_a_local_catalog_fails_its_shard_in_one_line(
    cluster, tmp_path: Path
) -> None:
    """The check every shard task makes first on a Dask worker, run on one."""
    from distributed import Client

    from omnifer.errors import StorageError
    from tasks.worker import check_catalog_visible

    catalog, _ = make_catalog(tmp_path, "elsewhere",
                              data_root=str(tmp_path / "only-on-the-flow-machine"))
    with Client(cluster.scheduler_address) as client:
        fut = client.submit(check_catalog_visible, catalog, "run-1", "Dask worker W", pure=False)
        with pytest.raises(StorageError) as err:
            fut.result(timeout=60)
    text = str(err.value)
    assert "\n" not in text
    assert f"does not see the catalog at {tmp_path / 'only-on-the-flow-machine'}" in text
    assert "every worker mounts" in text


@pytest.mark.parametrize("case", ["no-extra", "no-server"])
def test_dask_without_its_extra_or_a_prefect_server_is_one_line(
    case: str, tmp_path: Path, catalog_file: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(HOME=str(tmp_path), PREFECT_HOME=str(tmp_path / "prefect"))
    if case == "no-extra":  # what a machine without the extra sees: the import fails
        shadow = tmp_path / "shadow" / "prefect_dask"
        shadow.mkdir(parents=True)
        (shadow / "__init__.py").write_text(
            "raise ImportError(\"No module named 'prefect_dask'\", name='prefect_dask')\n")
        env["PYTHONPATH"] = str(shadow.parent)
        env["PREFECT_API_URL"] = "http://127.0.0.1:9/api"
    proc = subprocess.run([sys.executable, "-m", "omnifer", "ingest", "--source",
                           str(tmp_path), "--dask", "local"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    if case == "no-extra":
        assert "pip install -e '.[dask]'" in err
    else:
        assert "prefect server start --host 127.0.0.1" in err and "PREFECT_API_URL" in err
