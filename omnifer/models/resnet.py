"""ResNet-18/34/50 in plain torch, with torchvision's ``state_dict`` key names.

Architecture and key names follow torchvision's ``torchvision.models.resnet`` (He et al.,
"Deep Residual Learning for Image Recognition", CVPR 2016; v1.5: the stride of a bottleneck
sits on its 3×3 conv), so weights trained elsewhere load by name: ``conv1``, ``bn1``,
``layer1.0.conv1``, …, ``layerK.0.downsample.{0,1}``, ``fc``. torchvision itself does not
import beside the CPU torch wheel on these machines (see ``../shared/ENVIRONMENT.md``), hence
this copy.

``embed`` gives the globally pooled features (N, 512) or (N, 2048); ``fc`` is the
classification head (replaced when pretrained weights are loaded). ``stages()`` lists stem,
layer1 … layer4 for :meth:`freeze_stages`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from omnifer.models.registry import register_architecture


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


def _conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 convs (torchvision ``BasicBlock``: conv1, bn1, conv2, bn2, downsample)."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(c_in, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 → 3×3 (strided) → 1×1 ×4 (torchvision ``Bottleneck``, ResNet v1.5)."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(c_in, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class Backbone(nn.Module):
    """What omnifer needs of a backbone beyond ``forward``: ``embed``/``classify``, the name
    of the classification head and of the first conv (for loading pretrained weights), and
    ``stages()`` with :meth:`freeze_stages` (frozen stages keep their BatchNorm statistics:
    they stay in eval mode while the rest trains)."""

    head_name = "fc"
    stem_conv = "conv1"
    embedding_dim: int
    num_classes: int

    def __init__(self) -> None:
        super().__init__()
        self._frozen = 0

    def stages(self) -> list[nn.Module]:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    def freeze_stages(self, n: int) -> None:
        """Freeze the first ``n`` of :meth:`stages` (0: none): no gradients, BN in eval mode."""
        stages = self.stages()
        if not 0 <= n <= len(stages):
            raise ValueError(f"{type(self).__name__} has {len(stages)} stages; cannot freeze {n}")
        self._frozen = n
        for stage in stages[:n]:
            for p in stage.parameters():
                p.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        for stage in self.stages()[: self._frozen]:
            stage.eval()
        return self

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.head_name)(self.dropout(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embed(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError


class ResNet(Backbone):
    """torchvision-compatible ResNet; ``dropout`` (no parameters) sits before ``fc``."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int],
                 num_classes: int, dropout: float = 0.0, in_channels: int = 3) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.embedding_dim = 512 * block.expansion
        self.num_classes = num_classes
        self.fc = nn.Linear(self.embedding_dim, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int,
                    stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(_conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stages(self) -> list[nn.Module]:
        """stem (conv1 + bn1), layer1, layer2, layer3, layer4."""
        return [nn.ModuleList([self.conv1, self.bn1]), self.layer1, self.layer2, self.layer3,
                self.layer4]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) normalised → (N, 512 · expansion) pooled features (after ReLU)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


@register_architecture("resnet18")
def resnet18(num_classes: int, **kw: Any) -> ResNet:
    """ResNet-18 (11.2 M parameters at 7 classes), torchvision key names."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, **kw)


@register_architecture("resnet34")
def resnet34(num_classes: int, **kw: Any) -> ResNet:
    """ResNet-34, torchvision key names."""
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, **kw)


@register_architecture("resnet50")
def resnet50(num_classes: int, **kw: Any) -> ResNet:
    """ResNet-50 (v1.5), torchvision key names."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, **kw)
