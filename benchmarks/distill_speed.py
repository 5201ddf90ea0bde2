"""Distillation speed: omnifer's DM beside a minimal DM loop in plain torch, at equal settings.

Usage::

    python benchmarks/distill_speed.py [--iterations 10] [--rounds 3] [--threads 1 2]
        [--classes 10] [--ipc 10] [--width 64] [--batch-real 32] [--channels 3]
        [--gm-iterations 0] [--device cpu|cuda]

Data: the seeded toy faces of ``benchmarks/distill_methods.py`` at 32×32 (for ``--classes``
above 7 the 7 classes are drawn again with another seed under new labels: speed does not
depend on content); ``--channels 1`` makes them grey.

The reference is distribution matching as Zhao & Bilen (WACV 2023) wrote it (``main_DM.py``),
reduced to its loop: per iteration a ConvNet-3 built afresh (PyTorch's default random init,
weights frozen); per class a real batch and the class's synthetic images, through the same
DiffAugment draw when augmentation is on (DSA's ``color_crop_cutout_flip_scale_rotate``, one
transform per class and iteration, siamese by a shared seed); the squared distance of their
mean embeddings summed over classes; SGD (lr 1, momentum 0.5) on the pixels. omnifer's side is
``omnifer.distill.distill`` (what ``omnifer distill run`` calls); its time is the method's loop
(``DistilledSet.wall_time_s``), the reference's is its loop, each after one untimed iteration.

Every round runs every side once, in turn (so machine load hits all of them), and the table
gives each side's median it/s over the rounds and the ratio (target: omnifer ≥ 0.8× the
reference at equal settings). Sides:

* equal settings, no augmentation: omnifer with ``dsa_strategy=""`` / the reference;
* equal settings, DSA: omnifer's defaults / the reference with its DiffAugment;
* issue 22's comparison: omnifer at the GPU settings (``GPU_DEFAULTS``: width 128, 64 real
  images per class and step, DSA; before issue 22 they were the defaults on CPU too) / the
  reference's minimal settings (the first row's reference: ``--width``, no augmentation).

``--width 64 --batch-real 32`` are omnifer's CPU defaults (``CPU_DEFAULTS``). ``--threads``
repeats everything per torch thread count. OpenMP threads sleep between parallel regions
(``OMP_WAIT_POLICY=PASSIVE``, as ``omnifer distill`` sets it); ``OMP_WAIT_POLICY=ACTIVE`` in
the environment shows what spinning threads do on a machine shared with other work.
``--gm-iterations N`` adds gradient matching at the equal settings (one iteration is
``gm_outer_loop`` image updates with ``gm_inner_loop`` net steps between them).
``--device cuda`` runs both sides on the GPU (timings end with ``torch.cuda.synchronize``).
"""

from __future__ import annotations

import os

# As `omnifer distill` does (omnifer/cli/distill.py), before torch loads: OpenMP threads sleep
# between parallel regions. OMP_WAIT_POLICY=ACTIVE in the environment shows them spinning.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _common import machine, print_table  # noqa: E402
from distill_methods import toy_faces  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from omnifer.distill import DistillConfig, TensorClassSampler, distill  # noqa: E402
from omnifer.distill.config import GPU_DEFAULTS  # noqa: E402

DSA_OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")


def toy_data(classes: int, per_class: int, channels: int) -> tuple[Tensor, Tensor]:
    """``classes`` × ``per_class`` toy faces ``(N, channels, 32, 32)`` and labels ``(N,)``."""
    xs, ys = [], []
    for k in range(math.ceil(classes / 7)):
        x, y = toy_faces(per_class, seed=k)
        xs.append(x)
        ys.append(y + 7 * k)
    x, y = torch.cat(xs), torch.cat(ys)
    keep = y < classes
    x, y = x[keep], y[keep]
    return (x.mean(1, keepdim=True) if channels == 1 else x), y


# --------------------------------------------------------------------------- the reference


