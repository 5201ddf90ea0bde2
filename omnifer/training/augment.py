"""Training augmentation in torch, on the training device, seeded.

Random resized crop + small rotation + horizontal flip as one ``affine_grid``/``grid_sample``,
then brightness/contrast/saturation jitter; every random number comes from the generator the
caller seeds per ``(seed, epoch)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from omnifer.training.config import TrainConfig


def augment(x: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """(B, 3, S, S) float in [0, 1] → augmented, same shape; randomness from ``gen`` (CPU)."""
    b = x.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(b, generator=gen) * (hi - lo) + lo

    area = uniform(*cfg.crop_scale)
    log_ratio = uniform(math.log(3 / 4), math.log(4 / 3))
    ratio = log_ratio.exp()
    w = (area * ratio).sqrt().clamp(max=1.0)
    h = (area / ratio).sqrt().clamp(max=1.0)
    tx = (uniform(-1, 1)) * (1 - w)
    ty = (uniform(-1, 1)) * (1 - h)
    angle = uniform(-cfg.max_rotation, cfg.max_rotation) * (math.pi / 180)
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0) if cfg.hflip \
        else torch.ones(b)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([
        torch.stack([w * cos * flip, -h * sin, tx], dim=1),
        torch.stack([w * sin * flip, h * cos, ty], dim=1),
    ], dim=1).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    j = cfg.color_jitter
    if j > 0:
        bright, contrast, sat = (uniform(1 - j, 1 + j).to(x.device).view(b, 1, 1, 1)
                                 for _ in range(3))
        x = x * bright
        gray = (0.114 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.299 * x[:, 2:3])  # BGR weights
        mean = gray.mean(dim=(2, 3), keepdim=True)
        x = (x - mean) * contrast + mean
        gray = (0.114 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.299 * x[:, 2:3])
        x = (x - gray) * sat + gray
        x = x.clamp(0.0, 1.0)
    return x
