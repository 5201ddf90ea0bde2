"""Differentiable siamese augmentation (DSA; Zhao & Bilen, ICML 2021).

Colour, crop (translate), cutout, flip, scale, rotate with ``affine_grid``/``grid_sample``;
the same parameters are applied to the real and the synthetic batch of one class and
iteration. Randomness always comes from an explicit CPU :class:`torch.Generator`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class DSA:
    """Differentiable siamese augmentation.

    ``strategy`` is an underscore-joined list of ``color``, ``crop``, ``cutout``, ``flip``,
    ``scale``, ``rotate`` (the literature's ``color_crop_cutout_flip_scale_rotate``).
    ``mode="single"`` applies one randomly chosen transform per call (DSA's reference
    ``aug_mode='S'``); ``"all"`` applies every transform in order.

    Call ``params = dsa.sample(n, generator, siamese=True)`` then ``dsa.apply(x, params)`` on
    both batches: with ``siamese`` every image gets the same parameters, so batches of
    different sizes can share them. With ``siamese=False`` each of ``n`` images gets its own.
    """

    strategy: str = "color_crop_cutout_flip_scale_rotate"
    mode: str = "single"
    scale: float = 1.2
    rotate_deg: float = 15.0
    crop_ratio: float = 0.125
    cutout_ratio: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    ops: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        ops = tuple(p for p in self.strategy.split("_") if p and p.lower() != "none")
        unknown = sorted(set(ops) - set(_OPS))
        if unknown:
            raise ValueError(f"unknown DSA transforms {unknown}; known: {sorted(_OPS)}")
        if self.mode not in {"single", "all"}:
            raise ValueError(f"DSA mode must be 'single' or 'all', not {self.mode!r}")
        self.ops = ops

    def sample(self, n: int, generator: torch.Generator, siamese: bool = True) -> dict[str, Any]:
        """Random parameters for a batch of ``n`` (CPU tensors of length ``n`` or 1)."""
        if not self.ops:
            return {}
        if self.mode == "single":
            pick = int(torch.randint(len(self.ops), (1,), generator=generator))
            chosen: Sequence[str] = (self.ops[pick],)
        else:
            chosen = self.ops
        m = 1 if siamese else n

        def u(lo: float = 0.0, hi: float = 1.0) -> Tensor:
            return torch.rand(m, generator=generator) * (hi - lo) + lo

        params: dict[str, Any] = {}
        for op in chosen:
            if op == "color":
                params["color"] = (u(-0.5, 0.5) * self.brightness, u() * self.saturation,
                                   u() + self.contrast)
            elif op == "crop":
                params["crop"] = (u(-1, 1) * self.crop_ratio * 2, u(-1, 1) * self.crop_ratio * 2)
            elif op == "cutout":
                params["cutout"] = (u(), u())
            elif op == "flip":
                params["flip"] = u() < 0.5
            elif op == "scale":
                params["scale"] = (u(1 / self.scale, self.scale), u(1 / self.scale, self.scale))
            elif op == "rotate":
                params["rotate"] = u(-1, 1) * math.radians(self.rotate_deg)
        return params

    def apply(self, x: Tensor, params: dict[str, Any]) -> Tensor:
        """Apply sampled ``params`` to ``x`` (N,C,H,W); differentiable w.r.t. ``x``."""
        for op in self.ops:
            if op in params:
                x = _OPS[op](self, x, _to(params[op], x))
        return x

    def apply_groups(self, x: Tensor, sizes: Sequence[int],
                     params: Sequence[dict[str, Any]]) -> Tensor:
        """Apply ``params[g]`` (each sampled with ``siamese=True``) to the ``g``-th run of
        ``sizes[g]`` consecutive images of ``x`` (N,C,H,W); differentiable w.r.t. ``x``.

        The same result as ``dsa.apply`` on each group's slice, in one call per transform
        instead of one per group and transform (distribution matching augments every class
        with its own parameters, the real and the synthetic batch alike).
        """
        if len(sizes) != len(params):
            raise ValueError(f"{len(sizes)} group sizes for {len(params)} parameter sets")
        starts = [0]
        for size in sizes:
            starts.append(starts[-1] + size)
        for op in self.ops:
            groups = [g for g, p in enumerate(params) if op in p]
            if not groups:
                continue
            counts = torch.tensor([sizes[g] for g in groups])
            value = _per_image([params[g][op] for g in groups], counts)
            if len(groups) == len(params):
                x = _OPS[op](self, x, _to(value, x))
                continue
            rows = torch.cat([torch.arange(starts[g], starts[g + 1]) for g in groups])
            rows = rows.to(x.device)
            part = _OPS[op](self, x.index_select(0, rows), _to(value, x))
            x = x.index_copy(0, rows, part)
        return x

    def __call__(self, x: Tensor, generator: torch.Generator, siamese: bool = False) -> Tensor:
        return self.apply(x, self.sample(x.shape[0], generator, siamese=siamese))


def _per_image(values: list[Any], counts: Tensor) -> Any:
    """Per-group parameters (tensors of length 1, or tuples of them) → one entry per image."""
    if isinstance(values[0], tuple):
        return tuple(_per_image([v[i] for v in values], counts) for i in range(len(values[0])))
    return torch.cat(values).repeat_interleave(counts)


def _to(p: Any, x: Tensor) -> Any:
    if isinstance(p, tuple):
        return tuple(_to(v, x) for v in p)
    value = p.to(x.device)
    return value.to(x.dtype) if value.is_floating_point() else value


def _col(v: Tensor, n: int) -> Tensor:
    return v.expand(n).view(n, 1, 1, 1)


def _affine(x: Tensor, theta: Tensor) -> Tensor:
    if theta.shape[0] == 1:  # siamese: one grid, shared (the same values as a batched
        # affine_grid over copies, which cost more than the sampling itself on 2 CPU threads)
        grid = F.affine_grid(theta, [1, *x.shape[1:]], align_corners=False)
        grid = grid.expand(x.shape[0], -1, -1, -1)
    else:
        grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _color(_: DSA, x: Tensor, p: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    n = x.shape[0]
    bright, sat, con = p
    x = x + _col(bright, n)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * _col(sat, n) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _col(con, n) + mean


def _crop(_: DSA, x: Tensor, p: tuple[Tensor, Tensor]) -> Tensor:
    tx, ty = p
    one, zero = torch.ones_like(tx), torch.zeros_like(tx)
    theta = torch.stack([torch.stack([one, zero, tx], -1), torch.stack([zero, one, ty], -1)], 1)
    return _affine(x, theta)


def _scale(_: DSA, x: Tensor, p: tuple[Tensor, Tensor]) -> Tensor:
    sx, sy = p
    zero = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, zero, zero], -1), torch.stack([zero, sy, zero], -1)], 1)
    return _affine(x, theta)


def _rotate(_: DSA, x: Tensor, angle: Tensor) -> Tensor:
    c, s, zero = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([c, -s, zero], -1), torch.stack([s, c, zero], -1)], 1)
    return _affine(x, theta)


def _flip(_: DSA, x: Tensor, flag: Tensor) -> Tensor:
    flag = flag.expand(x.shape[0]).view(-1, 1, 1, 1)
    return torch.where(flag, x.flip(3), x)


def _cutout(aug: DSA, x: Tensor, p: tuple[Tensor, Tensor]) -> Tensor:
    n, _, h, w = x.shape
    cy, cx = (v.expand(n) for v in p)
    half_h, half_w = aug.cutout_ratio * h / 2, aug.cutout_ratio * w / 2
    ys = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1) + 0.5
    xs = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w) + 0.5
    inside = ((ys - (cy * h).view(n, 1, 1)).abs() < half_h) & (
        (xs - (cx * w).view(n, 1, 1)).abs() < half_w
    )
    return x * (~inside).unsqueeze(1).to(x.dtype)


_OPS: dict[str, Callable[..., Tensor]] = {
    "color": _color,
    "crop": _crop,
    "cutout": _cutout,
    "flip": _flip,
    "scale": _scale,
    "rotate": _rotate,
}