def convnet3(channels: int, width: int) -> nn.Sequential:
    """ConvNet-3's feature extractor as DM's code builds it (instance norm as GroupNorm)."""
    layers: list[nn.Module] = []
    for i in range(3):
        layers += [nn.Conv2d(channels if i == 0 else width, width, 3, padding=1),
                   nn.GroupNorm(width, width, affine=True), nn.ReLU(inplace=True),
                   nn.AvgPool2d(2, 2)]
    return nn.Sequential(*layers)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def diff_augment(x: Tensor, seed: int) -> Tensor:
    """DSA's DiffAugment, mode 'S' (one transform), siamese through ``seed``; minimal port."""
    g = torch.Generator().manual_seed(seed)

    def r() -> float:
        return float(torch.rand((), generator=g))

    op = DSA_OPS[int(torch.randint(len(DSA_OPS), (1,), generator=g))]
    n, _, h, w = x.shape
    if op == "color":  # brightness, saturation, contrast
        x = x + (r() - 0.5)
        mean = x.mean(1, keepdim=True)
        x = (x - mean) * (r() * 2) + mean
        mean = x.mean((1, 2, 3), keepdim=True)
        return (x - mean) * (r() + 0.5) + mean
    if op == "flip":
        return x.flip(3) if r() < 0.5 else x
    if op == "cutout":  # a half-size square of zeros
        cy, cx = int(r() * h), int(r() * w)
        mask = torch.ones(h, w, device=x.device)
        mask[max(cy - h // 4, 0) : cy + h // 4, max(cx - w // 4, 0) : cx + w // 4] = 0
        return x * mask
    if op == "crop":  # translate by up to 1/8 of the side
        theta = [[1.0, 0.0, (r() * 2 - 1) * 0.25], [0.0, 1.0, (r() * 2 - 1) * 0.25]]
    elif op == "scale":
        theta = [[r() * (1.2 - 1 / 1.2) + 1 / 1.2, 0.0, 0.0],
                 [0.0, r() * (1.2 - 1 / 1.2) + 1 / 1.2, 0.0]]
    else:  # rotate up to 15 degrees
        a = (r() * 2 - 1) * math.pi / 12
        theta = [[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]]
    thetas = torch.tensor(theta, device=x.device).repeat(n, 1, 1)  # one per image, as DSA's
    grid = F.affine_grid(thetas, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def reference_dm(by_class: list[Tensor], ipc: int, width: int, batch_real: int,
                 iterations: int, augment: bool, seed: int = 0,
                 device: torch.device | str = "cpu") -> float:
    """Minimal DM in plain torch (Zhao & Bilen 2023); returns iterations/s of its loop."""
    device = torch.device(device)
    torch.manual_seed(seed)
    by_class = [imgs.to(device) for imgs in by_class]
    syn = torch.cat([imgs[torch.randperm(len(imgs))[:ipc]] for imgs in by_class])
    syn = syn.clone().requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=1.0, momentum=0.5)

    def step() -> None:
        net = convnet3(syn.shape[1], width).to(device)  # a fresh random network each time
        for p in net.parameters():
            p.requires_grad_(False)
        loss = syn.new_zeros(())
        for c, imgs in enumerate(by_class):
            real = imgs[torch.randperm(len(imgs), device=device)[:batch_real]]
            s = syn[c * ipc : (c + 1) * ipc]
            if augment:
                shared = int(torch.randint(1 << 30, (1,)))
                real, s = diff_augment(real, shared), diff_augment(s, shared)
            emb_real = net(real).flatten(1).detach()
            emb_syn = net(s).flatten(1)
            loss = loss + ((emb_real.mean(0) - emb_syn.mean(0)) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # untimed: allocator and kernel warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    _sync(device)
    return iterations / (time.perf_counter() - start)


# --------------------------------------------------------------------------- omnifer's side


def omnifer_dm(sampler: TensorClassSampler, cfg: DistillConfig) -> float:
    """iterations/s of ``omnifer.distill.distill``'s loop at ``cfg`` (after one untimed)."""
    classes = [str(c) for c in range(sampler.num_classes)]
    distill(sampler, classes, cfg.model_copy(update={"iterations": 1}), progress=False)
    out = distill(sampler, classes, cfg, progress=False)
    return cfg.iterations / out.wall_time_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=10, help="timed DM iterations per side")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (median)")
    ap.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch-real", type=int, default=32)
    ap.add_argument("--channels", type=int, choices=(1, 3), default=3)
    ap.add_argument("--per-class", type=int, default=200, help="toy real faces per class")
    ap.add_argument("--gm-iterations", type=int, default=0, help="0: no gradient matching")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    x, y = toy_data(args.classes, args.per_class, args.channels)
    sampler = TensorClassSampler(x, y, args.classes)
    by_class = [x[y == c] for c in range(args.classes)]
    base = DistillConfig(ipc=args.ipc, iterations=args.iterations, device=args.device,
                         net_width=args.width, batch_real=args.batch_real)
    sides: dict[str, Callable[[], float]] = {
        "omnifer, no aug": lambda: omnifer_dm(
            sampler, base.model_copy(update={"dsa_strategy": ""})),
        "reference, no aug": lambda: reference_dm(
            by_class, args.ipc, args.width, args.batch_real, args.iterations, augment=False,
            device=args.device),
        "omnifer, DSA": lambda: omnifer_dm(sampler, base),
        "reference, DSA": lambda: reference_dm(
            by_class, args.ipc, args.width, args.batch_real, args.iterations, augment=True,
            device=args.device),
        "omnifer, GPU settings": lambda: omnifer_dm(
            sampler, base.model_copy(update=GPU_DEFAULTS | {"iterations": args.iterations})),
    }
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"threads {threads} (OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}); "
              f"{machine()}", flush=True)
        runs: dict[str, list[float]] = {name: [] for name in sides}
        for r in range(args.rounds):
            for name, run in sides.items():
                runs[name].append(run())
            print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in runs.items()),
                  flush=True)
        med = {name: statistics.median(v) for name, v in runs.items()}
        for label, ours, ref in (
            (f"equal: width {args.width}, {args.batch_real} real, no aug", "omnifer, no aug",
             "reference, no aug"),
            (f"equal: width {args.width}, {args.batch_real} real, DSA", "omnifer, DSA",
             "reference, DSA"),
            (f"issue 22: omnifer width {GPU_DEFAULTS['net_width']}, "
             f"{GPU_DEFAULTS['batch_real']} real, DSA vs reference width {args.width}, "
             f"{args.batch_real} real, no aug", "omnifer, GPU settings", "reference, no aug"),
        ):
            rows.append([threads, label, med[ours], med[ref], med[ours] / med[ref]])
        print(f"  done; load average now {machine().rsplit('load average ', 1)[1]}", flush=True)
    print_table(f"DM on {args.device}, IPC {args.ipc}, {args.classes} classes, "
                f"{args.channels}x32x32, "
                f"ConvNet-3; median it/s of {args.rounds} alternating rounds of "
                f"{args.iterations} iterations (target: omnifer >= 0.8x at equal settings)",
                ["threads", "settings", "omnifer it/s", "reference it/s", "ratio"], rows)
    if args.gm_iterations:
        cfg = base.model_copy(update={"method": "gm", "lr_img": 0.1,
                                      "iterations": args.gm_iterations})
        rate = omnifer_dm(sampler, cfg)
        print(f"\ngradient matching, width {args.width}, {args.batch_real} real, DSA "
              f"({cfg.gm_outer_loop} outer x {cfg.gm_inner_loop} inner), threads "
              f"{torch.get_num_threads()}: {rate:.4f} it/s, "
              f"{rate * cfg.gm_outer_loop:.3f} image updates/s")


if __name__ == "__main__":
    main()
