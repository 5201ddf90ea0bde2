"""The model and optimizer a training run starts from, and the normalisation it feeds them.

:func:`build_model`: a registered architecture (:mod:`omnifer.models.registry`), from scratch
or with a local ``pretrained`` weights file loaded (:mod:`omnifer.models.weights`: head
replaced, shapes checked), the first ``freeze_stages`` stages frozen, and an optimizer whose
parameter groups give the backbone ``backbone_lr_scale`` × the head's learning rate.
:func:`input_normalization`: the mean/std the network sees (the data's own, or those the
pretrained weights were trained with). Used by :mod:`omnifer.training.train`.
"""

from __future__ import annotations

from typing import Any

import torch

from omnifer.errors import ConfigError
from omnifer.models.architectures import create_model
from omnifer.training.config import TrainConfig


def input_normalization(cfg: TrainConfig, mean: list[float],
                        std: list[float]) -> tuple[list[float], list[float]]:
    """(mean, std) per BGR channel in [0, 1] units for ``cfg.normalization``.

    ``data``: ``mean``/``std`` as given (measured on the training images); ``imagenet`` /
    ``arcface``: those constants; ``pretrained``: the constants of the pretrained file's
    family (:func:`omnifer.models.weights.pretrained_normalization`); ``auto``: ``data``
    without ``pretrained`` weights, else ``pretrained``.
    """
    norm = cfg.normalization if cfg.normalization != "auto" else (
        "data" if not cfg.pretrained else "pretrained")
    if norm == "data":
        return mean, std
    from omnifer.models.weights import ARCFACE, IMAGENET, pretrained_normalization

    rgb = {"imagenet": IMAGENET, "arcface": ARCFACE}.get(norm) \
        or pretrained_normalization(cfg.arch)
    return list(rgb[0][::-1]), list(rgb[1][::-1])  # stated in RGB order; the pipeline is BGR


def build_model(cfg: TrainConfig, num_classes: int, device: torch.device) -> tuple[
    torch.nn.Module, torch.optim.Optimizer, Any
]:
    """(model on ``device``, optimizer, pretrained load report or None), seeded by ``cfg.seed``.

    Parameter groups: weights with decay, biases/norms without; with ``backbone_lr_scale``
    < 1 each again split into backbone and head (``base_lr`` per group, which the schedule
    scales). Frozen parameters are left out. Raises ConfigError when ``freeze_stages`` does
    not fit the architecture.
    """
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.arch, num_classes, **cfg.arch_kwargs)
    report = None
    if cfg.pretrained:
        from omnifer.models.weights import load_pretrained

        report = load_pretrained(model, cfg.pretrained, cfg.arch, cfg.pretrained_color)
    if cfg.freeze_stages:
        if not hasattr(model, "freeze_stages"):
            raise ConfigError(f"{cfg.arch} has no stages to freeze (freeze_stages works with "
                              "resnet* and iresnet*)")
        try:
            model.freeze_stages(cfg.freeze_stages)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    model = model.to(device)
    head = getattr(model, "head_name", "head") + "."
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.backbone_lr_scale == 1:
        parts = [(named, 1.0)]
    else:
        parts = [([(n, p) for n, p in named if not n.startswith(head)], cfg.backbone_lr_scale),
                 ([(n, p) for n, p in named if n.startswith(head)], 1.0)]
    params = []
    for mine, scale in parts:
        for decay in (True, False):
            group = [p for _, p in mine if (p.ndim > 1) == decay]
            if group:
                params.append({"params": group, "base_lr": cfg.lr * scale,
                               "weight_decay": cfg.weight_decay if decay else 0.0})
    if cfg.optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=cfg.lr)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True)
    return model, opt, report
