"""Calibrated confidence and an ONNX teacher, on the demo world.

Usage::

    python benchmarks/calibration.py [--seeds 7 8 9] [--pool-per-class 100] [--work DIR]
    python benchmarks/calibration.py --seeds 1 --epochs 1 --pool-per-class 10 --work /tmp/b

Per seed (everything is cached under ``--work``; a rerun only prints):

1. The demo world's labeled set (world seed 7, 40 train / 30 test faces per class, as
   ``make demo``) and a pool of 100 faces per class from another world (seed 1007) whose true
   labels are known. The primitive model is trained with the demo's settings
   (``TrainConfig(seed=...)``); training fits its temperature on the validation split.
2. The pool is scored twice, raw (T = 1) and calibrated, and a confidence-only policy
   (``min_confidence`` t, no other gate) keeps faces at t = 0.6 / 0.8 / 0.9: how many, how
   many of their pseudo-labels are right, and their mean confidence (what a calibrated
   threshold promises). ECE on the labeled test split, before and after.
3. The model is exported to ONNX, imported as a model version (``import_onnx``: the labeled
   train split gives the prototypes; the temperature is the card's) into a throw-away
   catalog, and the *ONNX* model mines the pool (onnxruntime; ``omnifer.yaml``'s selection
   policy). A torch student (same recipe and seed) is trained on labeled + the mined faces
   with soft targets from the ONNX teacher (``--teacher-weight``, as
   ``retrain.curated_teacher_weight`` does), and both are tested on the labeled test split:
   the retrain gain is student − teacher, the figure promotion compares.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

import numpy as np
from _common import DEFAULT_WORK, fresh_catalog, machine, print_table

from omnifer.config import load_settings
from omnifer.curation.scoring import Scorer
from omnifer.curation.selection import SelectionPolicy, adapt_policy, select_samples
from omnifer.labeled import LabeledData, read_rafdb
from omnifer.models.calibration import expected_calibration_error
from omnifer.models.checkpoints import load_checkpoint
from omnifer.models.onnx_import import export_onnx, import_onnx
from omnifer.models.versions import local_checkpoint
from omnifer.training.evaluate import evaluate_model, pseudo_label_precision
from omnifer.training.retrain import with_teacher_targets
from omnifer.training.train import TrainConfig, train_model

WORLD_SEED = 7
THRESHOLDS = (0.6, 0.8, 0.9)


def data(work: Path, pool_per_class: int) -> tuple[LabeledData, LabeledData, LabeledData]:
    """(labeled train, labeled test, pool) — worlds rendered once."""
    from omnifer.demo import generate_world

    world, pool_world = work / "world", work / f"pool-{pool_per_class}"
    if not (world / "world.json").exists():
        generate_world(world, seed=WORLD_SEED, labeled_per_class=40, test_per_class=30,
                       unlabeled_images=0)
    if not (pool_world / "world.json").exists():
        generate_world(pool_world, seed=WORLD_SEED + 1000, labeled_per_class=pool_per_class,
                       test_per_class=1, unlabeled_images=0)
    return (read_rafdb(world / "labeled", "train"), read_rafdb(world / "labeled", "test"),
            read_rafdb(pool_world / "labeled", "train"))


def mined(pool: LabeledData, selected) -> LabeledData:
    """The selected pool faces with their *pseudo*-labels (``copies`` times each)."""
    index = {name: i for i, name in enumerate(pool.names)}
    rows, labels = [], []
    for fid, lab, cp in zip(*(selected[c].to_pylist() for c in ("face_id", "label", "copies")),
                            strict=True):
        rows += [index[fid]] * int(cp)
        labels += [pool.classes.index(lab)] * int(cp)
    return LabeledData(pool.images[rows], np.array(labels, np.int64), pool.classes,
                       [pool.names[i] for i in rows], source="mined pool")


def run_seed(seed: int, args: argparse.Namespace, train: LabeledData, test: LabeledData,
             pool: LabeledData) -> dict:
    work = args.work
    cfg = TrainConfig(seed=seed, epochs=args.epochs)
    t = time.monotonic()
    card = train_model(train, cfg, work / f"primitive-s{seed}")
    train_s = time.monotonic() - t
    loaded = load_checkpoint(work / f"primitive-s{seed}")
    truth = {n: pool.classes[int(y)] for n, y in zip(pool.names, pool.hard_labels(),
                                                     strict=True)}
    out: dict = {"seed": seed, "temperature": card.temperature, "train_s": train_s,
                 "thresholds": {}}
    y_test = test.remapped(loaded.classes).hard_labels()
    for label, calibrated in (("raw", False), ("calibrated", True)):
        scorer = Scorer(loaded, calibrated=calibrated)
        out[f"ece_{label}"] = expected_calibration_error(scorer.score(test.images).probs,
                                                         y_test)
        scores = scorer.score(pool.images).to_arrow(pool.names)
        for th in THRESHOLDS:
            sel = select_samples(scores, SelectionPolicy(min_confidence=th,
                                                         default_confidence=th,
                                                         require_flip_agreement=False))
            prec = pseudo_label_precision(sel, truth)
            conf = float(np.mean(sel["confidence"].to_numpy())) if sel.num_rows else np.nan
            out["thresholds"][(label, th)] = (sel.num_rows, prec["precision"], conf)

    # The same model as an imported ONNX version: it mines, it teaches, it is what to beat.
    onnx_file = export_onnx(loaded, work / f"primitive-s{seed}.onnx")
    catalog = fresh_catalog(work / f"catalog-s{seed}")
    c = loaded.card
    outcome = import_onnx(catalog, onnx_file, "v1", list(c.classes), mean=c.mean, std=c.std,
                          color="bgr", input_size=c.input_size, logits_output="logits",
                          embedding_output="features", labeled=train,
                          temperature=c.temperature, promote=True)
    teacher = load_checkpoint(local_checkpoint(outcome.uri, "v1"))
    policy = SelectionPolicy(**load_settings().selection)
    scores = Scorer(teacher).score(pool.images).to_arrow(pool.names)
    selected = select_samples(scores, adapt_policy(policy, scores))
    extra = with_teacher_targets(mined(pool, selected), teacher, args.teacher_weight)
    t = time.monotonic()
    train_model(train, cfg, work / f"student-s{seed}-w{args.teacher_weight:g}", extra=[extra])
    out["student_s"] = time.monotonic() - t
    student = load_checkpoint(work / f"student-s{seed}-w{args.teacher_weight:g}")
    out["mined"] = selected.num_rows
    out["mined_precision"] = pseudo_label_precision(selected, truth)["precision"]
    out["teacher_acc"] = evaluate_model(teacher, test)["accuracy"]
    out["torch_acc"] = evaluate_model(loaded, test)["accuracy"]
    out["student_acc"] = evaluate_model(student, test)["accuracy"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    parser.add_argument("--pool-per-class", type=int, default=100)
    parser.add_argument("--teacher-weight", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=30, help="the demo's (TrainConfig)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK / "calibration")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    print(machine(), flush=True)
    train, test, pool = data(args.work, args.pool_per_class)
    results = []
    for seed in args.seeds:
        print(f"seed {seed} ...", flush=True)
        results.append(run_seed(seed, args, train, test, pool))

    rows = []
    for th in THRESHOLDS:
        for label in ("raw", "calibrated"):
            got = [r["thresholds"][(label, th)] for r in results]
            rows.append([th, label, statistics.mean(g[0] for g in got),
                         _mean([g[1] for g in got]), _mean([g[2] for g in got])])
    print_table(f"pseudo-labels kept from a {len(pool)}-face pool (confidence ≥ t only), "
                f"mean of {len(results)} seeds", ["t", "confidence", "kept", "precision",
                                                   "mean confidence"], rows)
    print_table("calibration per seed (labeled test split)",
                ["seed", "temperature", "ECE raw", "ECE calibrated", "train s"],
                [[r["seed"], r["temperature"], r["ece_raw"], r["ece_calibrated"], r["train_s"]]
                 for r in results])
    print_table(f"ONNX teacher -> torch student (labeled + mined, teacher weight "
                f"{args.teacher_weight:g}), labeled test split ({len(test)} faces)",
                ["seed", "mined", "mined precision", "torch model", "ONNX teacher",
                 "student", "gain"],
                [[r["seed"], r["mined"], r["mined_precision"], r["torch_acc"], r["teacher_acc"],
                  r["student_acc"], r["student_acc"] - r["teacher_acc"]] for r in results])
    gains = [r["student_acc"] - r["teacher_acc"] for r in results]
    sd = statistics.stdev(gains) if len(gains) > 1 else 0.0
    print(f"\nretrain gain with the ONNX teacher: {statistics.mean(gains):+.3f} ± {sd:.3f} "
          f"(better on {sum(g > 0 for g in gains)} of {len(gains)} seeds)")


def _mean(values: list[float]) -> float:
    ok = [v for v in values if v == v]
    return statistics.mean(ok) if ok else float("nan")


if __name__ == "__main__":
    main()
