"""Training settings: :class:`TrainConfig` (recorded in every checkpoint's card)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from omnifer.errors import ConfigError, config_error


class TrainConfig(BaseModel):
    """Training settings; written into the card (``config``) with every checkpoint.

    Defaults were picked on the demo world (40/class, seed 1): lr 1e-3 with mild augmentation
    reached 0.39 test accuracy where lr 3e-3 with crop 0.7 / rotation 10 / jitter 0.3 did not
    leave chance on some seeds.
    """

    model_config = ConfigDict(extra="forbid")

    arch: str = "fercnn_small"
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    input_size: int = Field(64, ge=8)
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=2)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    balanced_sampling: bool = False
    val_fraction: float = Field(0.15, ge=0, lt=1)
    patience: int = Field(10, ge=0)  # epochs without val improvement; 0 = never stop early
    # augmentation. Flips are properties of the data set, recorded in the model card: right
    # for faces (the default), wrong for anything chiral (text, digits, arrows, road signs).
    hflip: bool = True  # random horizontal flips while training
    flip_tta: bool = True  # scoring/evaluation/prototypes average the image and its mirror
    crop_scale: tuple[float, float] = (0.85, 1.0)  # area fraction of the random resized crop
    max_rotation: float = Field(5.0, ge=0)  # degrees
    color_jitter: float = Field(0.1, ge=0, lt=1)  # ± brightness / contrast / saturation
    # reproducibility and resources
    seed: int = 0
    threads: int | None = 2  # torch CPU threads while training (None: leave as is)
    deterministic: bool = True
    device: str = "cpu"  # cpu | cuda | cuda:N | auto
    resume: bool = True
    # fine-tuning (omnifer.models.weights): a local weights file for ``arch``; its head is
    # replaced. ``pretrained_color``: the channel order its first conv was trained on (the
    # pipeline feeds BGR; RGB filters are reordered once at load). ``normalization``: "auto"
    # is the file's family (ImageNet for resnet*, ArcFace for iresnet*) with ``pretrained``,
    # else "data" (mean/std of the training images).
    pretrained: str | None = None
    pretrained_color: Literal["rgb", "bgr"] = "rgb"
    normalization: Literal["auto", "data", "imagenet", "arcface"] = "auto"
    freeze_stages: int = Field(0, ge=0)  # first N of (stem, layer1 … layer4) kept frozen
    backbone_lr_scale: float = Field(1.0, gt=0, le=1)  # backbone LR = lr × this; head: lr
    # temperature scaling on the validation split after training (changes the card, not the
    # weights; omnifer.models.calibration)
    calibrate: bool = True

    def fingerprint_fields(self) -> dict[str, Any]:
        """What changes the result (not where or how fast it runs).

        The fine-tuning fields count only when set, so runs from before they existed keep
        their fingerprint (and resume); ``calibrate`` never does (the weights do not change).
        """
        data = self.model_dump(mode="json", exclude={"threads", "device", "resume",
                                                     "calibrate"})
        for name in ("pretrained", "pretrained_color", "normalization", "freeze_stages",
                     "backbone_lr_scale"):
            if data[name] == TrainConfig.model_fields[name].default:
                data.pop(name)
        return data


def load_train_config(path: Path | str | None = None, **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` from an optional YAML file, then keyword overrides (not None)."""
    raw: dict[str, Any] = {}
    if path is not None:
        import yaml

        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read train config {path}: {exc}") from None
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig(**raw)
    except ValidationError as exc:
        raise config_error("train config", exc) from None
