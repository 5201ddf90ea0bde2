"""Fixed cost of a run: a one-image night, as a user runs it, broken down into its parts.

Usage::

    python benchmarks/fixed_cost.py [--repeats 3] [--port 4299] [--work demo/bench]
                                    [--baseline DIR] [--history FACES] [--kinds ...]

One demo-world scene with one face (rendered once under ``--work``) goes into a fresh
catalog (the benchmark's own, with the demo model promoted) through ``omnifer ingest
--source DIR --date D`` in a subprocess, timed from before the process starts to after it
ends, three ways:

* **temporary, fresh home**: no ``PREFECT_API_URL`` and an empty ``PREFECT_HOME``: Prefect
  creates its database, starts a temporary server for the run and stops it after (a first
  run on a new machine, or CI); one run;
* **temporary**: the same with that ``PREFECT_HOME`` again (what ``omnifer ingest`` costs
  day to day without a server);
* **running server**: ``PREFECT_API_URL`` pointing at ``prefect server start --host
  127.0.0.1`` started by this script beforehand (docs/operations.md §2): no temporary
  server to start or stop.

The subprocess runs the console script's own entry point, ``omnifer.cli.main``, after
importing in turn what ``omnifer ingest`` imports anyway (``omnifer.cli``; Prefect's modules;
torch; ``flows.ingest``), with a timestamp after each: the same work in the same process,
with the imports measured where they happen. The other parts come from the run's own log
lines (millisecond timestamps): Prefect's ``Starting temporary server``, ``Beginning flow
run``, ``Finished in state`` and ``Stopping temporary server``; the workers' ``[0.41 s] loaded
detector`` and ``[0.14 s] loaded model``; and the flow's closing ``night D took 3.10 s:
setup …, plan …`` (:class:`omnifer.runtime.timing.StepClock`). The shard's own seconds
(``process_shard``) come from its commit marker; the rest of the shard step is Prefect's
task machinery. Each cell is the median over ``--repeats`` runs.

``--history FACES``: the catalog is not empty but holds ``FACES`` faces of earlier nights
(``--history-nights`` of them, one compacted file per night and dataset as the flow leaves
them, generated once by ``benchmarks/queries.py``'s generator plus random face hashes): what
a night costs on a catalog that has grown (listing against ``images``, the content index,
near-duplicates against every earlier face, the report's history).

``--baseline DIR``: another checkout (e.g. ``git worktree add /tmp/base COMMIT``; it must log
the same timing lines), run the same way with ``PYTHONPATH=DIR``, interleaved run by run with
this one, in columns of its own.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from _common import DEFAULT_WORK, REPO, ensure_model, ensure_world, fresh_catalog, print_table

DATE = "2026-12-01"
LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (\w+) ([\w.]+): (.*)$")
NIGHT = re.compile(r"night \S+ took ([\d.]+) s: (.*)$")
STEP = re.compile(r"(\w[\w-]*) ([\d.]+) s")
LOADED = re.compile(r"^\[([\d.]+) s\] loaded (detector|model) ")
IMPORTED = re.compile(r"^FIXED-COST-IMPORTS (.*)$", re.M)
# What the console script runs (``from omnifer.cli import main; sys.exit(main())``), with the
# imports of ``omnifer ingest`` done first, one group at a time, and timed; logging is
# configured first, as main() does.
ENTRY = """
import sys, time
stamps = [time.time()]
from omnifer.cli import main
from omnifer.logs import configure_logging
configure_logging()  # main() does this first, before its command imports Prefect
stamps.append(time.time())
import prefect, prefect.artifacts, prefect.cache_policies, prefect.deployments
import prefect.runtime, prefect.task_runners
stamps.append(time.time())
import torch
stamps.append(time.time())
import flows.ingest
stamps.append(time.time())
sys.stderr.write("FIXED-COST-IMPORTS " + " ".join(map(repr, stamps)) + "\\n")
sys.argv = ["omnifer", *sys.argv[1:]]
sys.exit(main())
"""

# (row label, key, whose cost), in the order of a run.
ROWS = [
    ("Python start", "python", "Python"),
    ("imports: omnifer CLI (typer, rich, commands)", "import_cli", "omnifer"),
    ("imports: Prefect", "import_prefect", "Prefect"),
    ("imports: torch", "import_torch", "omnifer"),
    ("imports: rest of flows.ingest (cv2, pyarrow, duckdb, ...)", "import_flow", "omnifer"),
    ("Prefect: engine start (+ temporary server's code)", "prefect_before", "Prefect"),
    ("Prefect: temporary server start (+ database)", "server_start", "Prefect"),
    ("Prefect: flow run created, started and ended", "flow_engine", "Prefect"),
    ("flow setup (settings, catalog, model lookup, run record)", "setup", "omnifer"),
    ("plan (listing, plan file)", "plan", "omnifer"),
    ("shard: detector load", "detector", "omnifer"),
    ("shard: model load", "model", "omnifer"),
    ("shard: the image (read, decode, detect, score, write)", "shard_work", "omnifer"),
    ("Prefect: the shard's task (submit, states, logs)", "shard_task", "Prefect"),
    ("compaction", "compact", "omnifer"),
    ("near-duplicates", "dedup", "omnifer"),
    ("selection", "select", "omnifer"),
    ("summary (DuckDB) + retraining check", "summary_retrain", "omnifer"),
    ("report (HTML, charts)", "report", "omnifer"),
    ("Prefect: summary artifact", "artifact", "Prefect"),
    ("exit (CLI output, Python's teardown)", "exit", "Python"),
    ("Prefect: temporary server stop (+ Python's teardown)", "server_stop", "Prefect"),
]
WHO = ("omnifer", "Prefect", "Python")
KINDS = ("temporary, fresh home", "temporary", "running server")


def one_face_scene(world: Path) -> Path:
    """The first scene of the world (by path) that holds exactly one true face."""
    from omnifer.demo.truth import load_truth

    counts: dict[str, int] = {}
    for row in load_truth(world).to_pylist():
        counts[row["relpath"]] = counts.get(row["relpath"], 0) + 1
    rel = min(r for r, n in counts.items() if n == 1)
    return world / "unlabeled" / rel


def history_template(work: Path, faces: int, nights: int) -> Path:
    """A catalog folder with ``faces`` faces over ``nights`` earlier nights (images, faces
    with face hashes, scores; one file per night and dataset), generated once."""
    import numpy as np
    import pyarrow as pa
    from queries import _night

    root = work / f"history-{faces}-{nights}"
    if (root / "done").exists():
        return root / "catalog"
    catalog = fresh_catalog(root)
    rng = np.random.default_rng(11)
    t = time.monotonic()
    for k in range(nights):
        date = (dt.date(2026, 11, 30) - dt.timedelta(days=nights - k)).isoformat()
        n = faces // nights + (1 if k < faces % nights else 0)
        tables = _night(rng, date, n, f"history-{k:03d}")
        hashes = pa.array([bytes(b) for b in rng.integers(0, 256, (n, 32), np.uint8)],
                          pa.binary(32))
        tables["faces"] = tables["faces"].append_column("face_hash", hashes)
        for name in ("images", "faces", "scores"):
            catalog.write(name, "part-history.parquet", tables[name], ingest_date=date)
    (root / "done").write_text("")
    print(f"generated {faces} faces of history over {nights} nights in "
          f"{time.monotonic() - t:.0f} s", flush=True)
    return root / "catalog"


def checkout_env(checkout: Path) -> dict[str, str]:
    """The environment that makes ``python`` import omnifer, flows and tasks from
    ``checkout`` (ahead of the editable install's finder, which comes last)."""
    return {**os.environ, "PYTHONPATH": str(checkout)} if checkout != REPO else {**os.environ}


def parse_run(log: str, t0: float, t1: float, shard_seconds: float) -> dict[str, float]:
    """The parts of one run (seconds) from its log lines; see the module docstring."""
    found = IMPORTED.search(log)
    if found is None:
        raise SystemExit(f"the run printed no import timestamps:\n{log}")
    s = [float(x) for x in found.group(1).split()]
    out = {"python": s[0] - t0, "import_cli": s[1] - s[0], "import_prefect": s[2] - s[1],
           "import_torch": s[3] - s[2], "import_flow": s[4] - s[3]}
    marks: dict[str, float] = {}
    steps: dict[str, float] = {}
    loads = {"detector": 0.0, "model": 0.0}
    night_total = None
    for line in log.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        when = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        name, msg = m.group(3), m.group(4)
        if msg.startswith("Starting temporary server"):
            marks["server_start"] = when
        elif msg.startswith("Stopping temporary server"):
            marks["server_stop"] = when
        elif name == "prefect.flow_runs" and msg.startswith("Beginning flow run"):
            marks.setdefault("flow_begin", when)
        elif name == "prefect.flow_runs" and msg.startswith("Finished in state"):
            marks["flow_end"] = when
        elif (lm := LOADED.match(msg)) is not None:
            loads[lm.group(2)] += float(lm.group(1))
        elif name == "prefect.flow_runs" and (nm := NIGHT.search(msg)) is not None:
            night_total = float(nm.group(1))
            steps = {k: float(v) for k, v in STEP.findall(nm.group(2))}
    missing = [k for k in ("flow_begin", "flow_end") if k not in marks]
    if missing or night_total is None:
        raise SystemExit(f"the run's log lacks {missing or 'the night timing line'}:\n{log}")
    started = marks.get("server_start", marks["flow_begin"])
    stopped = marks.get("server_stop", t1)  # atexit: the server stops before the teardown
    out["prefect_before"] = started - s[4]
    out["server_start"] = marks["flow_begin"] - started
    out["flow_engine"] = marks["flow_end"] - marks["flow_begin"] - night_total
    out["exit"] = stopped - marks["flow_end"] if "server_stop" in marks else t1 - marks["flow_end"]
    out["server_stop"] = t1 - stopped
    out.update({k: steps.get(k, 0.0) for k in ("setup", "plan", "compact", "dedup", "select",
                                              "report", "artifact")})
    out.update(loads)
    out["shard_work"] = shard_seconds - loads["detector"] - loads["model"]
    out["shard_task"] = steps.get("shards", 0.0) - shard_seconds
    out["summary_retrain"] = steps.get("summary", 0.0) + steps.get("retrain", 0.0)
    out["total"] = t1 - t0
    return out


def run_night(checkout: Path, root: Path, model: Path, source: Path, env: dict[str, str],
              history: Path | None = None) -> dict[str, float]:
    """``omnifer ingest`` of ``source`` into a fresh catalog under ``root`` (holding the
    ``history`` catalog's files when given); its parts."""
    from omnifer import storage
    from omnifer.catalog.plans import ShardResult

    catalog = fresh_catalog(root, model)  # sets OMNIFER_CATALOG in os.environ
    if history is not None:
        shutil.copytree(history, root / "catalog", dirs_exist_ok=True)
    args = ["ingest", "--source", str(source), "--date", DATE]
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", ENTRY, *args], cwd=checkout,
                          env={**checkout_env(checkout), **env}, capture_output=True, text=True)
    t1 = time.time()
    log = proc.stderr + proc.stdout
    if proc.returncode != 0:
        raise SystemExit(f"omnifer ingest failed ({proc.returncode}):\n{log}")
    markers = storage.list_files(catalog.shard_markers_uri(DATE), ".json")
    shard_seconds = sum(ShardResult.model_validate_json(storage.read_bytes(m)).seconds
                        for m in markers)
    shutil.rmtree(root)  # with --history, each run's copy is hundreds of MB
    return parse_run(log, t0, t1, shard_seconds)


