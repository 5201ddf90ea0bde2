"""A mining round on a chiral image folder (glyphs, arrows), with flips off and on.

Usage::

    python benchmarks/chiral_mining.py [--seeds 0 1 2] [--labeled 10] [--unlabeled 320]

Per seed, a glyph world (:mod:`omnifer.testing.glyphs`: mirror-pair classes ``b``/``d`` and
``arrow_left``/``arrow_right``) and, for flips off (what ``omnifer train --format folder``
does by default) and flips on (what a face-minded default would do):

1. the labeled-only model: ``train_model`` on the few labeled images;
2. one round of mining through the pipeline: the unlabeled pool as an aligned source
   (``run_night``), selection (confidence >= 0.8, the flip gate as the card says),
   ``retrain`` on labeled + curated; both models tested on the same held-out split.

Prints test accuracy before and after, the gain, and the precision of the mined pseudo-labels;
the figures the tests only assert on (``tests/test_chiral_mining.py`` runs seed 1, flips off).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import DEFAULT_WORK, fresh_catalog, machine, print_table

TRAIN = {"arch": "fercnn_tiny", "input_size": 32, "epochs": 40, "batch_size": 16, "lr": 3e-3,
         "patience": 0, "val_fraction": 0.0, "threads": 1}


def mining_round(world, flips: bool, root: Path, seed: int) -> dict[str, float]:
    from omnifer.config import RetrainSettings
    from omnifer.curation.curated import select_curated
    from omnifer.curation.selection import SelectionPolicy
    from omnifer.labeled import read_dataset
    from omnifer.testing.faults import run_night
    from omnifer.training.config import TrainConfig
    from omnifer.training.retrain import retrain
    from omnifer.training.train import train_model

    train = {**TRAIN, "hflip": flips, "flip_tta": flips}
    v1 = root / "v1"
    train_model(read_dataset(world.labeled, "folder", "train", size=TRAIN["input_size"]),
                TrainConfig(**train), v1)
    catalog = fresh_catalog(root / "catalog", v1)
    source = json.dumps({"path": str(world.unlabeled), "faces": "aligned"})
    run_night(catalog, [source], "2026-12-03", shard_size=256)
    curated = select_curated(catalog, "2026-12-03", SelectionPolicy(min_confidence=0.8), "v1",
                             "bench")
    prefix = world.unlabeled.as_uri() + "/"
    rows = catalog.connect().execute("SELECT f.source_uri, c.label FROM curated c JOIN faces f "
                                     "USING (face_id)").fetchall()
    correct = sum(world.truth[uri.removeprefix(prefix)] == lab for uri, lab in rows)
    settings = RetrainSettings(recipe="curated", train=train,
                               labeled={"path": str(world.labeled), "format": "folder"})
    result = retrain(catalog, settings, curated_versions=[curated.curated_version],
                     work_dir=root / "work", version="v2")
    return {"before": result.parent_accuracy, "after": result.accuracy,
            "gain": result.accuracy - result.parent_accuracy, "mined": len(rows),
            "precision": correct / len(rows) if rows else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--labeled", type=int, default=10, help="labeled images per class")
    ap.add_argument("--test", type=int, default=30, help="test images per class")
    ap.add_argument("--unlabeled", type=int, default=320)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = ap.parse_args()
    import torch

    from omnifer.testing.glyphs import write_glyph_world

    torch.set_num_threads(1)
    print(f"machine: {machine()}", flush=True)
    rows, gains = [], {False: [], True: []}
    for seed in args.seeds:
        root = args.work.resolve() / f"chiral-s{seed}"
        world = write_glyph_world(root / "world", args.labeled, args.test, args.unlabeled,
                                  seed=seed)
        for flips in (False, True):
            t = time.perf_counter()
            r = mining_round(world, flips, root / f"flips-{'on' if flips else 'off'}", seed)
            gains[flips].append(r["gain"])
            print(f"seed {seed} flips {'on' if flips else 'off'}: {r} "
                  f"({time.perf_counter() - t:.0f}s)", flush=True)
            rows.append([seed, "on" if flips else "off", r["before"], r["after"],
                         100 * r["gain"], r["mined"], r["precision"]])
    for flips in (False, True):
        mean = 100 * sum(gains[flips]) / len(gains[flips])
        rows.append(["mean", "on" if flips else "off", "", "", mean, "", ""])
    print_table(f"One mining round on a chiral glyph folder ({args.labeled} labeled/class, "
                f"{args.unlabeled} unlabeled, {args.test} test/class, 4 classes)",
                ["seed", "flips", "labeled-only acc", "labeled+mined acc", "gain (points)",
                 "mined", "pseudo-label precision"], rows)


if __name__ == "__main__":
    main()
