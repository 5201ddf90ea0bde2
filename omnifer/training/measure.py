"""What a training run measures on its validation split after training, for the card.

:func:`confusion_matrix`: ``metrics.val_confusion`` (the registry and the run report read it).
:func:`calibrate_model`: ``card.temperature`` and ``card.calibration``, a temperature fitted on
the validation split (temperature scaling, Guo et al. 2017; :mod:`omnifer.models.calibration`)
on the views scoring will see: the image and its mirror image with flip TTA, the image alone
without (``flip_tta`` off). Used by :mod:`omnifer.training.train`.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from omnifer.imaging.tensors import normalize
from omnifer.labeled.base import LabeledData
from omnifer.models import calibration
from omnifer.training.config import TrainConfig

log = logging.getLogger(__name__)


@torch.no_grad()
def confusion_matrix(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                     mean: list[float], std: list[float], num_classes: int,
                     batch: int = 256) -> list[list[int]]:
    """Confusion matrix (C, C) as nested lists: ``[true][predicted]`` counts, no TTA.

    ``x``: (N, 3, S, S) uint8 images; ``y``: (N, C) (soft) targets, argmax = true class.
    """
    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for i in range(0, len(x), batch):
        pred = model(normalize(x[i : i + batch].float().div(255.0), mean, std)).argmax(1)
        true = y[i : i + batch].argmax(1)
        cm += torch.bincount((true * num_classes + pred).cpu(),
                             minlength=num_classes * num_classes).view(num_classes, num_classes)
    return cm.tolist()


def calibrate_model(model: torch.nn.Module, cfg: TrainConfig, held: LabeledData | None,
                    given_val: bool, mean: list[float], std: list[float],
                    device: torch.device) -> dict[str, Any]:
    """The card's ``calibration``: a temperature fitted on the validation split ``held`` (or
    why not: ``calibrate: false``, no split, fewer than ``calibration.MIN_IMAGES`` images).

    ``given_val``: the split was given (not held out of ``train``), which the record names.
    """
    if not cfg.calibrate:
        return calibration.skipped("calibrate: false")
    if held is None:
        return calibration.skipped("no validation split")
    if len(held) < calibration.MIN_IMAGES:
        return calibration.skipped(f"{len(held)} validation images < {calibration.MIN_IMAGES}")
    z = calibration.torch_view_logits(model, held.images, mean, std, device)
    if not cfg.flip_tta:
        z = z[:1]  # scoring sees the image alone: fit on what it will divide
    split = "val" if given_val else f"val ({cfg.val_fraction:g} of train)"
    result = calibration.calibrate(z, held.hard_labels(), split)
    log.info("calibration: %s", result.line())
    return result.model_dump()
