"""Distillation speed: iterations/s of DM and gradient matching at IPC 10 on CPU.

Usage::

    python benchmarks/distill_speed.py [--ipc 10] [--dm-iterations 20] [--gm-iterations 1]

Runs ``omnifer.distill.distill`` (the same call as ``omnifer distill``) on the seeded toy faces
of ``benchmarks/distill_methods.py`` (7 classes, 32×32) with that script's CPU settings
(ConvNet-3 width 64, 32 real images per class per step; ``--width 128 --batch-real 64`` is
the library default, meant for a GPU), and reports the wall time of the
method's loop only (``DistilledSet.wall_time_s``: no data loading, no evaluation). One GM
iteration is ``gm_outer_loop`` image updates with ``gm_inner_loop`` network steps between
them, so its it/s is not comparable with DM's one-update iterations: the table also gives
image updates/s. For accuracy side by side, run ``distill_methods.py``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from _common import machine, print_table
from distill_methods import toy_faces

from omnifer.distill import DistillConfig, TensorClassSampler, distill
from omnifer.labels import CLASSES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--dm-iterations", type=int, default=20)
    ap.add_argument("--gm-iterations", type=int, default=1)
    # distill_methods.py's CPU settings; the library defaults (width 128, 64 real) are for GPUs
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch-real", type=int, default=32)
    ap.add_argument("--per-class", type=int, default=200, help="toy real faces per class")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    ap.add_argument("--work", type=Path, default=None, help="unused; accepted for symmetry")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {machine()}; torch threads {torch.get_num_threads()}", flush=True)

    x, y = toy_faces(args.per_class, seed=0)
    sampler = TensorClassSampler(x, y, len(CLASSES))
    rows = []
    for method, iterations in (("dm", args.dm_iterations), ("gm", args.gm_iterations)):
        cfg = DistillConfig(method=method, ipc=args.ipc, iterations=iterations, device="cpu",
                            net_width=args.width, batch_real=args.batch_real)
        # One untimed iteration first: allocator and kernel warm-up.
        distill(sampler, list(CLASSES), cfg.model_copy(update={"iterations": 1}), progress=False)
        out = distill(sampler, list(CLASSES), cfg, progress=False)
        updates = iterations * (cfg.gm_outer_loop if method == "gm" else 1)
        rows.append([method, iterations, out.wall_time_s, iterations / out.wall_time_s,
                     updates / out.wall_time_s])
        print(f"{method}: {iterations / out.wall_time_s:.2f} it/s", flush=True)
    gm = DistillConfig(method="gm")
    print_table(f"Distillation on CPU, IPC {args.ipc}, {len(CLASSES)} classes, 32x32, "
                f"ConvNet-3 width {args.width}, {args.batch_real} real images per class per "
                f"step, DSA (GM: {gm.gm_outer_loop} outer x {gm.gm_inner_loop} inner)",
                ["method", "iterations", "seconds", "it/s", "image updates/s"], rows)


if __name__ == "__main__":
    main()
