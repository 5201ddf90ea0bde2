"""Images as torch tensors: to a batch, into and out of a normalised space.

:func:`normalize` is the one normalisation: with a model card's mean/std (BGR, from the
training data) for the FER model, with the defaults (:data:`~omnifer.imaging.transforms.
IMAGENET_MEAN`/``STD``, RGB) for distillation's fixed space.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from omnifer.imaging.transforms import IMAGENET_MEAN, IMAGENET_STD, resize_images


def to_tensor(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, H, W, 3) uint8 BGR → (N, 3, H, W) float32 in [0, 1] (channel order kept: BGR)."""
    t = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return t.permute(0, 3, 1, 2).float().div_(255.0)


def _stats(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]
           ) -> tuple[torch.Tensor, torch.Tensor]:
    m = torch.tensor(list(mean), dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(list(std), dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return m, s


def normalize(x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """(N, C, H, W) float in [0, 1] → ``(x - mean) / std`` per channel."""
    m, s = _stats(x, mean, std)
    return (x - m) / s


def denormalize(x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """Inverse of :func:`normalize`, as float32 clamped to [0, 1]."""
    x = x.float()
    m, s = _stats(x, mean, std)
    return (x * s + m).clamp(0, 1)


def preprocess(
    images: np.ndarray, input_size: int, mean: Sequence[float], std: Sequence[float],
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """uint8 BGR crops of any size → normalised (N, 3, S, S) float tensor on ``device``."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected N×H×W×3 images, got shape {images.shape}")
    if images.shape[1:3] != (input_size, input_size):
        images = resize_images(images, input_size)
    return normalize(to_tensor(images, device), mean, std)
