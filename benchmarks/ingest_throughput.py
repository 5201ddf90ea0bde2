"""Ingest throughput: the whole nightly flow against a bare decode → detect → score loop.

Usage::

    python benchmarks/ingest_throughput.py [--scenes 2000] [--workers 1 2] [--shard-size 128]

Both sides process the same demo-world scene files (rendered once under ``--work``) with the
same detector (YuNet), the same settings and the same primitive model:

* **bare**: N spawned processes, each with every N-th file; a plain loop of read → decode →
  detect + align → score (batches of ``score_batch_size`` crops across images). No sha256, no
  JPEG crops, no Parquet, no Prefect. Timed from the moment every process has its models
  loaded to the last one finishing.
* **flow**: ``flows.ingest.nightly_ingest`` with ``workers=N`` into a fresh catalog: plan
  (crawl), shards (read, sha256, decode, detect, align, JPEG crops, score, three Parquet
  files, marker), select, summary, run record, HTML run report. Timed around the flow call,
  after a warm-up flow has started Prefect's temporary server (a deployment has one running).

Prints images/s for each and the ratio flow / bare; the target is ≥ 0.8 with 2 workers.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time
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
    warm_prefect,
)

DATE = "2026-12-01"


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process so far, all its threads."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _bare_worker(files: list[str], threads: int, model_dir: str, barrier: Any,
                 queue: Any) -> None:
    import numpy as np
    import torch

    from omnifer.config import load_settings
    from omnifer.curation.scoring import Scorer
    from omnifer.errors import DecodeError
    from omnifer.faces import create_detector, detect_and_align
    from omnifer.imaging.decode import decode_image
    from omnifer.models.checkpoints import load_checkpoint

    torch.set_num_threads(threads)
    s = load_settings().ingest
    detector = create_detector(s.detector, score_threshold=s.min_det_score, max_side=s.max_side)
    scorer = Scorer(load_checkpoint(Path(model_dir)), batch_size=s.score_batch_size)
    scorer.score(np.zeros((2, 112, 112, 3), np.uint8))  # warm, as a flow worker's is
    barrier.wait()
    start, cpu0 = time.time(), _cpu_s()
    faces, buf = 0, []
    for f in files:
        try:
            decoded = decode_image(Path(f).read_bytes(), max_pixels=s.max_pixels)
        except DecodeError:
            continue
        found = detect_and_align(decoded.image, detector, min_face_size=s.min_face_size,
                                 min_score=s.min_det_score)
        buf += [a.crop for a in found]
        faces += len(found)
        if len(buf) >= s.score_batch_size:
            scorer.score(np.stack(buf))
            buf = []
    if buf:
        scorer.score(np.stack(buf))
    queue.put((start, time.time(), len(files), faces, _cpu_s() - cpu0))


def bare_loop(files: list[Path], processes: int, model: Path) -> dict[str, float]:
    """Images/s of ``processes`` spawned bare loops over ``files`` (split round-robin)."""
    import os

    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(processes), ctx.Queue()
    threads = max(1, (os.cpu_count() or 1) // processes)  # as the flow sets torch threads
    procs = [ctx.Process(target=_bare_worker,
                         args=([str(f) for f in files[i::processes]], threads, str(model),
                               barrier, queue))
             for i in range(processes)]
    for p in procs:
        p.start()
    out = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    wall = max(o[1] for o in out) - min(o[0] for o in out)
    images = sum(o[2] for o in out)
    return {"images": images, "faces": sum(o[3] for o in out), "seconds": wall,
            "images_per_s": images / wall, "cpu_ms": 1000 * sum(o[4] for o in out) / images}


def flow_run(world: Path, workers: int, shard_size: int, model: Path,
             root: Path) -> dict[str, float]:
    from flows.ingest import nightly_ingest
    from omnifer.catalog.plans import ShardResult

    catalog = fresh_catalog(root, model)
    start, cpu0 = time.perf_counter(), _cpu_s()
    summary = nightly_ingest(date=DATE, sources=[str(world / "unlabeled")],
                             shard_size=shard_size, workers=workers)
    wall, cpu = time.perf_counter() - start, _cpu_s() - cpu0
    from omnifer import storage

    markers = storage.list_files(catalog.shard_markers_uri(DATE), ".json")
    in_shards = sum(ShardResult.model_validate_json(storage.read_bytes(m)).seconds
                    for m in markers)
    return {"images": summary["images"], "faces": summary["faces"], "seconds": wall,
            "images_per_s": summary["images"] / wall, "shard_seconds": in_shards,
            "cpu_ms": 1000 * cpu / summary["images"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=int, default=2000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--shard-size", type=int, default=128)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--only", choices=["bare", "flow"], default=None)
    args = ap.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    quiet_prefect(work)
    print(f"machine: {machine()}", flush=True)

    world = ensure_world(work, args.scenes)
    model = ensure_model(work)
    files = scene_files(world)
    print(f"world: {world} ({len(files)} files); model: {model}", flush=True)

    bare: dict[int, dict[str, float]] = {}
    flows: dict[int, dict[str, float]] = {}
    if args.only != "bare":
        print(f"Prefect temporary server up in {warm_prefect():.1f}s (not counted)", flush=True)
    # Bare and flow back to back per worker count, so that load from elsewhere on a shared
    # machine hits both sides of a ratio alike.
    for n in args.workers:
        if args.only != "flow":
            bare[n] = bare_loop(files, n, model)
            print(f"bare x{n}: {bare[n]['images_per_s']:.1f} images/s", flush=True)
        if args.only != "bare":
            flows[n] = flow_run(world, n, args.shard_size, model, work / f"throughput-{n}")
            print(f"flow x{n}: {flows[n]['images_per_s']:.1f} images/s", flush=True)

    rows = []
    for n in args.workers:
        b, f = bare.get(n), flows.get(n)
        rows.append([
            n,
            b["images_per_s"] if b else "-", f["images_per_s"] if f else "-",
            f["images_per_s"] / b["images_per_s"] if b and f else "-",
            b["seconds"] if b else "-", f["seconds"] if f else "-",
            f["shard_seconds"] / n / f["seconds"] if f else "-",
            b["cpu_ms"] if b else "-", f["cpu_ms"] if f else "-",
            b["cpu_ms"] / f["cpu_ms"] if b and f else "-",
            int((f or b)["faces"]),
        ])
    print_table(f"Ingest throughput, {len(files)} demo-world scenes, shard size "
                f"{args.shard_size} (target: flow/bare >= 0.8 at 2 workers)",
                ["workers", "bare img/s", "flow img/s", "flow/bare", "bare s", "flow s",
                 "in shards", "bare CPU ms/img", "flow CPU ms/img", "bare/flow CPU", "faces"],
                rows)
    print("\n'in shards': share of the flow's wall time its workers spent inside "
          "process_shard; the rest is planning, Prefect, select, summary, report.\n"
          "CPU ms/img: user + system CPU per image of the measuring process(es) (the flow's "
          "Prefect API server, another process, is not counted); less sensitive than img/s "
          "to load from elsewhere on a shared machine.")


if __name__ == "__main__":
    main()
