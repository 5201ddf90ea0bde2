"""Model cards and checkpoint file names: what a checkpoint folder says about its model.

A leaf of :mod:`omnifer.models`: :mod:`~omnifer.models.checkpoints` (torch) and
:mod:`~omnifer.models.onnx_model` (ONNX) both read and write cards through it.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from omnifer.errors import ModelFileError
from omnifer.version import code_version

WEIGHTS_FILE = "model.safetensors"
PROTOTYPES_FILE = "prototypes.safetensors"
CARD_FILE = "card.json"
CARD_FORMAT = 1

# -- checkpoints ---------------------------------------------------------------------------------
class DatasetRef(BaseModel):
    """A dataset a model was trained on: where from, how many, and a content digest."""

    name: str
    n: int
    digest: str
    role: str = "labeled"  # labeled | extra


class ModelCard(BaseModel):
    """Everything needed to rebuild, use and trace a checkpoint (``card.json``)."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    format: int = CARD_FORMAT
    arch: str
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    classes: list[str]
    input_size: int
    mean: list[float]
    std: list[float]
    embedding_dim: int
    # Properties of the data, not of faces: is a mirrored image the same class? (faces: yes;
    # text, digits, arrows, anything chiral: no). Training augmentation follows ``hflip``;
    # scoring, evaluation, prototypes and selection's flip gate follow ``flip_tta``. Cards
    # written before these fields existed were all faces: both default to True.
    hflip: bool = True
    flip_tta: bool = True
    train_datasets: list[DatasetRef] = Field(default_factory=list)
    metrics: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    code_version: str = Field(default_factory=code_version)
    created_at: str = Field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())
    files: dict[str, str] = Field(default_factory=dict)  # file name → sha256
    # Model kinds (omnifer.models): "torch" = a registered architecture in model.safetensors;
    # "onnx" = model.onnx run by onnxruntime, described by ``onnx`` (omnifer.models.onnx_model).
    kind: str = "torch"
    onnx: dict[str, Any] = Field(default_factory=dict)
    color: str = "bgr"  # channel order the network is fed (torch models: always BGR)
    # Temperature scaling (omnifer.models.calibration): scoring divides logits by it.
    temperature: float = Field(1.0, gt=0)
    calibration: dict[str, Any] = Field(default_factory=dict)

    @property
    def version_hint(self) -> str:
        """Short id from the weights hash (for rows when no registry version is known)."""
        return (self.files.get(WEIGHTS_FILE) or self.files.get("model.onnx") or "unknown")[:12]



def write_file_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` then rename over ``path``: a crash never leaves a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_card(directory: Path | str) -> ModelCard:
    path = Path(directory) / CARD_FILE
    if not path.is_file():
        raise ModelFileError(f"no model checkpoint at {directory} ({CARD_FILE} missing)")
    try:
        return ModelCard.model_validate_json(path.read_text())
    except (ValidationError, ValueError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0]
        raise ModelFileError(f"corrupt model card {path}: {first}") from None
