"""The Operations steps (docs/operations.md), followed literally by a new operator on an
empty catalog.

The commands are read from the ``bash`` blocks of docs/operations.md's numbered steps and
run as they are written there, in a checkout of this repository (a temp folder whose
``.venv``, ``omnifer``, ``flows``, ``tasks`` and ``deploy`` link here, with its own
``data_catalog.yaml``, so the
catalog starts empty, and ``demo/world`` a small seeded world). Only the server's port is
changed (4200 may be taken) and ``RUN_ID`` filled in. In README's order: a Prefect server,
the work pools, ``prefect deploy`` with ``OMNIFER_REPO`` exported in the deploying shell (the
deployment must not hold that path), a worker, a first model (train, register with its
figures, promote), a deployment run, which the test SIGKILLs; ``omnifer runs`` must show it
crashed, ``omnifer rerun`` by an id prefix finishes it, ``omnifer runs`` shows the crashed run
resumed by the rerun; then ``models promote`` and ``models rollback``.
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

from omnifer.catalog import DataCatalog, runs
from omnifer.config import load_catalog
from omnifer.models import versions

REPO = Path(__file__).resolve().parents[1]
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def readme_commands() -> list[str]:
    """Every command line of the ``bash`` blocks in README's Operations section
    (continuation lines joined, comments dropped)."""
    text = (REPO / "docs" / "operations.md").read_text()
    ops = text[: text.index("\n## Run reports\n")]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", ops, re.S):
        for line in re.sub(r"\\\n\s*", "", block).splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def readme(prefix: str, exact: bool = False) -> str:
    """The one README command that starts with (or is) ``prefix``."""
    found = {c for c in readme_commands() if (c == prefix if exact else c.startswith(prefix))}
    assert len(found) == 1, f"README's Operations must show one {prefix!r}: {sorted(found)}"
    return found.pop()


def test_readme_shows_the_operator_path() -> None:
    """The commands the slow test below runs are in README (fast: no server)."""
    for prefix in (".venv/bin/prefect server start", "deploy/create-pools.sh",
                   ".venv/bin/prefect --no-prompt deploy --all", "export OMNIFER_REPO=",
                   ".venv/bin/prefect deployment inspect", ".venv/bin/omnifer train",
                   ".venv/bin/omnifer models register demo/models/primitive-v1 --version v1 "
                   "--test-data", ".venv/bin/omnifer models promote v1",
                   ".venv/bin/prefect deployment run nightly-ingest/nightly-ingest --param",
                   ".venv/bin/omnifer rerun RUN_ID", ".venv/bin/omnifer models promote v2"):
        assert readme(prefix)
    for line in (".venv/bin/prefect worker start --pool cpu", ".venv/bin/omnifer runs",
                 ".venv/bin/omnifer models list", ".venv/bin/omnifer models rollback"):
        assert readme(line, exact=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> object:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read() or b"null")
    except OSError:
        return None


class Shell:
    """One operator's terminal: a working directory and the environment ``export`` builds."""

    def __init__(self, cwd: Path, env: dict[str, str], log_dir: Path) -> None:
        self.cwd, self.env, self.log_dir = cwd, env, log_dir
        self.background: list[subprocess.Popen] = []

    def export(self, line: str) -> None:
        assert line.startswith("export "), line
        out = subprocess.run(["bash", "-c", f"{line} && env -0"], cwd=self.cwd, env=self.env,
                             capture_output=True, check=True).stdout.decode()
        for item in out.split("\0"):
            key, sep, value = item.partition("=")
            if sep and key.startswith(("PREFECT_", "OMNIFER_")):
                self.env[key] = value

    def run(self, line: str, timeout: int = 240, ok: bool = True) -> str:
        proc = subprocess.run(["bash", "-c", line], cwd=self.cwd, env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0 or not ok, f"{line}\n{out[-3000:]}"
        return out

    def start(self, line: str, name: str) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "w")  # noqa: SIM115 - closed by the OS
        proc = subprocess.Popen(["bash", "-c", f"exec {line}"], cwd=self.cwd, env=self.env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.background.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text()[-4000:]

    def close(self) -> None:
        for proc in reversed(self.background):  # the worker, then the server
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait(timeout=30)


@pytest.fixture()
def checkout(tmp_path: Path, ops_world: Path) -> Path:
    """A checkout of this repository with an empty catalog and a demo world."""
    root = tmp_path / "omnifer"
    root.mkdir()
    for name in (".venv", "omnifer", "flows", "tasks", "deploy", "omnifer.yaml"):
        (root / name).symlink_to(REPO / name)
    shutil.copy(REPO / "data_catalog.yaml", root / "data_catalog.yaml")  # root: data/catalog
    (root / "demo").mkdir()
    (root / "demo" / "world").symlink_to(ops_world)
    return root


@pytest.fixture()
def shell(checkout: Path, tmp_path: Path, omnifer_home: Path) -> Iterator[Shell]:
    home = tmp_path / "prefect_home"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "OMNIFER_", "AWS_"))}
    env.update(HOME=str(tmp_path), PREFECT_HOME=str(home), DO_NOT_TRACK="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home}/prefect.db",
               PREFECT_SERVER_UI_ENABLED="false", PREFECT_UI_ENABLED="false",
               PREFECT_WORKER_QUERY_SECONDS="2", PREFECT_WORKER_PREFETCH_SECONDS="5",
               OMNIFER_HOME=str(omnifer_home), OMNIFER_PROGRESS="log", COLUMNS="250")
    sh = Shell(checkout, env, tmp_path)
    try:
        yield sh
    finally:
        sh.close()


