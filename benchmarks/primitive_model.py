"""Primitive model → pseudo-labels → retraining, on seeded synthetic faces, for three seeds.

Usage::

    python benchmarks/primitive_model.py [--seeds 0 1 2] [--epochs 30] [--pool-per-class 100]

Per seed it trains the primitive model on the labeled set (40 per class), measures test
accuracy, scores an "unlabeled" pool whose labels it knows, applies selection policies
(number selected, pseudo-label precision) and retrains on labeled + selected (copies repeat
rows), measuring test accuracy again. Data: the demo world (``omnifer.demo.world.generate_world``:
labeled train/test from world ``seed``, the pool = labeled crops of world ``seed + 1000``)
when that module exists, else built-in cartoon faces (expression = brow angle, eye opening,
mouth curve/opening, with pose, scale, skin tone, lighting, blur and noise as nuisance).
Prints a table; exits 0.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from omnifer.curation.scoring import Scorer
from omnifer.curation.selection import SelectionPolicy, select_samples
from omnifer.labeled import LabeledData, read_rafdb
from omnifer.labels import CLASSES
from omnifer.models.checkpoints import load_checkpoint
from omnifer.training.config import TrainConfig
from omnifer.training.evaluate import evaluate_model, pseudo_label_precision
from omnifer.training.train import train_model

# brow tilt (deg), eye opening, mouth curve (+ smile), mouth opening, per canonical class
EXPRESSIONS = {
    "neutral": (0, 1.0, 0.0, 0.0),
    "happy": (0, 0.8, 1.0, 0.3),
    "sad": (-20, 0.8, -0.8, 0.0),
    "surprise": (0, 1.6, 0.0, 1.0),
    "fear": (-15, 1.4, -0.3, 0.5),
    "disgust": (15, 0.5, -0.5, 0.2),
    "angry": (25, 0.7, -0.4, 0.0),
}


def cartoon_faces(n_per_class: int, seed: int, size: int = 64) -> LabeledData:
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for c, name in enumerate(CLASSES):
        brow, eye, curve, open_ = EXPRESSIONS[name]
        for _ in range(n_per_class):
            j = rng.normal(0, 0.15, 4)  # per-face ambiguity in every expression parameter
            img = np.full((size, size, 3), rng.integers(30, 200, 3), np.uint8)
            s = size / 64 * rng.uniform(0.85, 1.1)
            cx, cy = size / 2 + rng.normal(0, 2), size / 2 + rng.normal(0, 2)
            skin = tuple(int(v) for v in rng.integers(90, 230, 3))
            cv2.ellipse(img, (int(cx), int(cy)), (int(24 * s), int(29 * s)), 0, 0, 360, skin,
                        -1)
            dark = (20, 20, 30)
            for side in (-1, 1):
                ex, ey = cx + side * 10 * s, cy - 6 * s
                h = max(1, int(3 * s * (eye + j[1] * 0.5)))
                cv2.ellipse(img, (int(ex), int(ey)), (int(4 * s), h), 0, 0, 360, dark, -1)
                tilt = np.deg2rad(brow + j[0] * 20) * side
                dx, dy = 5 * s * np.cos(tilt), 5 * s * np.sin(tilt)
                by = ey - 7 * s
                cv2.line(img, (int(ex - dx), int(by + dy)), (int(ex + dx), int(by - dy)), dark,
                         max(1, int(2 * s)))
            my = cy + 13 * s
            bend = (curve + j[2]) * 6 * s
            pts = np.array([[cx - 9 * s, my - bend / 2], [cx, my + bend / 2],
                            [cx + 9 * s, my - bend / 2]], np.float64)
            cv2.polylines(img, [pts.astype(np.int32)], False, dark, max(1, int(2 * s)))
            mo = max(0.0, open_ + j[3])
            if mo > 0.15:
                cv2.ellipse(img, (int(cx), int(my + bend / 4)), (int(5 * s), int(5 * s * mo)),
                            0, 0, 360, dark, -1)
            angle = rng.normal(0, 6)
            m = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
            img = cv2.warpAffine(img, m, (size, size), borderMode=cv2.BORDER_REFLECT)
            img = img.astype(np.float32) * rng.uniform(0.6, 1.3) + rng.normal(0, 12, img.shape)
            img = cv2.GaussianBlur(img.clip(0, 255).astype(np.uint8), (3, 3), rng.uniform(0.1, 1))
            images.append(img)
            labels.append(c)
    return LabeledData(np.stack(images), np.array(labels), CLASSES,
                       [f"s{seed}_{i:05d}" for i in range(len(labels))], source=f"cartoon:{seed}")


def load_data(seed: int, pool_per_class: int, work: Path) -> tuple[LabeledData, ...]:
    try:
        from omnifer.demo.world import generate_world
    except ImportError:
        return (cartoon_faces(40, seed), cartoon_faces(30, seed + 500),
                cartoon_faces(pool_per_class, seed + 1000))
    world, pool_world = work / f"world{seed}", work / f"pool{seed}"
    generate_world(world, seed=seed, labeled_per_class=40, test_per_class=30,
                   unlabeled_images=0)
    generate_world(pool_world, seed=seed + 1000, labeled_per_class=pool_per_class,
                   test_per_class=30, unlabeled_images=0)
    pool = read_rafdb(pool_world / "labeled", "train")
    return (read_rafdb(world / "labeled", "train"), read_rafdb(world / "labeled", "test"), pool)


# Label smoothing (0.1) caps confidence near 0.9, hence thresholds of 0.6-0.8.
POLICIES = {
    "conf>=0.6+flip": SelectionPolicy(min_confidence=0.6),
    "conf>=0.6+sim>=0.5+flip": SelectionPolicy(min_confidence=0.6, min_similarity=0.5),
    "top40/class+dup (conf>=0.5,sim>=0.3)": SelectionPolicy(
        min_confidence=0.5, min_similarity=0.3, top_k_per_class=40, duplicate_to_k=True),
}


def selected_data(pool: LabeledData, selected) -> LabeledData:
    """The selected pool rows with their *pseudo*-labels, each repeated ``copies`` times."""
    index = {name: i for i, name in enumerate(pool.names)}
    rows, labels = [], []
    for fid, lab, cp in zip(*(selected[c].to_pylist() for c in ("face_id", "label", "copies")),
                            strict=True):
        rows += [index[fid]] * int(cp)
        labels += [pool.classes.index(lab)] * int(cp)
    return LabeledData(pool.images[rows], np.array(labels, np.int64), pool.classes,
                       [pool.names[i] for i in rows], source="pseudo-labeled pool")


def run_seed(seed: int, args: argparse.Namespace, work: Path) -> list[dict]:
    train, test, pool = load_data(seed, args.pool_per_class, work)
    cfg = TrainConfig(seed=seed, epochs=args.epochs)
    t = time.monotonic()
    train_model(train, cfg, work / f"m{seed}")
    train_s = time.monotonic() - t
    loaded = load_checkpoint(work / f"m{seed}")
    base = evaluate_model(loaded, test)["accuracy"]
    scores = Scorer(loaded).score(pool.images).to_arrow(pool.names)
    truth = {n: pool.classes[int(y)] for n, y in zip(pool.names, pool.hard_labels(),
                                                     strict=True)}
    pool_acc = pseudo_label_precision(scores, truth)["precision"]
    rows = []
    for k, (name, policy) in enumerate(POLICIES.items()):
        sel = select_samples(scores, policy)
        prec = pseudo_label_precision(sel, truth)
        retrain = None
        if sel.num_rows:
            out = work / f"m{seed}-p{k}"
            train_model(train, cfg, out, extra=[selected_data(pool, sel)])
            retrain = evaluate_model(load_checkpoint(out), test)["accuracy"]
        rows.append({"seed": seed, "policy": name, "test_acc": base, "train_s": train_s,
                     "pool_acc": pool_acc, "selected": sel.num_rows,
                     "copies": int(sum(sel["copies"].to_pylist())),
                     "precision": prec["precision"], "retrain_acc": retrain})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--pool-per-class", type=int, default=100)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            rows += run_seed(seed, args, Path(tmp))
    header = (f"{'seed':>4}  {'policy':<38}{'test acc':>9}{'train s':>8}{'pool acc':>9}"
              f"{'selected':>9}{'copies':>7}{'precision':>10}{'retrain acc':>12}")
    print(header)
    print("-" * len(header))
    for r in rows:
        retrain = "-" if r["retrain_acc"] is None else f"{r['retrain_acc']:.3f}"
        print(f"{r['seed']:>4}  {r['policy']:<38}{r['test_acc']:>9.3f}{r['train_s']:>8.1f}"
              f"{r['pool_acc']:>9.3f}{r['selected']:>9}{r['copies']:>7}"
              f"{r['precision']:>10.3f}{retrain:>12}")
    print("-" * len(header))
    for name in POLICIES:
        sub = [r for r in rows if r["policy"] == name]
        gain = [r["retrain_acc"] - r["test_acc"] for r in sub if r["retrain_acc"] is not None]
        print(f"mean  {name:<38}{statistics.mean(r['test_acc'] for r in sub):>9.3f}"
              f"{'':>8}{statistics.mean(r['pool_acc'] for r in sub):>9.3f}"
              f"{statistics.mean(r['selected'] for r in sub):>9.0f}{'':>7}"
              f"{statistics.mean(r['precision'] for r in sub):>10.3f}"
              f"{'':>4}gain {statistics.mean(gain) if gain else float('nan'):+.3f}")


if __name__ == "__main__":
    main()
