"""Parameters of one distillation run (:class:`DistillConfig`, stored with every output row)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from omnifer.distill.registry import METHODS
from omnifer.errors import config_error


class DistillConfig(BaseModel):
    """Parameters of one distillation run (stored as JSON in every output row)."""

    model_config = ConfigDict(extra="forbid")

    method: str = "dm"
    ipc: int = Field(10, ge=1, description="synthetic images per class")
    iterations: int = Field(1000, ge=0)
    lr_img: float | None = Field(None, gt=0, description="pixel lr; None: 1.0 DM, 0.1 GM")
    batch_real: int = Field(64, ge=1, description="real images per class per iteration")
    image_size: int = Field(32, ge=8)
    seed: int = 0
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    dsa_mode: Literal["single", "all"] = "single"
    hflip: bool | None = Field(None, description="mirror images in DSA and in evaluation; "
                               "a property of the data (faces: on, chiral sets: off); None: "
                               "the model card's (the distill stage) or on")
    init: Literal["real", "noise"] = "real"
    net_width: int = Field(128, ge=1)
    net_depth: int = Field(3, ge=1)
    gm_outer_loop: int = Field(5, ge=1, description="GM: image updates per random net")
    gm_inner_loop: int = Field(5, ge=0, description="GM: net steps on syn between updates")
    gm_lr_net: float = Field(0.01, gt=0)
    device: str = "auto"

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in METHODS:
            raise ValueError(f"unknown method {value!r}; registered: {sorted(METHODS)}")
        return value

    @model_validator(mode="after")
    def _resolve(self) -> DistillConfig:
        if self.lr_img is None:
            self.lr_img = 1.0 if self.method == "dm" else 0.1
        if self.image_size >> self.net_depth < 1:
            raise ValueError(f"image_size {self.image_size} too small for depth {self.net_depth}")
        return self


    @property
    def augmentation(self) -> str:
        """The DSA strategy actually used: ``dsa_strategy`` without ``flip`` when ``hflip`` is
        False (distillation, and training the evaluation networks, both use it)."""
        if self.hflip is False:
            return "_".join(op for op in self.dsa_strategy.split("_") if op != "flip")
        return self.dsa_strategy


def make_config(overrides: dict[str, Any] | None = None, **more: Any) -> DistillConfig:
    """A :class:`DistillConfig` from settings overrides plus explicit values (None ignored);
    invalid values are one :class:`~omnifer.errors.ConfigError`."""
    values = {**(overrides or {}), **{k: v for k, v in more.items() if v is not None}}
    try:
        return DistillConfig(**values)
    except ValidationError as exc:
        raise config_error("distill settings", exc) from None