def _table_row(out: str, run_id: str) -> list[str]:
    """The cells of ``omnifer runs``'s row for ``run_id``, wrapped lines joined per column."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if run_id in line)
    if "\t" in lines[start]:  # not a terminal: one tab-separated line per row (runtime.tables)
        return [cell.strip().replace("; ", " ") for cell in lines[start].split("\t")]
    columns: list[list[str]] = []
    for n, line in enumerate(lines[start:]):
        if (n and re.search(UUID, line)) or not line.startswith("│"):
            break
        for i, cell in enumerate(line.strip("│").split("│")):
            if i == len(columns):
                columns.append([])
            if cell.strip():
                columns[i].append(cell.strip())
    return [" ".join(c) for c in columns]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_readme_operations_on_an_empty_catalog(shell: Shell, checkout: Path,
                                               tmp_path: Path) -> None:
    port = str(_free_port())
    catalog = DataCatalog(load_catalog(checkout / "data_catalog.yaml"))
    assert catalog.catalog.root == str(checkout / "data" / "catalog")

    # 2. A local Prefect server (README's port is the one thing changed).
    server = shell.start(readme(".venv/bin/prefect server start").replace("4200", port),
                         "server")
    shell.export(readme("export PREFECT_API_URL=").replace("4200", port))
    api = shell.env["PREFECT_API_URL"]
    deadline = time.monotonic() + 150
    while _get(f"{api}/health") is not True:
        assert server.poll() is None and time.monotonic() < deadline, shell.log("server")
        time.sleep(0.5)

    # 3. Pools and deployments, deployed from a shell that exports OMNIFER_REPO (step 4).
    shell.export(readme("export OMNIFER_REPO="))
    assert shell.env["OMNIFER_REPO"] == str(checkout)
    shell.run(readme("deploy/create-pools.sh"))
    shell.run(readme(".venv/bin/prefect --no-prompt deploy --all"), timeout=300)
    assert "nightly-ingest" in shell.run(readme(".venv/bin/prefect deployment ls"))
    spec = shell.run(readme(".venv/bin/prefect deployment inspect"))
    assert "flows.pull.enter_checkout" in spec and "OMNIFER_REPO" in spec
    for path in (str(checkout), str(REPO), str(tmp_path)):  # no machine path baked in
        assert path not in spec, spec

    # 4. A worker.
    worker = shell.start(readme(".venv/bin/prefect worker start --pool cpu", exact=True),
                         "worker")

    # 5. A first model, registered with its figures and promoted.
    shell.run(readme(".venv/bin/omnifer train"), timeout=300)
    out = shell.run(readme(".venv/bin/omnifer models register demo/models/primitive-v1 "
                           "--version v1 --test-data"), timeout=300)
    assert "registered v1" in out and "test accuracy" in out
    shell.run(readme(".venv/bin/omnifer models promote v1"))
    listing = shell.run(readme(".venv/bin/omnifer models list", exact=True))
    assert listing.strip().splitlines()[-1] == "primitive model: v1"
    assert "(test)" in listing

    # 6. A deployment run, killed with SIGKILL while it works.
    out = shell.run(readme(".venv/bin/prefect deployment run nightly-ingest/nightly-ingest "
                           "--param"))
    (run_id,) = re.findall(rf"UUID: ({UUID})", out) or [out]
    deadline = time.monotonic() + 240
    record = None
    while not (record and record.get("pid")):
        assert worker.poll() is None and time.monotonic() < deadline, shell.log("worker")
        time.sleep(0.1)
        record = runs.get_run(catalog, run_id)
    assert record["state"] == "running"
    os.kill(record["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while (_get(f"{api}/flow_runs/{run_id}") or {}).get("state", {}).get("type") != "CRASHED":
        assert time.monotonic() < deadline, shell.log("worker")
        time.sleep(0.5)
    assert runs.get_run(catalog, run_id)["state"] == "running"  # the record could not end

    # 7./8. `omnifer runs` tells the truth; `omnifer rerun` by an id prefix finishes the night.
    runs_cmd = readme(".venv/bin/omnifer runs", exact=True)
    assert _table_row(shell.run(runs_cmd), run_id)[3] == "crashed"  # the state column
    out = " ".join(shell.run(readme(".venv/bin/omnifer rerun RUN_ID")
                             .replace("RUN_ID", run_id[:8]), timeout=400).split())
    assert f"run {run_id} crashed" in out, out
    done = re.search(rf"rerun of {run_id} as ({UUID}): (\d+) committed shard\(s\) skipped, "
                     r"(\d+) ran again, 0 failed", out)
    assert done and int(done.group(2)) + int(done.group(3)) >= 1, out
    new_id = done.group(1)
    table = shell.run(runs_cmd)
    old_row, new_row = _table_row(table, run_id), _table_row(table, new_id)
    assert old_row[3] == f"crashed resumed by {new_id[:8]}", old_row
    assert new_row[3] == f"completed resumes {run_id[:8]}", new_row
    old, new = runs.get_run(catalog, run_id), runs.get_run(catalog, new_id)
    assert old["state"] == "crashed" and old["resumed_by"] == new_id
    assert new["resumes"] == run_id and new["ingest_date"] == old["ingest_date"]
    # Every source file is one row, once.
    n_files = sum(1 for p in (checkout / "demo" / "world" / "unlabeled").rglob("*")
                  if p.is_file())
    con = catalog.connect()
    assert con.execute("SELECT count(*), count(DISTINCT source_uri) FROM images"
                       ).fetchone() == (n_files, n_files)
    # The night's report draws the registered model's figures.
    report = Path(new["stages"]["report"]["uri"]).read_text()
    assert "no confusion matrix is recorded" not in report

    # Model versions: promote another one, roll back to v1.
    versions.register_version(catalog, checkout / "demo" / "models" / "primitive-v1", "v2",
                            metrics={})  # a second checkpoint, as `omnifer retrain` would add
    shell.run(readme(".venv/bin/omnifer models promote v2"))
    assert versions.primitive_model(catalog)[0] == "v2"
    out = shell.run(readme(".venv/bin/omnifer models rollback", exact=True))
    assert "rolled back from v2 to v1" in " ".join(out.split())
    listing = shell.run(readme(".venv/bin/omnifer models list", exact=True))
    assert listing.strip().splitlines()[-1] == "primitive model: v1"
    assert "rolled back" in listing
