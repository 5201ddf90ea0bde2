"""Parameters of one distillation run (:class:`DistillConfig`, stored with every output row).

Three settings depend on where the run goes (left None, they resolve on validation, and the
resolved values are what is stored): :data:`GPU_DEFAULTS` are the literature's DM setting,
for GPU workers (the ``gpu`` pool); :data:`CPU_DEFAULTS` fit a 2-core CPU (docs/performance.md
has the measurement).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from omnifer.distill.registry import METHODS
from omnifer.errors import config_error

#: For GPU workers (device ``cuda``, or ``auto`` where CUDA is present): the literature's
#: ConvNet-3 width 128 and 64 real images per class and step (Zhao & Bilen 2023 run 20 000
#: iterations; 1 000 is the pipeline's nightly budget).
GPU_DEFAULTS: dict[str, int] = {"iterations": 1000, "net_width": 128, "batch_real": 64}
#: For CPU runs: about 4x less arithmetic per iteration than :data:`GPU_DEFAULTS`, and 300
#: iterations (a few minutes on 2 cores at IPC 10).
CPU_DEFAULTS: dict[str, int] = {"iterations": 300, "net_width": 64, "batch_real": 32}


def on_gpu(device: str) -> bool:
    """Whether ``device`` names an accelerator (``auto``: whether CUDA is present); a device
    string only, so a stored config from a GPU worker still validates on a CPU machine."""
    if device == "auto":
        import torch

        return bool(torch.cuda.is_available())
    return not device.startswith("cpu")


class DistillConfig(BaseModel):
    """Parameters of one distillation run (stored as JSON in every output row).

    ``iterations``, ``net_width`` and ``batch_real`` left None take :data:`GPU_DEFAULTS` when
    ``device`` is a GPU (or ``auto`` with CUDA present) and :data:`CPU_DEFAULTS` otherwise.
    ``threads`` caps torch's CPU threads for the run (None: as they are); neither it nor
    ``device`` enters the distilled version's digest.
    """

    model_config = ConfigDict(extra="forbid")

    method: str = "dm"
    ipc: int = Field(10, ge=1, description="synthetic images per class")
    iterations: int | None = Field(None, ge=0, description="None: 1000 on a GPU, 300 on CPU")
    lr_img: float | None = Field(None, gt=0, description="pixel lr; None: 1.0 DM, 0.1 GM")
    batch_real: int | None = Field(None, ge=1, description="real images per class per "
                                   "iteration; None: 64 on a GPU, 32 on CPU")
    image_size: int = Field(32, ge=8)
    seed: int = 0
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    dsa_mode: Literal["single", "all"] = "single"
    hflip: bool | None = Field(None, description="mirror images in DSA and in evaluation; "
                               "a property of the data (faces: on, chiral sets: off); None: "
                               "the model card's (the distill stage) or on")
    init: Literal["real", "noise"] = "real"
    net_width: int | None = Field(None, ge=1, description="ConvNet channels; None: 128 on a "
                                  "GPU, 64 on CPU")
    net_depth: int = Field(3, ge=1)
    gm_outer_loop: int = Field(5, ge=1, description="GM: image updates per random net")
    gm_inner_loop: int = Field(5, ge=0, description="GM: net steps on syn between updates")
    gm_lr_net: float = Field(0.01, gt=0)
    device: str = "auto"
    threads: int | None = Field(None, ge=1, description="torch CPU threads while distilling; "
                                "None: leave as is (one per core)")

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
        defaults = GPU_DEFAULTS if on_gpu(self.device) else CPU_DEFAULTS
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
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
