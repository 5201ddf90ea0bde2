"""FerCNN: the compact CNN of the primitive model, in three registered sizes."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from omnifer.models.registry import register_architecture


class FerCNN(nn.Module):
    """Conv blocks (conv3×3 → BN → ReLU [→ conv3×3 → BN → ReLU] → 2×2 max-pool), global
    average pool, dropout, linear head. ``embed`` gives the pooled features (N, widths[-1])."""

    def __init__(
        self, num_classes: int, widths: tuple[int, ...] = (32, 64, 128, 256),
        double: tuple[bool, ...] | None = None, dropout: float = 0.2, in_channels: int = 3,
    ) -> None:
        super().__init__()
        double = tuple(double) if double is not None else tuple(False for _ in widths)
        layers: list[nn.Module] = []
        c_in = in_channels
        for width, twice in zip(widths, double, strict=True):
            layers += [nn.Conv2d(c_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            if twice:
                layers += [nn.Conv2d(width, width, 3, padding=1, bias=False),
                           nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            layers.append(nn.MaxPool2d(2))
            c_in = width
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(c_in, num_classes)
        self.embedding_dim = c_in
        self.num_classes = num_classes

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised → (N, D) pooled features (not normalised)."""
        return self.features(x).mean(dim=(2, 3))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embed(x))


@register_architecture("fercnn_small")
def fercnn_small(num_classes: int, **kw: Any) -> FerCNN:
    """~0.39 M parameters at 7 classes: widths 32-64-128-256, one conv per block."""
    return FerCNN(num_classes, **{"widths": (32, 64, 128, 256), **kw})


@register_architecture("fercnn_base")
def fercnn_base(num_classes: int, **kw: Any) -> FerCNN:
    """~0.96 M parameters: as small, with a second conv in the last two blocks."""
    return FerCNN(num_classes, **{"widths": (32, 64, 128, 256),
                                  "double": (False, False, True, True), **kw})


@register_architecture("fercnn_tiny")
def fercnn_tiny(num_classes: int, **kw: Any) -> FerCNN:
    """~25 k parameters (widths 8-16-32-64): for tests and smoke runs."""
    return FerCNN(num_classes, **{"widths": (8, 16, 32, 64), **kw})
