"""Ingest throughput on Dask: the nightly flow's shards in its thread pool vs on a LocalCluster.

Usage::

    python benchmarks/ingest_dask.py [--scenes 2000] [--workers 2] [--shard-size 128]
                                     [--repeats 1]

(``benchmarks/ingest_throughput.py --dask`` prints the same table after its own.)

Both sides run ``flows.ingest.nightly_ingest`` over the same demo-world scene files (rendered
once under ``--work``), with the same settings and primitive model, each into a fresh catalog,
against the same real Prefect server (``prefect server start`` on 127.0.0.1, started here;
Dask needs one, and the thread runner is timed against it too so that both pay the same API):

* **threads**: ``task_runner="threads"``, ``workers=N`` shards at a time in the flow process.
* **dask**: ``task_runner="dask"`` on a ``distributed.LocalCluster`` of N worker processes with
  one thread each, on 127.0.0.1. The cluster is started (and its workers have imported the
  pipeline) before the clock starts, as a standing cluster would have (one per repeat, not
  running during the thread runner's turn); each worker still loads its detector and model
  on its first shard, inside the timing, as the thread runner's workers do.

Timed around the flow call. Peak RSS: sampled every 0.2 s with psutil during the flow (the flow
process; and each Dask worker process, with its own ``ru_maxrss`` too). Repeats alternate
threads and dask back to back, so that load from elsewhere on a shared machine hits both.
Target (issue 18): dask/threads images/s >= 0.9 on one machine.

``--malloc`` measures instead what Dask's ``MALLOC_TRIM_THRESHOLD_=65536`` (set by its nanny in
every worker) costs the shard work, and what ``omnifer.runtime.heap.keep_large_blocks`` (which the
shard task calls once per Dask worker) gives back: one process per setting decodes, detects
and scores the same 80 scenes three times (after one warm-up pass) and reports CPU per image,
page faults per image and its peak RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _common import (
    DEFAULT_WORK,
    ensure_model,
    ensure_world,
    fresh_catalog,
    machine,
    print_table,
    quiet_prefect,
    scene_files,
)

DATE = "2026-12-01"


@contextlib.contextmanager
def prefect_server(work: Path) -> Iterator[str]:
    """``prefect server start`` on a free 127.0.0.1 port (SQLite under ``work``); yields its
    API URL, made the current one for this process."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    home = work / "dask-prefect"
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_UI_ENABLED="false", PREFECT_SERVER_UI_ENABLED="false",
               PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home}/prefect.db")
    prefect = str(Path(sys.executable).with_name("prefect"))
    with open(home / "server.log", "w") as log:
        server = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port",
                                   str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        api = f"http://127.0.0.1:{port}/api"
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    with urllib.request.urlopen(f"{api}/health", timeout=5) as resp:
                        if resp.read() == b"true":
                            break
                except OSError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Prefect server did not start; see {home}/server.log")
                time.sleep(0.5)
            os.environ["PREFECT_API_URL"] = api  # the Dask workers started later inherit it
            with temporary_settings(updates={PREFECT_API_URL: api}):
                yield api
        finally:
            os.environ.pop("PREFECT_API_URL", None)
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)