def start_server(home: Path, port: int) -> tuple[subprocess.Popen[bytes], float]:
    """``prefect server start`` on 127.0.0.1:``port`` with its own home; the seconds until
    its API answered /health."""
    prefect = Path(sys.executable).with_name("prefect")
    env = {**os.environ, "PREFECT_HOME": str(home)}
    t = time.perf_counter()
    proc = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port",
                             str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api/health"
    while time.perf_counter() - t < 180:
        if proc.poll() is not None:
            raise SystemExit(f"prefect server start exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return proc, time.perf_counter() - t
        except OSError:
            time.sleep(0.2)
    stop_server(proc)
    raise SystemExit("the Prefect server did not answer within 180 s")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group (it was started in a session of its own)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def load() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="runs per column (median)")
    ap.add_argument("--port", type=int, default=4299, help="port of the running server")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--baseline", type=Path, default=None,
                    help="another checkout to run side by side (see the module docstring)")
    ap.add_argument("--history", type=int, default=0, help="faces of earlier nights")
    ap.add_argument("--history-nights", type=int, default=30)
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS,
                    help="which ways to run (default: all three)")
    args = ap.parse_args()
    work = args.work / "fixed-cost"
    work.mkdir(parents=True, exist_ok=True)
    model = ensure_model(args.work)
    scene = one_face_scene(ensure_world(args.work, 40))
    source = work / "source"
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir()
    shutil.copy(scene, source / scene.name)
    quiet = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
             "PREFECT_LOGGING_LEVEL": "INFO", "OMNIFER_LOG_LEVEL": "INFO",
             "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
    for key in ("PREFECT_API_URL", "PREFECT_PROFILE"):
        os.environ.pop(key, None)
    print(f"one-image night: {scene.relative_to(REPO) if scene.is_relative_to(REPO) else scene}"
          f"\nload average before: {load()} ({os.cpu_count()} cores)", flush=True)

    checkouts = {"": REPO}
    if args.baseline is not None:
        checkouts = {"base: ": args.baseline.resolve(), "": REPO}
    history = history_template(work, args.history, args.history_nights) if args.history else None
    kinds = [k for k in KINDS if k in args.kinds]
    columns: dict[str, list[dict[str, float]]] = {t + k: [] for k in kinds for t in checkouts}

    def night(kind: str, tag: str, r: int, env: dict[str, str]) -> None:
        slug = f"{kind.split(',')[0].replace(' ', '-')}{'-base' if tag else ''}-{r}"
        parts = run_night(checkouts[tag], work / f"catalog-{slug}", model, source, env, history)
        columns[tag + kind].append(parts)
        print(f"  {tag}{kind}, run {r + 1}: {parts['total']:.1f} s", flush=True)

    if KINDS[0] in kinds:
        for tag in checkouts:
            home = work / f"prefect-home-fresh{'-base' if tag else ''}"
            shutil.rmtree(home, ignore_errors=True)
            night(KINDS[0], tag, 0, {**quiet, "PREFECT_HOME": str(home)})
    if KINDS[1] in kinds:
        temp_home = work / "prefect-home-fresh"  # warm once a run has created its database
        for r in range(args.repeats):
            for tag in checkouts:
                night(KINDS[1], tag, r, {**quiet, "PREFECT_HOME": str(temp_home)})
    server_s = None
    if KINDS[2] in kinds:
        server_home = work / "prefect-home-server"
        shutil.rmtree(server_home, ignore_errors=True)
        server, server_s = start_server(server_home, args.port)
        try:
            env = {**quiet, "PREFECT_HOME": str(server_home),
                   "PREFECT_API_URL": f"http://127.0.0.1:{args.port}/api"}
            for r in range(args.repeats):
                for tag in checkouts:
                    night(KINDS[2], tag, r, env)
        finally:
            stop_server(server)

    def cell(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r.get(key, 0.0) for r in runs)

    names = list(columns)
    rows: list[list[Any]] = [[label, who, *(cell(columns[n], key) for n in names)]
                             for label, key, who in ROWS]
    for who in WHO:
        rows.append([f"sum: {who}'s part", who,
                     *(sum(cell(columns[n], k) for _, k, w in ROWS if w == who) for n in names)])
    rows.append(["total wall (process start to end)", "",
                 *(cell(columns[n], "total") for n in names)])
    into = f"a catalog of {args.history:,} earlier faces" if args.history else "a fresh catalog"
    print_table(f"one-image night into {into}, seconds (median of {args.repeats} runs; fresh "
                "home: 1 run)",
                ["part", "whose", *names], rows)
    if server_s is not None:
        print(f"\nrunning server: `prefect server start` answered /health after {server_s:.1f}"
              " s (once, not per run)")
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()
