"""The primitive model: a compact CNN, a registry of architectures, and checkpoints.

A checkpoint is a folder::

    model.safetensors       the state dict (safetensors: no pickle)
    prototypes.safetensors  ``prototypes`` (C, D) float32: per class, the L2-normalised mean
                            of the L2-normalised (flip-averaged) embeddings of the labeled
                            training images; zero rows for classes without images;
                            ``center`` (D,): the labeled set's mean feature, subtracted
                            before normalising every embedding
    card.json               :class:`ModelCard`: classes, input size, mean/std, architecture,
                            training datasets (+ digests), metrics, seed, config, code version,
                            created_at, and the sha256 of both weight files

``card.json`` is written last, so a folder with a card is complete. Loading checks the
sha256s; anything missing or corrupt is a :class:`ModelFileError` with one line.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import load_file, save_file
from torch import nn

from omnifer.errors import ModelFileError
from omnifer.modelfiles import sha256_file
from omnifer.version import code_version

WEIGHTS_FILE = "model.safetensors"
PROTOTYPES_FILE = "prototypes.safetensors"
CARD_FILE = "card.json"
CARD_FORMAT = 1

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make an architecture constructor available to :func:`create_model`."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = fn
        return fn

    return wrap


def _register_backbones() -> None:
    import omnifer.models  # noqa: F401  (registers resnet*/iresnet* on import)


def list_models() -> list[str]:
    _register_backbones()
    return sorted(_MODELS)


def create_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build a registered architecture; unknown name → :class:`ModelFileError`."""
    _register_backbones()
    if name not in _MODELS:
        raise ModelFileError(f"unknown model architecture {name!r}; known: {list_models()}")
    return _MODELS[name](num_classes=num_classes, **kwargs)


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


@register_model("fercnn_small")
def fercnn_small(num_classes: int, **kw: Any) -> FerCNN:
    """~0.39 M parameters at 7 classes: widths 32-64-128-256, one conv per block."""
    return FerCNN(num_classes, **{"widths": (32, 64, 128, 256), **kw})


@register_model("fercnn_base")
def fercnn_base(num_classes: int, **kw: Any) -> FerCNN:
    """~0.96 M parameters: as small, with a second conv in the last two blocks."""
    return FerCNN(num_classes, **{"widths": (32, 64, 128, 256),
                                  "double": (False, False, True, True), **kw})


