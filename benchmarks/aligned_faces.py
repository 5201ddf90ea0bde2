"""Aligned-crop sources: the nightly flow with ``faces: aligned`` vs detection on the same crops.

Usage::

    python benchmarks/aligned_faces.py [--crops 600] [--sizes 112 250] [--detectors yunet scrfd]

A pool of pre-aligned face crops (demo-world faces aligned from their true landmarks, as
MS-Celeb-1M, CASIA-WebFace or RAF-DB's aligned set ship them) is written once under
``--work`` at each size. Then, per size, the whole nightly flow (``flows.ingest.nightly_ingest``:
plan, shards with read → sha256 → decode → faces → JPEG crop → score → Parquet, select,
summary, run report) runs into a fresh catalog with the same primitive model:

* **aligned**: the source ``{"path": CROPS, "faces": "aligned"}``: no detector; each image is
  its one face, resized to 112 px;
* **detect (NAME)**: the same folder as a plain source with ``ingest.detector = NAME``.

Two figures per image, both with one worker (so per core):

* **flow ms/img**: the flow's wall time per image (fixed per-night costs included) and
  **shard ms/img**: the time inside ``process_shard`` per image (what grows with the pool);
  timed after a warm-up flow has started Prefect's temporary server;
* **faces-stage ms/img**: :func:`omnifer.pipeline.ingest.process_object` alone over the same
  objects (read, sha256, decode, detect + align or the aligned resize, JPEG crop): the work
  an aligned source skips, without the scoring both sides share.

The speed-up columns divide each detector's figure by the aligned source's (target: >= 5x).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from _common import DEFAULT_WORK, ensure_model, fresh_catalog, machine, print_table, quiet_prefect

DATE = "2026-12-01"


def ensure_crops(work: Path, n: int, size: int, seed: int = 11) -> Path:
    """``n`` aligned demo faces as ``size``-px JPEGs (written once, reused)."""
    import cv2

    from omnifer.demo import render_labeled
    from omnifer.labels import CLASSES

    root = work / f"aligned-crops-{n}-s{seed}" / f"{size}px"
    done = root / ".complete"
    if done.exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    t = time.monotonic()
    for i in range(n):
        crop, _ = render_labeled(seed, "test", 10_000 + i, CLASSES[i % len(CLASSES)])
        if size != crop.shape[0]:
            crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)
        sub = root / f"{i // 500:03d}"
        sub.mkdir(exist_ok=True)
        cv2.imwrite(str(sub / f"{i:06d}.jpg"), crop, [cv2.IMWRITE_JPEG_QUALITY, 92])
    done.write_text("")
    print(f"wrote {n} {size}px crops to {root} in {time.monotonic() - t:.0f}s", flush=True)
    return root


def faces_stage(source: str, detector: str, model: Path) -> float:
    """ms per image of ``process_object`` over the source (models warm, nothing written)."""
    from omnifer.catalog.provenance import provenance
    from omnifer.pipeline.ingest import IngestParams, ObjectRef, process_object
    from omnifer.pipeline.workers import WorkerResources
    from omnifer.sources import list_objects, parse_source

    spec = parse_source(source)
    params = IngestParams(detector=detector, model_version="v1", model_uri=str(model))
    det = WorkerResources.detector(params) if spec.faces == "detect" else None
    objects = [ObjectRef(source=0, uri=o.uri, size=o.size, version=o.version)
               for o in list_objects(spec)]
    stamp = provenance("bench", "bench")
    start = time.perf_counter()
    for obj in objects:
        process_object(obj, spec, params, det, set(), stamp)
    return 1000 * (time.perf_counter() - start) / len(objects)


def flow_run(source: str, detector: str, model: Path, root: Path,
             shard_size: int) -> dict[str, float]:
    from flows.ingest import nightly_ingest
    from omnifer import storage
    from omnifer.catalog.plans import ShardResult

    catalog = fresh_catalog(root, model)
    os.environ["OMNIFER_INGEST__DETECTOR"] = detector
    start = time.perf_counter()
    summary = nightly_ingest(date=DATE, sources=[source], shard_size=shard_size, workers=1)
    wall = time.perf_counter() - start
    n = summary["images"]
    markers = storage.list_files(catalog.shard_markers_uri(DATE), ".json")
    in_shards = sum(ShardResult.model_validate_json(storage.read_bytes(m)).seconds
                    for m in markers)
    return {"images": n, "faces": summary["faces"], "selected": summary["selected"],
            "flow_ms": 1000 * wall / n, "shard_ms": 1000 * in_shards / n,
            "stage_ms": faces_stage(source, detector, model)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--crops", type=int, default=600)
    ap.add_argument("--sizes", type=int, nargs="+", default=[112, 250])
    ap.add_argument("--detectors", nargs="+", default=["yunet", "scrfd"])
    ap.add_argument("--shard-size", type=int, default=128)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = ap.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    quiet_prefect(work)
    print(f"machine: {machine()}", flush=True)
    model = ensure_model(work)
    card = json.loads((model / "card.json").read_text())
    print(f"model: {model} ({card['arch']}, {card['input_size']} px)", flush=True)

    from _common import warm_prefect

    print(f"Prefect temporary server up in {warm_prefect():.1f}s (not counted)", flush=True)
    import torch

    torch.set_num_threads(1)  # the flow sets cpu_count // workers for its own shards
    rows = []
    for size in args.sizes:
        crops = ensure_crops(work, args.crops, size)
        aligned = flow_run(json.dumps({"path": str(crops), "faces": "aligned"}),
                           args.detectors[0], model, work / "aligned-flow", args.shard_size)
        print(f"{size}px aligned: {aligned}", flush=True)
        runs = [("aligned", aligned)]
        for det in args.detectors:
            try:
                res = flow_run(str(crops), det, model, work / f"detect-flow-{det}",
                               args.shard_size)
            except Exception as exc:  # e.g. SCRFD's file absent: say so, keep the rest
                print(f"{size}px detect ({det}) skipped: {str(exc).splitlines()[0]}")
                continue
            print(f"{size}px detect ({det}): {res}", flush=True)
            runs.append((f"detect ({det})", res))
        for name, r in runs:
            rows.append([size, name, r["faces"] / r["images"], r["selected"], r["flow_ms"],
                         r["shard_ms"], r["stage_ms"], r["flow_ms"] / aligned["flow_ms"],
                         r["shard_ms"] / aligned["shard_ms"], r["stage_ms"] / aligned["stage_ms"]])
    print_table(f"{args.crops} aligned crops per size, 1 worker, shard size {args.shard_size} "
                f"(target: aligned >= 5x faster per image than detection)",
                ["crop px", "source", "faces/img", "curated", "flow ms/img", "shard ms/img",
                 "faces-stage ms/img", "x flow", "x shard", "x faces-stage"], rows)
    print("\nx ...: that row's ms per image / the aligned source's on the same crops. Flow and "
          "shard figures include scoring every kept face with the same model (the same work "
          "on both sides); the faces stage is read → sha256 → decode → faces → JPEG crop.")


if __name__ == "__main__":
    main()
