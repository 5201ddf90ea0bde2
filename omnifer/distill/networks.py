"""The ConvNet-D of the dataset-distillation literature, and seeded re-initialisation.

D blocks of conv3x3(width) → instance norm (GroupNorm with one group per channel, affine) →
ReLU → avgpool 2, then a linear classifier; ``embed(x)`` is the flattened feature before it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class ConvNet(nn.Module):
    """ConvNet-``depth``: [conv3x3(width) → InstanceNorm → ReLU → AvgPool2]×depth → Linear."""

    def __init__(
        self,
        num_classes: int,
        channels: int = 3,
        width: int = 128,
        depth: int = 3,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch, size = channels, image_size
        for _ in range(depth):
            layers += [
                nn.Conv2d(in_ch, width, kernel_size=3, padding=1),
                nn.GroupNorm(width, width, affine=True),  # instance norm, as in DC/DSA/DM
                nn.ReLU(inplace=True),
                nn.AvgPool2d(kernel_size=2, stride=2),
            ]
            in_ch, size = width, size // 2
        if size < 1:
            raise ValueError(f"image_size {image_size} is too small for depth {depth}")
        self.features = nn.Sequential(*layers)
        self.feature_dim = width * size * size
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        self.memory_format = torch.contiguous_format

    def channels_last(self) -> ConvNet:
        """Keep weights and activations channels-last (NHWC); the same function, in place.

        On CPU (oneDNN) it made DM's forward passes 15-30 % faster but training (weight
        gradients) slower, so only DM uses it."""
        self.memory_format = torch.channels_last
        return self.to(memory_format=torch.channels_last)

    def embed(self, x: Tensor) -> Tensor:
        """Flattened features ``(N, feature_dim)`` (in ``(C, H, W)`` order whatever the layout)."""
        return self.features(x.contiguous(memory_format=self.memory_format)).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(x))


def _uniform_(param: Tensor, bound: float, generator: torch.Generator) -> None:
    """U(±bound) from the CPU ``generator``: in place on CPU, drawn on CPU and copied elsewhere
    (the same numbers either way)."""
    if param.device.type == "cpu" and param.is_contiguous():
        param.uniform_(-bound, bound, generator=generator)
    else:
        param.copy_(torch.empty(param.shape).uniform_(-bound, bound, generator=generator))


@torch.no_grad()
def reset_parameters(net: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-initialise ``net`` like PyTorch's defaults, drawing from ``generator`` (CPU).

    Conv/Linear: kaiming-uniform(a=√5) weights and U(±1/√fan_in) biases; norm layers: 1 and 0.
    """
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            weight = module.weight
            fan_in = weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform with a=sqrt(5) gives this bound
            _uniform_(weight, bound, generator)
            if module.bias is not None:
                _uniform_(module.bias, bound, generator)
        elif isinstance(module, (nn.GroupNorm, nn.BatchNorm2d, nn.InstanceNorm2d)):
            if getattr(module, "weight", None) is not None:
                module.weight.fill_(1.0)
                module.bias.zero_()
    return net
