"""Distillation methods side by side: DM, gradient matching, random subset, herding.

Usage::

    python benchmarks/distill_methods.py [WORLD_OR_FOLDER] [--ipc 10] [--dm-iterations N] ...

``WORLD_OR_FOLDER`` is one of

* a RAF-DB-style tree (the demo world of ``omnifer.synth.generate_world``): ``EmoLabel/
  list_patition_label.txt`` (``train_00001.jpg 4``) and ``Image/aligned/*_aligned.jpg``,
  either at the path or under ``PATH/labeled``;
* an image folder with ``train/<class>/*`` and ``test/<class>/*``;
* omitted: seeded toy "faces" (7 classes that differ by the geometry of dark blobs — brows,
  eyes, mouth — under pose jitter, lighting, colour casts and noise).

Prints test accuracy (mean ± std over ``--num-models`` fresh ConvNets trained on each set with
DSA) and each method's wall time. CPU defaults (width-64 ConvNet-3 at 32×32) finish in a few
minutes on two cores; pass ``--width 128 --dm-iterations 1000`` on a GPU for the paper setting.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch

from omnifer.distill import DistillConfig, TensorClassSampler, decode_chw, normalize
from omnifer.distill import read_folder_tensors as read_folder
from omnifer.distill_eval import compare_methods
from omnifer.labels import CLASSES, RAFDB_TO_CANONICAL


def read_rafdb(root: Path, image_size: int):
    label_file = root / "EmoLabel" / "list_patition_label.txt"
    if not label_file.exists():
        label_file = root / "labeled" / "EmoLabel" / "list_patition_label.txt"
        root = root / "labeled"
    splits: dict[str, tuple[list[np.ndarray], list[int]]] = {"train": ([], []),
                                                             "test": ([], [])}
    for line in label_file.read_text().split("\n"):
        if not line.strip():
            continue
        name, code = line.split()
        stem = name.rsplit(".", 1)[0]
        path = root / "Image" / "aligned" / f"{stem}_aligned.jpg"
        if not path.exists():
            continue
        split = "train" if name.startswith("train") else "test"
        splits[split][0].append(decode_chw(path.read_bytes(), image_size))
        splits[split][1].append(CLASSES.index(RAFDB_TO_CANONICAL[int(code)]))
    out = []
    for split in ("train", "test"):
        imgs, labs = splits[split]
        if not imgs:
            raise SystemExit(f"no {split} images under {root}")
        out += [normalize(torch.from_numpy(np.stack(imgs))), torch.tensor(labs)]
    return (*out, list(CLASSES))


def toy_faces(n_per_class: int, seed: int, size: int = 32):
    """Seeded toy 'faces': class = geometry of brows/eyes/mouth blobs; nuisance is heavy."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    # per class: (brow tilt, eye height, eye gap, mouth curve, mouth open, mouth width)
    shapes = [(0.0, 0.40, 0.18, 0.00, 0.02, 0.16), (0.0, 0.40, 0.18, 0.10, 0.03, 0.20),
              (0.08, 0.42, 0.18, -0.08, 0.02, 0.14), (-0.04, 0.36, 0.20, 0.00, 0.10, 0.10),
              (0.08, 0.36, 0.20, -0.03, 0.07, 0.16), (-0.06, 0.43, 0.16, -0.05, 0.03, 0.18),
              (-0.10, 0.42, 0.16, -0.02, 0.01, 0.12)]
    images, labels = [], []
    for c, (tilt, eye_y, gap, curve, open_, width) in enumerate(shapes):
        for _ in range(n_per_class):
            dx, dy = rng.normal(0, 0.04, 2)
            s = rng.uniform(0.9, 1.1)
            skin = rng.uniform(0.45, 0.8) * np.array([1.0, rng.uniform(0.75, 0.95),
                                                      rng.uniform(0.6, 0.85)])
            cx, cy = 0.5 + dx, 0.5 + dy
            face = np.exp(-(((xx - cx) / 0.33) ** 2 + ((yy - cy) / 0.42) ** 2) ** 2)
            dark = np.zeros_like(xx)
            for side in (-1, 1):
                ex, ey = cx + side * gap * s, cy + (eye_y - 0.5) * s
                dark += np.exp(-(((xx - ex) / 0.045) ** 2 + ((yy - ey) / 0.03) ** 2))
                by = ey - 0.08 + side * tilt * (xx - ex) / 0.1 * 0.5
                dark += 0.7 * np.exp(-(((xx - ex) / 0.08) ** 2 + ((yy - by) / 0.015) ** 2))
            mx = (xx - cx) / (width * s)
            my = cy + 0.22 * s - curve * (mx ** 2) * 1.0 + curve * 0.5
            mouth = np.exp(-(mx ** 4) - ((yy - my) / (0.02 + open_)) ** 2)
            dark += mouth * (1.0 + open_ * 4)
            img = face[..., None] * skin * (1 - 0.6 * np.clip(dark, 0, 1))[..., None]
            img += rng.uniform(0, 0.35, 3) * (1 - face[..., None])  # background colour
            img += rng.normal(0, 0.08, img.shape)
            images.append(np.clip(img, 0, 1).transpose(2, 0, 1).astype(np.float32))
            labels.append(c)
    return normalize(torch.from_numpy(np.stack(images))), torch.tensor(labels)


