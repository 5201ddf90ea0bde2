"""Checkpoints of the FER model: folder layout, model card, save and load.

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

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from omnifer.errors import ModelFileError
from omnifer.imaging.tensors import preprocess
from omnifer.models.architectures import create_model
from omnifer.models.cards import (
    CARD_FILE,
    CARD_FORMAT,
    PROTOTYPES_FILE,
    WEIGHTS_FILE,
    DatasetRef,
    ModelCard,
    read_card,
    write_file_atomic,
)
from omnifer.models.modelfiles import sha256_file

__all__ = ["CARD_FILE", "CARD_FORMAT", "PROTOTYPES_FILE", "WEIGHTS_FILE", "DatasetRef",
           "LoadedModel", "ModelCard", "load_checkpoint", "read_card", "save_checkpoint",
           "write_file_atomic"]


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




def load_checkpoint(directory: Path | str, device: torch.device | str = "cpu") -> LoadedModel:
    """Rebuild the model from a checkpoint folder (safetensors only), in eval mode.

    A folder of another model kind (``card.kind``, e.g. an imported ONNX model) gives that
    kind's loaded model (:func:`omnifer.models.onnx_model.load_onnx_checkpoint`), which scores
    the same way.
    """
    directory = Path(directory)
    card = read_card(directory)
    if card.kind == "onnx":
        from omnifer.models.onnx_model import load_onnx_checkpoint

        return load_onnx_checkpoint(directory, card)  # type: ignore[return-value]
    if card.kind != "torch":
        raise ModelFileError(f"{directory}: unknown model kind {card.kind!r} in card.json "
                             "(known: torch, onnx); is this omnifer too old for it?")
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