class PeakRSS:
    """Peak resident set size (MiB) of some processes, sampled every ``every`` seconds."""

    def __init__(self, pids: list[int], every: float = 0.2) -> None:
        import psutil

        self._procs = {pid: psutil.Process(pid) for pid in pids}
        self.peak = {pid: 0.0 for pid in pids}
        self._stop = threading.Event()
        self._every = every
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid, proc in self._procs.items():
                try:
                    self.peak[pid] = max(self.peak[pid], proc.memory_info().rss / 2**20)
                except Exception:  # a worker that died: keep what was seen
                    pass
            self._stop.wait(self._every)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` so far (all their threads)."""
    import psutil

    total = 0.0
    for pid in pids:
        t = psutil.Process(pid).cpu_times()
        total += t.user + t.system
    return total


def _flow(world: Path, model: Path, root: Path, workers: int, shard_size: int,
          cpu_pids: list[int], **runner: Any) -> dict[str, Any]:
    from flows.ingest import nightly_ingest

    fresh_catalog(root, model)
    start, cpu0 = time.perf_counter(), _cpu_s(cpu_pids)
    summary = nightly_ingest(date=DATE, sources=[str(world / "unlabeled")],
                             shard_size=shard_size, workers=workers, **runner)
    wall, cpu = time.perf_counter() - start, _cpu_s(cpu_pids) - cpu0
    return {"images": summary["images"], "faces": summary["faces"], "seconds": wall,
            "images_per_s": summary["images"] / wall,
            "cpu_ms": 1000 * cpu / summary["images"]}


def dask_comparison(world: Path, model: Path, work: Path, workers: int = 2,
                    shard_size: int = 128, repeats: int = 1) -> dict[str, Any]:
    """Run both sides ``repeats`` times; print and return the figures (medians of img/s)."""
    import dask
    from distributed import Client, LocalCluster

    runs: dict[str, list[dict[str, Any]]] = {"threads": [], "dask": []}
    with prefect_server(work) as api:
        print(f"Prefect server at {api} (not counted)", flush=True)
        for r in range(repeats):
            with PeakRSS([os.getpid()]) as rss:
                t = _flow(world, model, work / "dask-bench-threads", workers, shard_size,
                          [os.getpid()], task_runner="threads")
            t["flow_rss"] = rss.peak[os.getpid()]
            runs["threads"].append(t)
            print(f"threads x{workers} #{r + 1}: {t['images_per_s']:.1f} images/s, "
                  f"peak RSS {t['flow_rss']:.0f} MiB", flush=True)
            # A cluster per repeat, started before the clock (as a standing one would be), and
            # not running beside the thread runner's turn.
            # As `--dask local` starts it (flows/runners.py): no worker profiler.
            with dask.config.set({"distributed.worker.profile.enabled": False}), \
                    LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                 host="127.0.0.1", dashboard_address=None) as cluster, \
                    Client(cluster) as client:
                for module in ("tasks.ingest", "omnifer.faces", "omnifer.models.checkpoints",
                               "omnifer.curation.scoring"):
                    client.run(__import__, module)  # imports (this process has them)
                pids = sorted(client.run(os.getpid).values())
                # The nannies and the scheduler run in this process: counted with the flow.
                with PeakRSS([os.getpid(), *pids]) as rss:
                    d = _flow(world, model, work / "dask-bench-dask", workers, shard_size,
                              sorted({os.getpid(), *pids}), task_runner="dask",
                              dask_address=cluster.scheduler_address)
                d["flow_rss"] = rss.peak[os.getpid()]
                d["worker_rss"] = [rss.peak[p] for p in pids]
                d["worker_maxrss"] = sorted(
                    v / 1024 for v in client.run(
                        lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss).values())
            runs["dask"].append(d)
            print(f"dask x{workers} #{r + 1}: {d['images_per_s']:.1f} images/s, "
                  f"worker peak RSS {', '.join(f'{v:.0f}' for v in d['worker_rss'])} MiB",
                  flush=True)
    med = {k: statistics.median(x["images_per_s"] for x in v) for k, v in runs.items()}
    rows = []
    for i, (t, d) in enumerate(zip(runs["threads"], runs["dask"], strict=True)):
        rows.append([i + 1, t["images"], t["images_per_s"], d["images_per_s"],
                     d["images_per_s"] / t["images_per_s"], t["seconds"], d["seconds"],
                     t["cpu_ms"], d["cpu_ms"],
                     t["flow_rss"], d["flow_rss"],
                     " / ".join(f"{v:.0f}" for v in d["worker_rss"]),
                     " / ".join(f"{v:.0f}" for v in d["worker_maxrss"])])
    print_table(f"Nightly flow, thread runner vs Dask LocalCluster ({workers} processes x 1 "
                f"thread), same {runs['threads'][0]['images']} files, shard size {shard_size} "
                "(target: dask/threads >= 0.9)",
                ["run", "images", "threads img/s", "dask img/s", "dask/threads", "threads s",
                 "dask s", "threads CPU ms/img", "dask CPU ms/img", "threads: flow RSS MiB",
                 "dask: flow RSS MiB", "dask: worker peak RSS MiB", "worker ru_maxrss MiB"],
                rows)
    print(f"median images/s: threads {med['threads']:.1f}, dask {med['dask']:.1f}, "
          f"ratio {med['dask'] / med['threads']:.3f}")
    print("threads: the flow process holds the shard threads, their detectors and the model; "
          "dask: the flow process only plans, selects and reports, each worker process holds "
          "its own detector and model.\nCPU ms/img: user + system CPU per image of the flow "
          "process (with the Dask scheduler and nannies, which LocalCluster runs in it) and, for "
          "dask, the worker processes; the Prefect server is not counted. Less sensitive than "
          "img/s to load from elsewhere on a shared machine.")
    return {"runs": runs, "median": med}


def _malloc_probe(world: str, model: str, keep_mib: str) -> None:
    """One process of ``--malloc``: the shard work (decode, detect, score) on 80 scenes."""
    import numpy as np
    import torch

    from omnifer.config import load_settings
    from omnifer.curation.scoring import Scorer
    from omnifer.errors import DecodeError
    from omnifer.faces import create_detector, detect_and_align
    from omnifer.imaging.decode import decode_image
    from omnifer.models.checkpoints import load_checkpoint
    from omnifer.runtime import heap

    if keep_mib != "-":
        heap.keep_large_blocks(int(keep_mib), 2 * int(keep_mib))
    torch.set_num_threads(1)
    s = load_settings().ingest
    detector = create_detector(s.detector, score_threshold=s.min_det_score, max_side=s.max_side)
    scorer = Scorer(load_checkpoint(Path(model)), batch_size=s.score_batch_size)
    datas = [f.read_bytes() for f in scene_files(Path(world))[:80]]

    def once() -> None:
        crops = []
        for data in datas:
            try:
                image = decode_image(data, max_pixels=s.max_pixels).image
            except DecodeError:
                continue
            crops += [f.crop for f in detect_and_align(image, detector,
                                                       min_face_size=s.min_face_size,
                                                       min_score=s.min_det_score)]
        scorer.score(np.stack(crops))

    once()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(3):
        once()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    n = 3 * len(datas)
    user, system = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
    print(f"{1000 * user / n:.2f} {1000 * system / n:.2f} {(r1.ru_minflt - r0.ru_minflt) / n:.0f}"
          f" {r1.ru_maxrss / 1024:.0f}")


def malloc_comparison(world: Path, model: Path, repeats: int = 2) -> None:
    """``--malloc``: the shard work under glibc settings as a plain process, a Dask worker, and a
    Dask worker with ``heap.keep_large_blocks`` at 8 and 32 MiB; each in its own process."""
    cases = [("plain process", {}, "-"), ("Dask worker env", {"MALLOC_TRIM_THRESHOLD_": "65536"},
             "-"), ("Dask env + keep_large_blocks(8)", {"MALLOC_TRIM_THRESHOLD_": "65536"}, "8"),
             ("Dask env + keep_large_blocks(32)", {"MALLOC_TRIM_THRESHOLD_": "65536"}, "32")]
    rows = []
    for r in range(repeats):
        for name, env, keep in cases:
            out = subprocess.run([sys.executable, __file__, "--malloc-probe", str(world),
                                  str(model), keep], env={**os.environ, **env},
                                 capture_output=True, text=True, check=True)
            user, system, faults, rss = out.stdout.split()[-4:]
            rows.append([r + 1, name, float(user), float(system), int(float(faults)), int(rss)])
    print_table("Shard work (decode, detect, score; 80 scenes x 3, one thread) under glibc "
                "settings", ["repeat", "setting", "user ms/img", "system ms/img",
                             "page faults/img", "peak RSS MiB"], rows)


def main() -> None:
    if sys.argv[1:2] == ["--malloc-probe"]:
        _malloc_probe(*sys.argv[2:5])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--malloc", action="store_true", help="Only the glibc comparison (above)")
    args = ap.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    quiet_prefect(work)
    print(f"machine: {machine()}", flush=True)
    world = ensure_world(work, args.scenes)
    model = ensure_model(work)
    print(f"world: {world} ({len(scene_files(world))} files); model: {model}", flush=True)
    if args.malloc:
        malloc_comparison(world, model, args.repeats)
        return
    dask_comparison(world, model, work, args.workers, args.shard_size, args.repeats)


if __name__ == "__main__":
    main()
