"""IResNet-18/34/50: the face-recognition backbone of insightface's ArcFace training, in plain
torch with its ``state_dict`` key names.

Architecture and key names follow insightface ``recognition/arcface_torch/backbones/
iresnet.py`` (Duta et al., "Improved Residual Networks", 2020; Deng et al., "ArcFace", CVPR
2019): a 3×3 stem (``conv1``, ``bn1``, ``prelu``), four stages of ``IBasicBlock`` (``bn1``,
``conv1``, ``bn2``, ``prelu``, ``conv2`` (strided), ``bn3``, ``downsample.{0,1}``), then
``bn2``, flatten, ``fc`` (512·7·7 → 512) and ``features`` (BatchNorm1d, weight frozen at 1).
So an ArcFace ``backbone.pth`` loads by name.

ArcFace was trained on 112×112 aligned RGB faces normalised as (x − 0.5) / 0.5: use
``input_size 112``. Other sizes work (the 7×7 map that ``fc`` expects is made by adaptive
average pooling, which has no parameters) but the pretrained features then see another scale.
omnifer adds a classification head ``head`` (512 → classes) on the 512-d ``features``
embedding; ``embed`` returns that embedding.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from omnifer.models.registry import register_architecture
from omnifer.models.resnet import Backbone

FC_MAP = 7  # ArcFace's fc is sized for 7×7 maps (112 / 16)


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """BN → conv3×3 → BN → PReLU → conv3×3 (strided) → BN, plus the (projected) identity."""

    def __init__(self, c_in: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in, eps=1e-05)
        self.conv1 = _conv3x3(c_in, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + identity


class IResNet(Backbone):
    """insightface-compatible IResNet with an added classification ``head``."""

    head_name = "head"

    def __init__(self, layers: list[int], num_classes: int, num_features: int = 512,
                 dropout: float = 0.0, in_channels: int = 3) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-05)
        self.prelu = nn.PReLU(64)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1])
        self.layer3 = self._make_layer(256, layers[2])
        self.layer4 = self._make_layer(512, layers[3])
        self.bn2 = nn.BatchNorm2d(512, eps=1e-05)
        self.fc = nn.Linear(512 * FC_MAP * FC_MAP, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-05)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False  # as in insightface
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(num_features, num_classes)
        self.embedding_dim = num_features
        self.num_classes = num_classes
        for m in self.modules():  # insightface's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes, 1, stride=2, bias=False),
            nn.BatchNorm2d(planes, eps=1e-05),
        )
        layers = [IBasicBlock(self.inplanes, planes, 2, downsample)]
        self.inplanes = planes
        layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stages(self) -> list[nn.Module]:
        """stem (conv1, bn1, prelu), layer1, layer2, layer3, layer4."""
        return [nn.ModuleList([self.conv1, self.bn1, self.prelu]), self.layer1, self.layer2,
                self.layer3, self.layer4]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) normalised → (N, 512) ArcFace embedding (``features`` output)."""
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.bn2(self.layer4(self.layer3(self.layer2(self.layer1(x)))))
        if x.shape[-2:] != (FC_MAP, FC_MAP):
            x = F.adaptive_avg_pool2d(x, FC_MAP)
        return self.features(self.fc(torch.flatten(x, 1)))


@register_architecture("iresnet18")
def iresnet18(num_classes: int, **kw: Any) -> IResNet:
    """IResNet-18 (ArcFace r18), insightface key names; input 112×112 RGB."""
    return IResNet([2, 2, 2, 2], num_classes, **kw)


@register_architecture("iresnet34")
def iresnet34(num_classes: int, **kw: Any) -> IResNet:
    """IResNet-34 (ArcFace r34), insightface key names."""
    return IResNet([3, 4, 6, 3], num_classes, **kw)


@register_architecture("iresnet50")
def iresnet50(num_classes: int, **kw: Any) -> IResNet:
    """IResNet-50 (ArcFace r50), insightface key names."""
    return IResNet([3, 4, 14, 3], num_classes, **kw)
