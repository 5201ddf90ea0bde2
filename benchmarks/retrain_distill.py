"""Distillation and retraining on the demo world: is a distilled set worth its training time?

Usage::

    python benchmarks/retrain_distill.py [--scenes 6000] [--seeds 3] [--num-models 3]

1. Builds, once (cached under ``--work``), a demo world like ``make demo``'s (seed 7, 40 labeled
   + 30 test faces per class) with ``--scenes`` unlabeled scenes, trains the primitive model
   with the demo's settings, and mines one night into a catalog of its own (detect, align,
   score, select with ``omnifer.yaml``'s policy) — the curated set.
2. Distils the curated set at IPC 10 with DM and gradient matching, builds a random subset and
   herding of the same size, trains ``--num-models`` fresh ConvNets on each and tests them on
   the world's labeled test split: mean ± std, and the wall time of each distillation.
3. Retrains the FER model (the demo's TrainConfig) on labeled only, labeled + full curated and
   labeled + DM-distilled, over ``--seeds`` seeds: test accuracy and training time.

More scenes mean a bigger curated set: the full-curated retrain grows with it, the distilled one
does not. CPU settings by default; ``--dm-iterations 1000 --width 128`` is the paper's setting
for a GPU worker.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from _common import REPO, fresh_catalog, machine, print_table

from omnifer import curated, ingest
from omnifer.catalog import DataCatalog
from omnifer.config import load_catalog, load_settings
from omnifer.datasets import read_rafdb
from omnifer.distill import DistillConfig, ParquetClassSampler
from omnifer.distill_eval import compare_methods
from omnifer.evaluate import evaluate_model
from omnifer.model import load_checkpoint
from omnifer.retrain import labeled_from_distilled
from omnifer.sources import LocalSource
from omnifer.train import TrainConfig, train_model

SEED = 7
DATE = "2026-01-01"


def build(work: Path, scenes: int) -> tuple[Path, DataCatalog, Path]:
    """World, primitive model and one mined night, each made once."""
    from omnifer.synth import generate_world

    world = work / f"world-{scenes}"
    if not (world / "world.json").exists():
        t = time.monotonic()
        print(f"rendering {scenes} scenes into {world} (once) ...", flush=True)
        generate_world(world, seed=SEED, labeled_per_class=40, test_per_class=30,
                       unlabeled_images=scenes)
        print(f"  {time.monotonic() - t:.0f}s", flush=True)
    model = work / "primitive-v1"
    if not (model / "card.json").exists():
        train_model(read_rafdb(world / "labeled", "train"), TrainConfig(seed=SEED), model)
    cat_dir = work / f"mined-{scenes}"
    marker = cat_dir / "mined.json"
    if marker.exists():
        catalog = DataCatalog(load_catalog(cat_dir / "data_catalog.yaml"))
        return world, catalog, model
    catalog = fresh_catalog(cat_dir, model)
    t = time.monotonic()
    print(f"mining {scenes} scenes (detect, align, score, select) ...", flush=True)
    settings = load_settings()
    params = ingest.IngestParams(**settings.ingest.model_dump(exclude={"shard_size", "workers"}),
                                 model_version="v1", model_uri=str(model))
    plan = ingest.plan_ingest(catalog, [LocalSource(root=str(world / "unlabeled"))], DATE,
                              params, shard_size=256)
    torch.set_num_threads(1)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda s: ingest.process_shard(catalog, plan, s, "bench"), plan.shards))
    torch.set_num_threads(2)
    result = ingest.select_curated(catalog, DATE, settings.selection_policy(), "v1", "bench")
    marker.write_text(result.model_dump_json())
    print(f"  {result.selected} curated of {result.candidates} faces, "
          f"{time.monotonic() - t:.0f}s", flush=True)
    return world, catalog, model


def distill_comparison(args: argparse.Namespace, catalog: DataCatalog, world: Path,
                       work: Path) -> tuple[dict, list[str], ParquetClassSampler]:
    crops = work / f"curated-{args.scenes}.parquet"
    curated.export_crops(catalog, curated.current_versions(catalog), crops)
    sampler = ParquetClassSampler(crops, None, args.image_size)
    classes = sampler.classes
    test_x, test_y, _ = _test_split(world, args.image_size, classes)
    cfg = DistillConfig(ipc=args.ipc, image_size=args.image_size, net_width=args.width,
                        batch_real=args.batch_real, seed=0, device=args.device)
    results = compare_methods(
        sampler, classes, test_x, test_y, cfg, methods=("dm", "gm"),
        method_overrides={"dm": {"iterations": args.dm_iterations},
                          "gm": {"iterations": args.gm_iterations}},
        num_models=args.num_models, epochs=args.epochs, progress=False)
    return results, classes, sampler


def _test_split(world: Path, size: int, classes: list[str]):
    """The labeled test split as normalised RGB tensors, restricted to ``classes``."""
    import numpy as np

    from omnifer.distill import normalize

    test = read_rafdb(world / "labeled", "test", size=size)
    names = [test.classes[i] for i in test.hard_labels()]
    keep = np.array([n in classes for n in names])
    images = test.images[keep][..., ::-1].copy()  # BGR → RGB
    labels = torch.tensor([classes.index(n) for n in names if n in classes])
    rgb = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return normalize(rgb), labels, classes


def retrain_comparison(args: argparse.Namespace, catalog: DataCatalog, world: Path,
                       work: Path, classes: list[str], sampler: ParquetClassSampler
                       ) -> list[list]:
    from omnifer.distill import distill

    cfg = DistillConfig(ipc=args.ipc, image_size=args.retrain_image_size, net_width=args.width,
                        batch_real=args.batch_real, seed=0, device=args.device,
                        iterations=args.dm_iterations)
    if args.retrain_image_size != args.image_size:
        sampler = ParquetClassSampler(work / f"curated-{args.scenes}.parquet", classes,
                                      args.retrain_image_size)
    t = time.monotonic()
    dm = distill(sampler, classes, cfg, progress=False)
    distill_s = time.monotonic() - t
    labeled = read_rafdb(world / "labeled", "train")
    test = read_rafdb(world / "labeled", "test")
    mined = curated.to_labeled(catalog, curated.current_versions(catalog),
                               TrainConfig().input_size, work, classes=labeled.classes)
    distilled = labeled_from_distilled(dm, "dm", copies=args.distilled_copies)
    recipes = {"labeled only": [], "labeled + full curated": [mined],
               "labeled + distilled (DM)": [distilled]}
    rows = []
    for name, extra in recipes.items():
        accs, secs = [], []
        for seed in range(args.seeds):
            out = work / "retrain" / f"{name.replace(' ', '_')}-s{seed}"
            t = time.monotonic()
            card = train_model(labeled, TrainConfig(seed=SEED + seed, resume=False), out,
                               extra=extra)
            secs.append(card.metrics.get("train_seconds", time.monotonic() - t))
            accs.append(evaluate_model(load_checkpoint(out), test)["accuracy"])
        n = len(labeled) + sum(len(e) for e in extra)
        rows.append([name, n, 100 * statistics.mean(accs),
                     100 * (statistics.stdev(accs) if len(accs) > 1 else 0.0),
                     statistics.mean(secs)])
    rows.append(["(DM distillation itself)", args.ipc * len(classes), "", "", distill_s])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=int, default=6000)
    ap.add_argument("--work", type=Path, default=REPO / "demo" / "bench" / "retrain")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch-real", type=int, default=32)
    ap.add_argument("--dm-iterations", type=int, default=300)
    ap.add_argument("--gm-iterations", type=int, default=10)
    ap.add_argument("--num-models", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--distilled-copies", type=int, default=4,
                    help="each distilled image counts this many times in retraining")
    ap.add_argument("--retrain-image-size", type=int, default=32,
                    help="image size of the DM set used for retraining")
    ap.add_argument("--only", choices=["compare", "retrain", "both"], default="both")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print(f"machine: {machine()}")
    world, catalog, _ = build(args.work, args.scenes)
    n_curated = curated.count_rows(catalog, curated.current_versions(catalog))
    print(f"curated set: {n_curated} faces mined from {args.scenes} scenes")

    results: dict = {}
    if args.only == "retrain":
        crops = args.work / f"curated-{args.scenes}.parquet"
        curated.export_crops(catalog, curated.current_versions(catalog), crops)
        sampler = ParquetClassSampler(crops, None, args.image_size)
        classes = sampler.classes
    else:
        results, classes, sampler = distill_comparison(args, catalog, world, args.work)
        print_comparison(args, results, classes)
    if args.only != "compare":
        print_retrain(args, retrain_comparison(args, catalog, world, args.work, classes,
                                               sampler))
    (args.work / "last-run.json").write_text(json.dumps(
        {"distill": results, "args": vars(args)}, default=str, indent=1))
    print(f"\nwhole benchmark {time.monotonic() - started:.0f}s")


def print_comparison(args: argparse.Namespace, results: dict, classes: list[str]) -> None:
    rows = [[name, 100 * r["mean"], 100 * r["std"], len(r["accs"]),
             r["wall_time_s"] if r["wall_time_s"] == r["wall_time_s"] else ""]
            for name, r in results.items()]
    print_table(f"IPC {args.ipc} sets from the curated faces → ConvNet-3 (width {args.width}, "
                f"{args.epochs} epochs, DSA), tested on the labeled test split "
                f"({len(classes)} classes, chance {100 / len(classes):.1f} %)",
                ["set", "acc %", "± std", "models", "build s"], rows)
    gain = 100 * (results["dm"]["mean"] - results["random"]["mean"])
    print(f"DM − random subset of the same size: {gain:+.1f} points")


def print_retrain(args: argparse.Namespace, rows: list[list]) -> None:
    print_table(f"Retraining the FER model (demo TrainConfig, {args.seeds} seeds), "
                "tested on the labeled test split",
                ["training set", "images", "test acc %", "± std", "train s"], rows)
    base, full, dist = rows[0], rows[1], rows[2]
    print(f"labeled + distilled vs labeled only: {dist[2] - base[2]:+.1f} points; "
          f"its training time is {dist[4] / full[4]:.2f} × that of labeled + full curated "
          f"({full[2] - base[2]:+.1f} points)")


if __name__ == "__main__":
    main()
