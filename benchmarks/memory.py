"""Memory: peak RSS of the nightly flow on N and 10×N scenes; it must not grow with images.

Usage::

    python benchmarks/memory.py [--scenes 2000 20000] [--workers 2] [--shard-size 128]

For each scene count a demo world is rendered once under ``--work`` (in this process), then a
fresh child process runs ``flows.ingest.nightly_ingest`` over it into an empty catalog and
reports its own peak resident set size (``getrusage`` ``ru_maxrss``) and its RSS sampled every
half second (at a quarter, half and all of the run), so growth shows as a slope. Prefect's
temporary API server is a separate process and is not counted. Target: peak RSS at the
largest count within 1.2× that at the smallest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from _common import (
    DEFAULT_WORK,
    ensure_model,
    ensure_world,
    fresh_catalog,
    machine,
    peak_rss_mb,
    print_table,
    quiet_prefect,
    warm_prefect,
)

DATE = "2026-12-02"


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(world: Path, workers: int, shard_size: int, work: Path) -> None:
    """Run the flow once and print one JSON line with the figures."""
    quiet_prefect(work)
    from flows.ingest import nightly_ingest

    catalog_root = work / f"memory-{world.name}"
    fresh_catalog(catalog_root, ensure_model(work))
    warm_prefect()  # the server is another process; its start is not the flow's time
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    start = time.monotonic()

    def sample() -> None:
        while not stop.wait(0.5):
            samples.append((time.monotonic() - start, _rss_mb()))

    before = _rss_mb()
    threading.Thread(target=sample, daemon=True).start()
    summary = nightly_ingest(date=DATE, sources=[str(world / "unlabeled")],
                             shard_size=shard_size, workers=workers)
    wall = time.monotonic() - start
    stop.set()

    def at(fraction: float) -> float:
        t = fraction * wall
        return min(samples, key=lambda s: abs(s[0] - t))[1] if samples else float("nan")

    print(json.dumps({"images": summary["images"], "faces": summary["faces"],
                      "seconds": wall, "peak_rss_mb": peak_rss_mb(), "start_rss_mb": before,
                      "rss_25": at(0.25), "rss_50": at(0.5), "rss_100": at(1.0)}))
    import shutil

    shutil.rmtree(catalog_root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=128)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.child:
        child(args.child, args.workers, args.shard_size, work)
        return
    print(f"machine: {machine()}", flush=True)
    ensure_model(work)
    rows, base = [], None
    for n in args.scenes:
        world = ensure_world(work, n)
        print(f"flow over {world} ({n} scenes, {args.workers} workers) ...", flush=True)
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(world), "--workers", str(args.workers),
             "--shard-size", str(args.shard_size), "--work", str(work)],
            capture_output=True, text=True, check=False)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if out.returncode or not lines:
            print(out.stdout[-3000:], out.stderr[-3000:], sep="\n")
            raise SystemExit(f"the flow over {n} scenes failed (exit {out.returncode})")
        r = json.loads(lines[-1])
        base = base or r["peak_rss_mb"]
        rows.append([n, r["images"], r["faces"], r["seconds"], r["images"] / r["seconds"],
                     r["start_rss_mb"], r["rss_25"], r["rss_50"], r["rss_100"],
                     r["peak_rss_mb"], r["peak_rss_mb"] / base])
        print(f"  peak RSS {r['peak_rss_mb']:.0f} MiB in {r['seconds']:.0f}s", flush=True)
    print_table(f"Peak RSS of the nightly flow ({args.workers} workers, shard size "
                f"{args.shard_size}; MiB; target: largest <= 1.2x smallest)",
                ["scenes", "images", "faces", "seconds", "img/s", "RSS start", "RSS 25%",
                 "RSS 50%", "RSS end", "peak RSS", "x smallest"], rows)


if __name__ == "__main__":
    main()