@register_model("fercnn_tiny")
def fercnn_tiny(num_classes: int, **kw: Any) -> FerCNN:
    """~25 k parameters (widths 8-16-32-64): for tests and smoke runs."""
    return FerCNN(num_classes, **{"widths": (8, 16, 32, 64), **kw})


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- preprocessing (shared by training, scoring and evaluation) ----------------------------------
def to_tensor(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, H, W, 3) uint8 BGR → (N, 3, H, W) float32 in [0, 1] (channel order kept: BGR)."""
    t = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return t.permute(0, 3, 1, 2).float().div_(255.0)


def normalize(x: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def preprocess(
    images: np.ndarray, input_size: int, mean: list[float], std: list[float],
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """uint8 BGR crops of any size → normalised (N, 3, S, S) float tensor on ``device``."""
    from omnifer.datasets import resize_images

    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected N×H×W×3 images, got shape {images.shape}")
    if images.shape[1:3] != (input_size, input_size):
        images = resize_images(images, input_size)
    return normalize(to_tensor(images, device), mean, std)


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
    flip_tta: bool = True  # score = mean of the image and its mirror image
    # Temperature scaling (omnifer.models.calibration): scoring divides logits by it.
    temperature: float = Field(1.0, gt=0)
    calibration: dict[str, Any] = Field(default_factory=dict)

    @property
    def version_hint(self) -> str:
        """Short id from the weights hash (for rows when no registry version is known)."""
        return (self.files.get(WEIGHTS_FILE) or self.files.get("model.onnx") or "unknown")[:12]


@dataclass
class LoadedModel:
    """A model ready for inference (eval mode) with its card and class prototypes."""

    model: nn.Module  # FerCNN or another registered architecture (embed + classify)
    card: ModelCard
    prototypes: torch.Tensor  # (C, D) float32, rows L2-normalised (or zero)
    center: torch.Tensor  # (D,) float32, subtracted from features before normalising

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.card.classes)

    def preprocess(self, images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        return preprocess(images, self.card.input_size, self.card.mean, self.card.std, device)


def write_file_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` then rename over ``path``: a crash never leaves a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(
    directory: Path | str, model: nn.Module, card: ModelCard, prototypes: torch.Tensor,
    center: torch.Tensor | None = None,
) -> ModelCard:
    """Write weights, prototypes and (last) the card; returns the card with file hashes."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CARD_FILE).unlink(missing_ok=True)  # incomplete until the card is back
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    protos = prototypes.detach().cpu().float().contiguous()
    if protos.shape != (len(card.classes), card.embedding_dim):
        raise ValueError(f"prototypes shape {tuple(protos.shape)} != "
                         f"({len(card.classes)}, {card.embedding_dim})")
    center = (torch.zeros(card.embedding_dim) if center is None
              else center.detach().cpu().float().contiguous().reshape(-1))
    meta = {"arch": card.arch, "classes": json.dumps(card.classes)}
    write_file_atomic(directory / WEIGHTS_FILE, lambda p: save_file(state, str(p), metadata=meta))
    extra = {"prototypes": protos, "center": center}
    write_file_atomic(directory / PROTOTYPES_FILE,
                      lambda p: save_file(extra, str(p), metadata=meta))
    files = {name: sha256_file(directory / name) for name in (WEIGHTS_FILE, PROTOTYPES_FILE)}
    card = card.model_copy(update={"files": files})
    text = json.dumps(card.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
    write_file_atomic(directory / CARD_FILE, lambda p: p.write_text(text))
    return card


def read_card(directory: Path | str) -> ModelCard:
    path = Path(directory) / CARD_FILE
    if not path.is_file():
        raise ModelFileError(f"no model checkpoint at {directory} ({CARD_FILE} missing)")
    try:
        return ModelCard.model_validate_json(path.read_text())
    except (ValidationError, ValueError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0]
        raise ModelFileError(f"corrupt model card {path}: {first}") from None


def load_checkpoint(directory: Path | str, device: torch.device | str = "cpu") -> LoadedModel:
    """Rebuild the model from a checkpoint folder (safetensors only), in eval mode.

    A folder of another model kind (``card.kind``, e.g. an imported ONNX model) gives that
    kind's loaded model (:func:`omnifer.models.load_model`), which scores the same way.
    """
    directory = Path(directory)
    card = read_card(directory)
    if card.kind != "torch":
        from omnifer.models import load_model

        return load_model(directory, card)  # type: ignore[return-value]
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for name in (WEIGHTS_FILE, PROTOTYPES_FILE):
        path = directory / name
        if not path.is_file():
            raise ModelFileError(f"model checkpoint {directory} is incomplete: {name} missing")
        want = card.files.get(name)
        if want and sha256_file(path) != want:
            raise ModelFileError(f"{path} does not match the sha256 in {CARD_FILE}: corrupt or "
                                 "replaced; retrain or copy the checkpoint again")
        try:
            tensors[name] = load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise ModelFileError(f"cannot read {path}: {exc}") from None
    model = create_model(card.arch, len(card.classes), **card.arch_kwargs)
    try:
        model.load_state_dict(tensors[WEIGHTS_FILE], strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelFileError(f"{directory / WEIGHTS_FILE} does not fit {card.arch}: {first}")\
            from None
    protos = tensors[PROTOTYPES_FILE].get("prototypes")
    if protos is None or protos.shape != (len(card.classes), card.embedding_dim):
        raise ModelFileError(f"{directory / PROTOTYPES_FILE} has no (C, D) 'prototypes' tensor")
    center = tensors[PROTOTYPES_FILE].get("center", torch.zeros(card.embedding_dim))
    model.to(device).eval()
    return LoadedModel(model, card, F.normalize(protos.float(), dim=1).to(device),
                       center.float().reshape(-1).to(device))
