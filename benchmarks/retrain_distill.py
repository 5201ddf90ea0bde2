"""Distillation and retraining on the demo world: is a distilled set worth its training time?

Usage::

    python benchmarks/retrain_distill.py --only retrain            # 20 000 scenes, 10 seeds
    python benchmarks/retrain_distill.py --only compare             # the IPC 10 method table

1. Builds, once (cached under ``--work``), a demo world like ``make demo``'s (seed 7, 40 labeled
   + 30 test faces per class) with ``--scenes`` unlabeled scenes, trains the primitive model
   with the demo's settings, and mines one night into a catalog of its own (detect, align,
   score, select). The curated set is then selected again with ``omnifer.yaml``'s policy,
   ``--min-confidence`` and ``--top-k-per-class``: by default at most the 200 most confident
   faces per predicted class, which keeps every class in and none dominant. Every arm is
   scored on a test split of ``--test-per-class`` faces per class from the same generator.
2. ``compare``: distils the curated set at IPC 10 with DM and gradient matching, builds a random
   subset and herding of the same size, trains ``--num-models`` fresh ConvNets on each and tests
   them on that test split: mean ± std, and the wall time of each distillation.
3. ``retrain``: retrains the FER model from scratch (the demo's TrainConfig) on labeled only,
   labeled + full curated and labeled + DM-distilled (``--retrain-ipc`` images per class, made
   once and cached; soft targets from the primitive model, ``--teacher-weight``, as
   ``omnifer retrain`` does), with the same seeds for every recipe, so the gain over labeled
   only is a paired difference per seed. Prints test accuracy, training time and images seen
   (images × epochs run, which does not depend on the machine's load). Labeled + full curated gets
   ``--full-seeds`` seeds: with 20 000 scenes one run of it costs more than all the others.

More scenes mean a bigger curated set: the full-curated retrain grows with it, the distilled one
does not. CPU settings by default; ``--dm-iterations 1000 --width 128`` is the paper's setting
for a GPU worker.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq
import torch
from _common import REPO, fresh_catalog, machine, print_table

from omnifer.catalog import DataCatalog
from omnifer.config import RetrainSettings, load_catalog, load_settings
from omnifer.curation import curated
from omnifer.curation.curated import select_curated
from omnifer.curation.selection import policy_from_settings
from omnifer.distill import DistillConfig, DistilledSet, ParquetClassSampler
from omnifer.distill.evaluation import compare_methods
from omnifer.labeled import read_rafdb
from omnifer.models.checkpoints import load_checkpoint
from omnifer.pipeline import ingest
from omnifer.sources import LocalSource
from omnifer.training.config import TrainConfig
from omnifer.training.evaluate import evaluate_model
from omnifer.training.retrain import labeled_from_distilled, with_teacher_targets
from omnifer.training.train import train_model

SEED = 7
DATE = "2026-01-01"


def build(work: Path, scenes: int) -> tuple[Path, DataCatalog, Path]:
    """World, primitive model and one mined night, each made once."""
    from omnifer.demo.world import generate_world

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
    result = select_curated(catalog, DATE, policy_from_settings(settings), "v1", "bench")
    marker.write_text(result.model_dump_json())
    print(f"  {result.selected} curated of {result.candidates} faces, "
          f"{time.monotonic() - t:.0f}s", flush=True)
    return world, catalog, model


def distill_comparison(args: argparse.Namespace, catalog: DataCatalog, world: Path,
                       work: Path) -> tuple[dict, list[str], ParquetClassSampler]:
    crops = _crops_path(args, catalog)
    curated.export_crops(catalog, curated.current_versions(catalog), crops)
    sampler = ParquetClassSampler(crops, None, args.image_size)
    classes = sampler.classes
    test_x, test_y, _ = _test_split(args.test_labeled, args.image_size, classes)
    cfg = DistillConfig(ipc=args.ipc, image_size=args.image_size, net_width=args.width,
                        batch_real=args.batch_real, seed=0, device=args.device)
    results = compare_methods(
        sampler, classes, test_x, test_y, cfg, methods=("dm", "gm"),
        method_overrides={"dm": {"iterations": args.dm_iterations},
                          "gm": {"iterations": args.gm_iterations}},
        num_models=args.num_models, epochs=args.epochs, progress=False)
    return results, classes, sampler


def _test_split(labeled: Path, size: int, classes: list[str]):
    """The labeled test split as normalised RGB tensors, restricted to ``classes``."""
    import numpy as np

    from omnifer.imaging.tensors import normalize

    test = read_rafdb(labeled, "test", size=size)
    names = [test.classes[i] for i in test.hard_labels()]
    keep = np.array([n in classes for n in names])
    images = test.images[keep][..., ::-1].copy()  # BGR → RGB
    labels = torch.tensor([classes.index(n) for n in names if n in classes])
    rgb = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return normalize(rgb), labels, classes


def _crops_path(args: argparse.Namespace, catalog: DataCatalog) -> Path:
    """The exported curated crops, named after the curated version(s) they hold."""
    tag = hashlib.sha256(",".join(curated.current_versions(catalog)).encode()).hexdigest()[:8]
    return args.work / f"curated-{args.scenes}-{tag}.parquet"


def reselect(catalog: DataCatalog, overrides: dict) -> None:
    """Select the mined night again with ``omnifer.yaml``'s policy changed by ``overrides`` (a new
    curated version) unless its newest curated version already used that policy."""
    from omnifer.curation.selection import SelectionPolicy

    raw = {**load_settings().selection, **overrides}
    if "min_confidence" in overrides:
        raw["default_confidence"] = overrides["min_confidence"]
    policy = SelectionPolicy(**raw)
    (latest,) = curated.current_versions(catalog)
    con = catalog.connect()
    used = json.loads(con.execute("SELECT any_value(policy) FROM curated WHERE "
                                  "curated_version = ?", [latest]).fetchone()[0])
    if used == json.loads(policy.to_json()):
        return
    result = select_curated(catalog, DATE, policy, "v1", "bench")
    print(f"  re-selected with {overrides}: {result.selected} curated", flush=True)


def larger_test_split(work: Path, per_class: int) -> Path:
    """The labeled tree whose test split every arm is scored on.

    The mined world's own split has 30 faces per class: 210 faces give a standard error of
    about 3.4 points, as large as the gains measured here. A bigger split comes from the same
    generator and seed (each face's randomness depends only on seed, split and index, so the
    train split is byte-identical and no test face is a training face); 150 per class gives
    about 1.5 points.
    """
    from omnifer.demo.world import generate_world

    out = work / f"test-{per_class}"
    if not (out / "world.json").exists():
        generate_world(out, seed=SEED, labeled_per_class=40, test_per_class=per_class,
                       unlabeled_images=0)
    return out / "labeled"


def distilled_for_retraining(args: argparse.Namespace, catalog: DataCatalog, work: Path,
                             classes: list[str]) -> DistilledSet:
    """The DM set the retrain arm uses, made once per setting (cached like the mined night)."""
    from omnifer.distill import distill

    cfg = DistillConfig(ipc=args.retrain_ipc, image_size=args.retrain_image_size,
                        net_width=args.width, batch_real=args.batch_real, seed=0,
                        device=args.device, iterations=args.dm_iterations)
    key = hashlib.sha256((cfg.model_dump_json(exclude={"device"})
                          + ",".join(curated.current_versions(catalog))).encode()).hexdigest()[:10]
    path = work / f"dm-{args.scenes}-ipc{args.retrain_ipc}-{key}.parquet"
    if path.exists():
        meta = json.loads(path.with_suffix(".json").read_text())
        dset = DistilledSet.from_arrow(pq.read_table(path))
        dset.wall_time_s = meta["wall_time_s"]
        return dset
    sampler = ParquetClassSampler(_crops_path(args, catalog), classes, args.retrain_image_size)
    dset = distill(sampler, classes, cfg, progress=False)
    pq.write_table(dset.to_arrow(), path)
    path.with_suffix(".json").write_text(json.dumps({"wall_time_s": dset.wall_time_s}))
    return dset


def retrain_comparison(args: argparse.Namespace, catalog: DataCatalog, world: Path,
                       work: Path, classes: list[str]) -> dict:
    """Each recipe trained with the same seeds; accuracy, wall time and images seen per run.

    A finished checkpoint under ``WORK/retrain`` is kept (its card holds the measured training
    time), so a rerun only trains what is missing; ``--retrain-fresh`` trains everything again.
    """
    labeled = read_rafdb(world / "labeled", "train")
    test = read_rafdb(args.test_labeled, "test")
    teacher = load_checkpoint(work / "primitive-v1") if args.teacher_weight else None
    dm: list[DistilledSet] = []

    def distilled() -> list:
        dm.append(distilled_for_retraining(args, catalog, work, classes))
        data = labeled_from_distilled(dm[0], "dm", copies=args.distilled_copies)
        if teacher is not None:
            data = with_teacher_targets(data, teacher, args.teacher_weight)
        return [data]

    def mined() -> list:
        return [curated.to_labeled(catalog, curated.current_versions(catalog),
                                   TrainConfig().input_size, work, classes=labeled.classes)]

    dm_tag = f"distilled-ipc{args.retrain_ipc}x{args.distilled_copies}"
    soft = ""
    if args.teacher_weight:
        dm_tag += f"-teacher{args.teacher_weight:g}"
        soft = f", soft targets {args.teacher_weight:g}"
    recipes = {"labeled only": ("labeled", lambda: labeled, list, args.seeds),
               "labeled + full curated": ("curated", lambda: labeled, mined,
                                          args.full_seeds or args.seeds),
               f"labeled + distilled (DM, IPC {args.retrain_ipc}{soft})": (
                   dm_tag, lambda: labeled, distilled, args.seeds)}
    if teacher is not None:
        # The control: the same soft targets on the labeled images alone. What the teacher
        # passes on by itself, without a mined face.
        recipes[f"labeled only{soft} (control)"] = (
            f"labeled-teacher{args.teacher_weight:g}",
            lambda: with_teacher_targets(labeled, teacher, args.teacher_weight), list,
            args.seeds)
    runs: dict[str, list[dict]] = {name: [] for name in recipes}
    for name in sorted(recipes, key=lambda n: "full" in n):  # the costly one last
        tag, make_train, make_extra, seeds = recipes[name]
        train, extra = make_train(), make_extra()
        for seed in range(seeds):
            out = work / "retrain" / f"{args.scenes}-{tag}-s{seed}"
            card = train_model(train, TrainConfig(seed=SEED + seed,
                                                  resume=not args.retrain_fresh), out,
                               extra=extra)
            acc = evaluate_model(load_checkpoint(out), test)["accuracy"]
            runs[name].append({"seed": seed, "accuracy": acc,
                               "seconds": card.metrics["train_seconds"],
                               "images_seen": card.metrics["n_train"] * card.metrics["epochs_run"],
                               "images": len(labeled) + sum(len(e) for e in extra)})
            print(f"  {name}, seed {seed}: {100 * acc:.1f} %, "
                  f"{card.metrics['train_seconds']:.0f}s", flush=True)
    return {"runs": runs, "distill_s": dm[0].wall_time_s, "distilled": len(dm[0].labels)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=int, default=20000)
    ap.add_argument("--min-confidence", type=float, default=0.4,
                    help="select the mined night again with this confidence threshold "
                         "(the rest of the policy comes from omnifer.yaml)")
    ap.add_argument("--top-k-per-class", type=int, default=200,
                    help="keep at most this many faces per predicted class (the most "
                    "confident): a class-balanced curated set (0: no cap)")
    ap.add_argument("--test-per-class", type=int, default=150,
                    help="score every arm on a test split of this many faces per class from "
                    "the same generator and seed (0: the mined world's own 30 per class)")
    ap.add_argument("--work", type=Path, default=REPO / "demo" / "bench" / "retrain")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch-real", type=int, default=32)
    ap.add_argument("--dm-iterations", type=int, default=300)
    ap.add_argument("--gm-iterations", type=int, default=10)
    ap.add_argument("--num-models", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=10,
                    help="retraining seeds (the same for every recipe: gains are paired); "
                    "with 3, the seed-to-seed spread of labeled only (±3.3 points) decides")
    ap.add_argument("--full-seeds", type=int, default=1,
                    help="seeds for labeled + full curated (0: --seeds); one run of it costs "
                    "as much as all the others together")
    ap.add_argument("--retrain-ipc", type=int, default=50,
                    help="IPC of the DM set used for retraining (the comparison uses --ipc)")
    ap.add_argument("--distilled-copies", type=int, default=1,
                    help="each distilled image counts this many times in retraining")
    ap.add_argument("--teacher-weight", type=float, default=RetrainSettings().teacher_weight,
                    help="soft targets for the distilled images: this share of the primitive "
                    "model's softmax, the rest on their own class (0: one-hot labels; "
                    "default: retrain.teacher_weight's default)")
    ap.add_argument("--retrain-image-size", type=int, default=32,
                    help="image size of the DM set used for retraining")
    ap.add_argument("--retrain-fresh", action="store_true",
                    help="retrain every recipe even where WORK/retrain holds its checkpoint")
    ap.add_argument("--only", choices=["compare", "retrain", "both"], default="both")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print(f"machine: {machine()}")
    world, catalog, _ = build(args.work, args.scenes)
    reselect(catalog, {"min_confidence": args.min_confidence,
                       "top_k_per_class": args.top_k_per_class or None})
    args.test_labeled = (larger_test_split(args.work, args.test_per_class) if args.test_per_class
                         else world / "labeled")
    args.test_desc = (f"a test split of {args.test_per_class} faces per class"
                      if args.test_per_class else "the world's own test split")
    n_curated = curated.count_rows(catalog, curated.current_versions(catalog))
    print(f"curated set: {n_curated} faces mined from {args.scenes} scenes")

    results: dict = {}
    retrained: dict = {}
    if args.only == "retrain":
        crops = _crops_path(args, catalog)
        if not crops.exists():
            curated.export_crops(catalog, curated.current_versions(catalog), crops)
        classes = ParquetClassSampler(crops, None, args.image_size).classes
    else:
        results, classes, _ = distill_comparison(args, catalog, world, args.work)
        print_comparison(args, results, classes)
    if args.only != "compare":
        retrained = retrain_comparison(args, catalog, world, args.work, classes)
        print_retrain(args, retrained)
    (args.work / "last-run.json").write_text(json.dumps(
        {"distill": results, "retrain": retrained, "args": vars(args)}, default=str, indent=1))
    print(f"\nwhole benchmark {time.monotonic() - started:.0f}s")


def print_comparison(args: argparse.Namespace, results: dict, classes: list[str]) -> None:
    rows = [[name, 100 * r["mean"], 100 * r["std"], len(r["accs"]),
             r["wall_time_s"] if r["wall_time_s"] == r["wall_time_s"] else ""]
            for name, r in results.items()]
    print_table(f"IPC {args.ipc} sets from the curated faces → ConvNet-3 (width {args.width}, "
                f"{args.epochs} epochs, DSA), tested on {args.test_desc} "
                f"({len(classes)} classes, chance {100 / len(classes):.1f} %)",
                ["set", "acc %", "± std", "models", "build s"], rows)
    gain = 100 * (results["dm"]["mean"] - results["random"]["mean"])
    print(f"DM − random subset of the same size: {gain:+.1f} points")


def print_retrain(args: argparse.Namespace, result: dict) -> None:
    runs = result["runs"]
    names = list(runs)
    base = {r["seed"]: r["accuracy"] for r in runs[names[0]]}

    def pm(values: list[float]) -> str:
        if len(values) < 2:
            return f"{values[0]:+.1f}"
        return f"{statistics.mean(values):+.1f} ± {statistics.stdev(values):.1f}"

    rows = []
    for name in names:
        accs = [100 * r["accuracy"] for r in runs[name]]
        sd = f"{statistics.stdev(accs):.1f}" if len(accs) > 1 else ""
        gains = [100 * (r["accuracy"] - base[r["seed"]]) for r in runs[name] if r["seed"] in base]
        rows.append([name, runs[name][0]["images"], len(accs), f"{statistics.mean(accs):.1f}",
                     sd, "" if name == names[0] else pm(gains),
                     round(statistics.mean(r["seconds"] for r in runs[name]), 1),
                     statistics.mean(r["images_seen"] for r in runs[name]) / 1000])
    rows.append(["(DM distillation itself, once)", result["distilled"], "", "", "", "",
                 round(result["distill_s"], 1), ""])
    print_table("Retraining the FER model from scratch (demo TrainConfig), the same seeds for "
                f"every recipe, tested on {args.test_desc}",
                ["training set", "images", "seeds", "test acc %", "± std",
                 "paired gain (pts)", "train s", "k images seen"], rows)
    full, dist = names[1], names[2]
    gains = [100 * (r["accuracy"] - base[r["seed"]]) for r in runs[dist]]
    wins = sum(g > 0 for g in gains)
    t_dist = statistics.mean(r["seconds"] for r in runs[dist])
    t_full = statistics.mean(r["seconds"] for r in runs[full])
    seen = (statistics.mean(r["images_seen"] for r in runs[dist])
            / statistics.mean(r["images_seen"] for r in runs[full]))
    print(f"labeled + distilled vs labeled only: {pm(gains)} points (paired over {len(gains)} "
          f"seeds, better on {wins}); its training time is {t_dist / t_full:.2f} × that of "
          f"labeled + full curated ({seen:.2f} × its images seen)")
    if len(names) > 3:
        control = {r["seed"]: r["accuracy"] for r in runs[names[3]]}
        over = [100 * (r["accuracy"] - control[r["seed"]]) for r in runs[dist]
                if r["seed"] in control]
        print(f"labeled + distilled vs the teacher alone (control): {pm(over)} points "
              f"(better on {sum(g > 0 for g in over)} of {len(over)} seeds)")


if __name__ == "__main__":
    main()
