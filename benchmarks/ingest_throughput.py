"""Ingest throughput: the nightly flow at full-scale and at scale-aware detection, against a
bare decode → detect → score loop, with detection quality against the world's truth.

Usage::

    python benchmarks/ingest_throughput.py [--scenes 2000] [--workers 2] [--shard-size 128]

All sides process the same demo-world scene files (rendered once under ``--work``) with the
same detector (the configured one, YuNet by default), the same settings and the same
primitive model:

* **bare**: N spawned processes, each with every N-th file; a plain loop of read → decode →
  detect + align → score (batches of ``score_batch_size`` crops across images), with each of
  the two detection settings below. No sha256, no JPEG crops, no Parquet, no Prefect. Timed
  from the moment every process has its models loaded to the last one finishing; each
  process also adds up its thread's CPU time per stage (decode, detect, align, score).
* **detection alone**: ``FaceFinder.detect`` full and auto on the same photos in one
  process, interleaved photo by photo, so that load from elsewhere hits both alike.
* **flow full**: ``flows.ingest.nightly_ingest`` with ``workers=N`` into a fresh catalog,
  detecting today's way: the whole image at up to ``max_side``.
* **flow auto**: the same flow with scale-aware detection (``detect_scale: auto``, the
  default: search at the scale the smallest kept face needs, then detect each face again at
  ~``refine_px``; ``omnifer.faces.finder.FaceFinder``).

Both flows are timed around the flow call, after a warm-up flow has started Prefect's temporary
server (a deployment has one running). Then each flow's ``faces`` are matched to the world's
true faces (IoU ≥ 0.5): recall, precision, and the landmark error: mean distance of the five
detected landmarks to the true ones over the true inter-ocular distance, median over matched
faces. Last, the real photos that installed packages ship (scikit-image's astronaut,
matplotlib's Grace Hopper, insightface's t1: 8 faces) are searched with both settings.

``--baseline DIR`` adds **flow base**: the nightly flow of another checkout (e.g. the commit an
issue was filed at: ``git worktree add /tmp/base COMMIT``), run on the same files with the same
model and workers, in a subprocess with that checkout's own code (its ``flows.ingest`` and
``benchmarks/_common.py``, which must have ``fresh_catalog(root, model)`` and
``warm_prefect()``, as every checkout since this benchmark has), right after this checkout's
two flows, and timed the same way (its own temporary Prefect server warmed first, not counted).

Targets (issue 22): flow auto ≥ 2× flow full images/s with 2 workers, at equal recall and a
median landmark error at most 1 point (0.01 of the inter-ocular distance) above full's, 8/8
real faces; flow / bare ≥ 0.8 (issue 11).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import subprocess
import sys
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
STAGES = ("decode", "detect", "align", "score")


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process so far, all its threads."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _bare_worker(files: list[str], threads: int, model_dir: str, scale: str, barrier: Any,
                 queue: Any) -> None:
    import numpy as np
    import torch

    from omnifer.config import load_settings
    from omnifer.curation.scoring import Scorer
    from omnifer.errors import DecodeError
    from omnifer.faces import align_face, create_detector
    from omnifer.imaging.decode import decode_image
    from omnifer.models.checkpoints import load_checkpoint

    torch.set_num_threads(threads)
    s = load_settings().ingest
    detector = create_detector(s.detector, score_threshold=s.min_det_score, max_side=s.max_side,
                               scale=scale, min_face_size=s.min_face_size,
                               refine_px=s.refine_px, whole_frame=s.whole_frame)
    scorer = Scorer(load_checkpoint(Path(model_dir)), batch_size=s.score_batch_size)
    batch = scorer.batch_size  # the flow's: score_batch_size, or the device's default
    scorer.score(np.zeros((2, 112, 112, 3), np.uint8))  # warm, as a flow worker's is
    barrier.wait()
    start, cpu0 = time.time(), _cpu_s()
    faces, buf = 0, []
    stages = dict.fromkeys(STAGES, 0.0)  # CPU seconds of this thread per stage
    clock = time.thread_time
    for f in files:
        t0 = clock()
        try:
            decoded = decode_image(Path(f).read_bytes(), max_pixels=s.max_pixels)
        except DecodeError:
            continue
        t1 = clock()
        dets = [d for d in detector.detect(decoded.image)
                if d.score >= s.min_det_score and d.size >= s.min_face_size]
        t2 = clock()
        buf += [align_face(decoded.image, d.landmarks5) for d in dets]
        faces += len(dets)
        t3 = clock()
        if len(buf) >= batch:
            scorer.score(np.stack(buf))
            buf = []
        t4 = clock()
        for name, dt in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            stages[name] += dt
    t = clock()
    if buf:
        scorer.score(np.stack(buf))
    stages["score"] += clock() - t
    queue.put((start, time.time(), len(files), faces, _cpu_s() - cpu0, stages))


def bare_loop(files: list[Path], processes: int, model: Path, scale: str) -> dict[str, float]:
    """Images/s of ``processes`` spawned bare loops over ``files`` (split round-robin),
    detecting with ``detect_scale = scale``."""
    import os

    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(processes), ctx.Queue()
    threads = max(1, (os.cpu_count() or 1) // processes)  # as the flow sets torch threads
    procs = [ctx.Process(target=_bare_worker,
                         args=([str(f) for f in files[i::processes]], threads, str(model),
                               scale, barrier, queue))
             for i in range(processes)]
    for p in procs:
        p.start()
    out = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    wall = max(o[1] for o in out) - min(o[0] for o in out)
    images = sum(o[2] for o in out)
    return {"images": images, "faces": sum(o[3] for o in out), "seconds": wall,
            "images_per_s": images / wall, "cpu_ms": 1000 * sum(o[4] for o in out) / images,
            **{f"{k}_ms": 1000 * sum(o[5][k] for o in out) / images for k in STAGES}}


def flow_run(world: Path, workers: int, shard_size: int, model: Path, root: Path,
             scale: str) -> dict[str, Any]:
    """One nightly flow with ``ingest.detect_scale = scale`` into a fresh catalog under
    ``root``: images/s, CPU per image, and the detection quality against the world's truth."""
    import os

    from flows.ingest import nightly_ingest
    from omnifer.catalog.plans import ShardResult

    catalog = fresh_catalog(root, model)
    os.environ["OMNIFER_INGEST__DETECT_SCALE"] = scale
    try:
        start, cpu0 = time.perf_counter(), _cpu_s()
        summary = nightly_ingest(date=DATE, sources=[str(world / "unlabeled")],
                                 shard_size=shard_size, workers=workers)
        wall, cpu = time.perf_counter() - start, _cpu_s() - cpu0
    finally:
        os.environ.pop("OMNIFER_INGEST__DETECT_SCALE", None)
    from omnifer import storage

    markers = storage.list_files(catalog.shard_markers_uri(DATE), ".json")
    in_shards = sum(ShardResult.model_validate_json(storage.read_bytes(m)).seconds
                    for m in markers)
    faces = catalog.read("faces", ["source_uri", "bbox", "landmarks5", "detector_version"])
    versions = sorted(set(faces.column("detector_version").to_pylist()))
    return {"images": summary["images"], "faces": summary["faces"], "seconds": wall,
            "images_per_s": summary["images"] / wall, "shard_seconds": in_shards,
            "cpu_ms": 1000 * cpu / summary["images"], "detector_version": ", ".join(versions),
            **detection_quality(faces, world)}