def load(path: Path | None, image_size: int, seed: int):
    if path is None:
        x, y = toy_faces(300, seed, image_size)
        tx, ty = toy_faces(100, seed + 1, image_size)
        return x, y, tx, ty, list(CLASSES), "toy faces (300 train / 100 test per class)"
    if (path / "EmoLabel").exists() or (path / "labeled" / "EmoLabel").exists():
        return (*read_rafdb(path, image_size), f"RAF-DB layout at {path}")
    x, y, classes = read_folder(path / "train", image_size)
    tx, ty, _ = read_folder(path / "test", image_size, classes)
    return x, y, tx, ty, classes, f"image folder {path}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("path", nargs="?", type=Path, default=None)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--dm-iterations", type=int, default=300)
    ap.add_argument("--gm-iterations", type=int, default=10)
    ap.add_argument("--gm-outer", type=int, default=5)
    ap.add_argument("--gm-inner", type=int, default=5)
    ap.add_argument("--batch-real", type=int, default=32)
    ap.add_argument("--num-models", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--methods", default="dm,gm")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    x, y, tx, ty, classes, what = load(args.path, args.image_size, args.seed)
    present = sorted(set(y.tolist()))
    remap = {c: i for i, c in enumerate(present)}  # drop classes absent from train
    keep = torch.tensor([int(v) in remap for v in ty])
    y = torch.tensor([remap[int(v)] for v in y])
    tx, ty = tx[keep], torch.tensor([remap[int(v)] for v in ty[keep]])
    classes = [classes[c] for c in present]
    print(f"data: {what}; {len(classes)} classes, {len(y)} train / {len(ty)} test images, "
          f"{args.image_size}px, ConvNet-3 width {args.width}, "
          f"device {args.device}, torch threads {torch.get_num_threads()}")
    sampler = TensorClassSampler(x, y, len(classes))
    cfg = DistillConfig(ipc=args.ipc, image_size=args.image_size, net_width=args.width,
                        batch_real=args.batch_real, seed=args.seed, device=args.device,
                        gm_outer_loop=args.gm_outer, gm_inner_loop=args.gm_inner)
    start = time.perf_counter()
    results = compare_methods(
        sampler, classes, tx, ty, cfg,
        methods=[m for m in args.methods.split(",") if m],
        method_overrides={"dm": {"iterations": args.dm_iterations},
                          "gm": {"iterations": args.gm_iterations}},
        num_models=args.num_models, epochs=args.epochs, progress=False)
    total = time.perf_counter() - start
    iters = {"dm": args.dm_iterations,
             "gm": f"{args.gm_iterations}x{args.gm_outer} outer/{args.gm_inner} inner"}
    print(f"\nIPC {args.ipc}: test accuracy over {args.num_models} ConvNets "
          f"({args.epochs} epochs, DSA)")
    print(f"{'set':<10} {'acc % (mean ± std)':>20} {'wall s':>9}  iterations")
    for name, res in results.items():
        print(f"{name:<10} {100 * res['mean']:>11.2f} ± {100 * res['std']:<6.2f} "
              f"{res['wall_time_s']:>9.1f}  {iters.get(name, '-')}")
    print(f"\nchance {100 / len(classes):.1f} %; whole benchmark {total:.0f} s")


if __name__ == "__main__":
    main()