# Runs in the baseline checkout (cwd), with its own code first on sys.path.
BASELINE_DRIVER = """
import json, sys, time
sys.path[:0] = ["benchmarks", "."]
from pathlib import Path
from _common import fresh_catalog, warm_prefect
world, model, root, workers, shard_size, date = sys.argv[1:7]
warm_prefect()
fresh_catalog(Path(root), Path(model))
from flows.ingest import nightly_ingest
t = time.perf_counter()
summary = nightly_ingest(date=date, sources=[str(Path(world) / "unlabeled")],
                         shard_size=int(shard_size), workers=int(workers))
print("RESULT " + json.dumps({"images": summary["images"], "faces": summary["faces"],
                              "seconds": time.perf_counter() - t}))
"""


def baseline_flow_run(checkout: Path, world: Path, workers: int, shard_size: int, model: Path,
                      root: Path, prefect_home: Path) -> dict[str, Any]:
    """The nightly flow of another ``checkout`` on the same files (see the module docstring):
    images/s and seconds, timed inside the subprocess around its flow call. Raises
    RuntimeError with the subprocess's last lines when it fails."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("OMNIFER_") and k not in ("PREFECT_API_URL", "PYTHONPATH")}
    env.update(PYTHONPATH=str(checkout), PREFECT_HOME=str(prefect_home),
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300")
    proc = subprocess.run([sys.executable, "-c", BASELINE_DRIVER, str(world), str(model),
                           str(root), str(workers), str(shard_size), DATE],
                          cwd=checkout, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise RuntimeError(f"the baseline flow in {checkout} failed (rc {proc.returncode}):\n"
                           f"{tail}")
    out = json.loads(lines[-1][len("RESULT "):])
    return {**out, "images_per_s": out["images"] / out["seconds"]}


def detection_quality(faces: Any, world: Path, min_iou: float = 0.5) -> dict[str, float]:
    """Recall and precision of ``faces`` (source_uri, bbox, landmarks5) against the world's
    true faces (greedy IoU matching per image, as ``omnifer.demo.truth.match_faces``), and the
    median / 90th-percentile landmark error of matched faces: mean distance of the five
    landmarks to the true ones over the true inter-ocular distance."""
    from urllib.parse import unquote

    import numpy as np

    from omnifer.demo.truth import iou, load_truth

    truth = load_truth(world).to_pylist()
    by_image: dict[str, list[dict]] = {}
    for t in truth:
        by_image.setdefault(t["relpath"], []).append(t)
    prefix = "file://" + str((world / "unlabeled").resolve()) + "/"
    detected: dict[str, list[dict]] = {}
    for row in faces.to_pylist():
        uri = unquote(row["source_uri"])
        if uri.startswith(prefix):
            detected.setdefault(uri[len(prefix):], []).append(row)
    errors, matched = [], 0
    for rel, dets in detected.items():
        true = by_image.get(rel, [])
        if not true:
            continue
        m = iou(np.array([d["bbox"] for d in dets]),
                np.array([[t["x1"], t["y1"], t["x2"], t["y2"]] for t in true]))
        used_d: set[int] = set()
        used_t: set[int] = set()
        for flat in np.argsort(-m, axis=None):
            i, j = (int(v) for v in np.unravel_index(flat, m.shape))
            if m[i, j] < min_iou:
                break
            if i in used_d or j in used_t:
                continue
            used_d.add(i)
            used_t.add(j)
            matched += 1
            got = np.asarray(dets[i]["landmarks5"], np.float64).reshape(5, 2)
            want = np.asarray(true[j]["landmarks5"], np.float64).reshape(5, 2)
            iod = float(np.linalg.norm(want[0] - want[1]))
            errors.append(float(np.linalg.norm(got - want, axis=1).mean()) / iod)
    n_det = sum(len(v) for v in detected.values())
    return {"true_faces": len(truth), "matched": matched,
            "recall": matched / len(truth) if truth else 0.0,
            "precision": matched / n_det if n_det else 0.0,
            "lm_median": float(np.median(errors)) if errors else float("nan"),
            "lm_p90": float(np.percentile(errors, 90)) if errors else float("nan")}


def detection_alone(files: list[Path], sample: int) -> dict[str, dict[str, float]]:
    """CPU ms per photo of ``FaceFinder.detect`` alone, full and auto, in this process with one
    OpenCV thread, the two settings interleaved photo by photo (alternating which goes first)
    so that load from elsewhere on a shared machine hits both alike; ``sample`` photos."""
    import cv2

    from omnifer.config import load_settings
    from omnifer.errors import DecodeError
    from omnifer.faces import create_detector
    from omnifer.imaging.decode import decode_image

    s = load_settings().ingest
    finders = {scale: create_detector(s.detector, score_threshold=s.min_det_score,
                                      max_side=s.max_side, scale=scale,
                                      min_face_size=s.min_face_size, refine_px=s.refine_px,
                                      whole_frame=s.whole_frame)
               for scale in ("full", "auto")}
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    cpu = dict.fromkeys(finders, 0.0)
    found = dict.fromkeys(finders, 0)
    n = 0
    try:
        for i, f in enumerate(files[:sample]):
            try:
                image = decode_image(f.read_bytes(), max_pixels=s.max_pixels).image
            except DecodeError:
                continue
            n += 1
            for scale in (("full", "auto") if i % 2 else ("auto", "full")):
                t = time.thread_time()
                dets = finders[scale].detect(image)
                cpu[scale] += time.thread_time() - t
                found[scale] += sum(d.score >= s.min_det_score and d.size >= s.min_face_size
                                    for d in dets)
    finally:
        cv2.setNumThreads(threads)
    return {scale: {"ms": 1000 * cpu[scale] / max(n, 1), "faces": found[scale], "photos": n}
            for scale in finders}


def real_photos() -> dict[str, Any]:
    """The photos installed packages ship, BGR, with their face counts (8 in all)."""
    import cv2
    import insightface
    import matplotlib
    import numpy as np
    from skimage import data

    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return {"astronaut": (np.ascontiguousarray(data.astronaut()[:, :, ::-1]), 1),
            "grace_hopper": (cv2.imread(str(hopper)), 1),
            "t1": (insightface.data.get_image("t1"), 6)}


def real_photo_faces(scale: str) -> tuple[int, int]:
    """Faces (kept by the ingest settings) found in :func:`real_photos` / expected."""
    from omnifer.config import load_settings
    from omnifer.faces import create_detector, detect_and_align

    s = load_settings().ingest
    detector = create_detector(s.detector, score_threshold=s.min_det_score, max_side=s.max_side,
                               scale=scale, min_face_size=s.min_face_size,
                               refine_px=s.refine_px, whole_frame=s.whole_frame)
    found = expected = 0
    for image, n in real_photos().values():
        found += min(n, len(detect_and_align(image, detector, min_face_size=s.min_face_size,
                                             min_score=s.min_det_score)))
        expected += n
    return found, expected


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=int, default=2000)
    ap.add_argument("--workers", type=int, nargs="+", default=[2])
    ap.add_argument("--shard-size", type=int, default=128)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--only", choices=["bare", "flow"], default=None)
    ap.add_argument("--detect-sample", type=int, default=500,
                    help="photos for the detection-alone comparison (0: skip it)")
    ap.add_argument("--baseline", type=Path, default=None, metavar="DIR",
                    help="another checkout whose nightly flow runs on the same files after "
                         "this one's (e.g. git worktree add /tmp/base COMMIT)")
    ap.add_argument("--dask", action="store_true", help="Also: thread runner vs a Dask "
                    "LocalCluster on the same files (benchmarks/ingest_dask.py)")
    args = ap.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    quiet_prefect(work)
    print(f"machine: {machine()}", flush=True)

    world = ensure_world(work, args.scenes)
    model = ensure_model(work)
    files = scene_files(world)
    print(f"world: {world} ({len(files)} files); model: {model}", flush=True)

    bare: dict[tuple[int, str], dict[str, float]] = {}
    flows: dict[tuple[int, str], dict[str, Any]] = {}
    based: dict[int, dict[str, Any]] = {}
    if args.only != "bare":
        print(f"Prefect temporary server up in {warm_prefect():.1f}s (not counted)", flush=True)
    # All sides back to back per worker count, so that load from elsewhere on a shared machine
    # hits every side of a ratio alike.
    for n in args.workers:
        for scale in ("full", "auto"):
            if args.only != "flow":
                bare[n, scale] = b = bare_loop(files, n, model, scale)
                print(f"bare x{n} {scale}: {b['images_per_s']:.1f} images/s", flush=True)
            if args.only != "bare":
                flows[n, scale] = f = flow_run(world, n, args.shard_size, model,
                                               work / f"throughput-{n}-{scale}", scale)
                print(f"flow x{n} {scale}: {f['images_per_s']:.1f} images/s", flush=True)
        if args.baseline is not None and args.only != "bare":
            based[n] = b = baseline_flow_run(args.baseline.resolve(), world, n, args.shard_size,
                                             model, work / f"throughput-{n}-base",
                                             work / "prefect_home_base")
            print(f"flow x{n} base ({args.baseline}): {b['images_per_s']:.1f} images/s",
                  flush=True)

    rows = []
    for n in args.workers:
        full = flows.get((n, "full"))
        for name in ("full", "auto"):
            b, f = bare.get((n, name)), flows.get((n, name))
            rows.append([
                n, name,
                b["images_per_s"] if b else "-", f["images_per_s"] if f else "-",
                f["images_per_s"] / full["images_per_s"] if f and full else "-",
                f["images_per_s"] / b["images_per_s"] if b and f else "-",
                f["seconds"] if f else "-",
                f["shard_seconds"] / n / f["seconds"] if f else "-",
                b["cpu_ms"] if b else "-", f["cpu_ms"] if f else "-",
                int((f or b)["faces"]) if f or b else "-",
            ])
    print_table(f"Ingest throughput, {len(files)} demo-world scenes, shard size "
                f"{args.shard_size} (targets at 2 workers: auto/full >= 2, flow/bare >= 0.8)",
                ["workers", "detection", "bare img/s", "flow img/s", "flow vs full", "flow/bare",
                 "flow s", "in shards", "bare CPU ms/img", "flow CPU ms/img", "faces"],
                rows)
    if based:
        brows = []
        for n, b in based.items():
            full, auto = flows.get((n, "full")), flows.get((n, "auto"))
            brows.append([n, b["images_per_s"], full["images_per_s"] if full else "-",
                          auto["images_per_s"] if auto else "-",
                          full["images_per_s"] / b["images_per_s"] if full else "-",
                          auto["images_per_s"] / b["images_per_s"] if auto else "-",
                          b["seconds"], int(b["faces"])])
        print_table(f"This checkout's flows against the baseline's ({args.baseline}), same "
                    "files, model and workers",
                    ["workers", "base img/s", "full img/s", "auto img/s", "full vs base",
                     "auto vs base", "base s", "base faces"], brows)
    if bare:
        print_table("Bare loop: CPU ms per image in each stage (its own thread's CPU time; "
                    "detect = FaceFinder.detect, score = the model on the crops and their flip)",
                    ["workers", "detection", *STAGES, "all"],
                    [[n, scale, *(b[f"{k}_ms"] for k in STAGES), b["cpu_ms"]]
                     for (n, scale), b in bare.items()])
    if flows:
        qrows = [[n, scale, f["matched"], f["true_faces"], f["recall"], f["precision"],
                  100 * f["lm_median"], 100 * f["lm_p90"]]
                 for (n, scale), f in flows.items()]
        print_table("Detection against the world's truth (IoU >= 0.5); landmark error in % of "
                    "the true inter-ocular distance (target: auto median <= full median + 1)",
                    ["workers", "detection", "matched", "true faces", "recall", "precision",
                     "landmark err median %", "p90 %"], qrows)
        for (n, scale), f in flows.items():
            print(f"  x{n} {scale}: detector_version {f['detector_version']}")
    if args.detect_sample:
        alone = detection_alone(files, args.detect_sample)
        print_table(f"Detection alone, one thread, full and auto interleaved photo by photo "
                    f"({alone['full']['photos']} photos)",
                    ["detection", "CPU ms/photo", "vs full", "faces kept"],
                    [[scale, a["ms"], alone["full"]["ms"] / a["ms"], a["faces"]]
                     for scale, a in alone.items()])
    photos = [[scale, *real_photo_faces(scale)] for scale in ("full", "auto")]
    print_table("Real photos installed packages ship (astronaut, Grace Hopper, insightface t1)",
                ["detection", "faces found", "faces there"], photos)
    print("\n'in shards': share of the flow's wall time its workers spent inside "
          "process_shard; the rest is planning, Prefect, select, summary, report.\n"
          "CPU ms/img: user + system CPU per image of the measuring process(es) (the flow's "
          "Prefect API server, another process, is not counted); less sensitive than img/s "
          "to load from elsewhere on a shared machine.")
    if args.dask:  # issue 18; self-contained in benchmarks/ingest_dask.py
        from ingest_dask import dask_comparison

        dask_comparison(world, model, work, max(args.workers), args.shard_size)


if __name__ == "__main__":
    main()
