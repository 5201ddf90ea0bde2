"""ONNX facial-expression models as omnifer model versions, scored with onnxruntime.

``omnifer models import-onnx FILE --version V --classes a,b,c --mean … --std … --color …``
(:func:`import_onnx`) checks the file *at import* (so a bad one fails then, with one line, not
in the nightly run): it must load in onnxruntime, have one image input of rank 4 (NCHW or
NHWC, channels 3, or 1 for ``gray``), height/width fixed or fixable to ``--input-size``, and
an output of class scores with one column per class. Then it writes a checkpoint folder::

    model.onnx              the file, byte for byte
    prototypes.safetensors  only with an embedding output and a labeled split: ``center`` and
                            per-class ``prototypes`` of the flip-averaged embeddings, made as
                            for a trained model (:func:`omnifer.training.train.compute_prototypes`)
    card.json               kind "onnx", classes, input size, mean/std, colour, flip TTA,
                            temperature, the ``onnx`` section (:class:`OnnxSpec`), sha256s

and registers it (lineage: the file's name and sha256, the labeled split) like a trained one.

Scoring (:class:`OnnxModel`, used by :class:`omnifer.curation.scoring.Scorer`): crops resized to the
input size, colour-converted, normalised, run in batches (a fixed batch size is honoured by
padding), the image and its mirror image in one run when the card says ``flip_tta``. Class
scores that are logits get ``softmax(z / T)``; probabilities are turned back into
log-probabilities first (the same thing up to a constant). Embeddings come from the named
output; without one, scores have no embedding and ``similarity`` is null, and selection
skips its similarity gate with a note in the recorded policy
(:func:`omnifer.curation.selection.adapt_policy`).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict

from omnifer.errors import ModelFileError
from omnifer.models.cards import CARD_FILE, PROTOTYPES_FILE, ModelCard, read_card
from omnifer.models.modelfiles import sha256_file

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
Color = Literal["rgb", "bgr", "gray"]
GRAY_BGR = np.array([0.114, 0.587, 0.299], np.float32)  # ITU-R BT.601 luma, BGR order


class OnnxSpec(BaseModel):
    """The card's ``onnx`` section: how to feed the file and read its outputs."""

    model_config = ConfigDict(extra="ignore")

    file: str = ONNX_FILE
    input: str
    layout: Literal["nchw", "nhwc"] = "nchw"
    batch: int | None = None  # fixed batch size of the file; None = any
    logits_output: str
    embedding_output: str | None = None
    output_kind: Literal["logits", "probs"] = "logits"
    opset: int | None = None
    producer: str | None = None


# -- the runtime -----------------------------------------------------------------------------
def onnx_session(path: Path, device: str = "cpu") -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    providers = ["CPUExecutionProvider"]
    if str(device).startswith("cuda") and "CUDAExecutionProvider" in \
            ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelFileError(f"{path} is not a model onnxruntime can load: {first[:200]}") \
            from None


class OnnxModel:
    """A loaded ONNX model version: card, onnxruntime session, prototypes (or None).

    Thread-safe: one session serves every thread of a worker (onnxruntime's ``run`` is).
    """

    kind = "onnx"

    def __init__(self, path: Path, card: ModelCard, prototypes: torch.Tensor | None = None,
                 center: torch.Tensor | None = None, session: Any = None) -> None:
        self.path = Path(path)
        self.card = card
        self.spec = OnnxSpec.model_validate(card.onnx)
        self.prototypes = prototypes
        self.center = center
        self._session = session
        self._device = "cpu"
        self._lock = threading.Lock()

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.card.classes)

    @property
    def has_embedding(self) -> bool:
        return self.spec.embedding_output is not None

    def to(self, device: str | torch.device) -> OnnxModel:
        """Use CUDA through onnxruntime when asked and available (else the CPU)."""
        device = str(device)
        if device != self._device:
            self._device, self._session = device, None
        return self

    @property
    def session(self) -> Any:
        with self._lock:
            if self._session is None:
                self._session = onnx_session(self.path, self._device)
            return self._session

    def preprocess(self, crops: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 BGR crops at the input size → the input tensor (float32)."""
        x = crops.astype(np.float32) / np.float32(255.0)
        if self.card.color == "rgb":
            x = x[..., ::-1]
        elif self.card.color == "gray":
            x = (x @ GRAY_BGR)[..., None]
        mean = np.asarray(self.card.mean, np.float32)
        std = np.asarray(self.card.std, np.float32)
        x = (x - mean) / std
        if self.spec.layout == "nchw":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, np.float32)

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """One input tensor (B, …) → (class scores (B, C) float32, embedding (B, D) or None)."""
        names = [self.spec.logits_output]
        if self.spec.embedding_output:
            names.append(self.spec.embedding_output)
        fixed = self.spec.batch
        if fixed is None:
            outs = self.session.run(names, {self.spec.input: x})
        else:
            parts: list[list[np.ndarray]] = []
            for i in range(0, len(x), fixed):
                chunk = x[i : i + fixed]
                n = len(chunk)
                if n < fixed:
                    chunk = np.concatenate([chunk, np.zeros((fixed - n, *x.shape[1:]),
                                                            x.dtype)])
                parts.append([o[:n] for o in self.session.run(names, {self.spec.input: chunk})])
            outs = [np.concatenate([p[j] for p in parts]) for j in range(len(names))]
        scores = np.asarray(outs[0], np.float32).reshape(len(x), -1)
        emb = np.asarray(outs[1], np.float32).reshape(len(x), -1) if len(outs) > 1 else None
        return scores, emb

    def view_outputs(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, H, W, 3) uint8 BGR → (logits (V, N, C), flip-averaged embedding (N, D) or None).

        V = 2 (image, mirror image) with flip TTA, else 1. Probability outputs come back as
        log-probabilities, so that ``softmax(· / T)`` applies to every kind alike.
        """
        from omnifer.imaging.transforms import resize_images

        size = self.card.input_size
        if crops.shape[1:3] != (size, size):
            crops = resize_images(crops, size)
        n = len(crops)
        views = [crops, crops[:, :, ::-1]] if self.card.flip_tta else [crops]
        x = np.concatenate([self.preprocess(v) for v in views])
        scores, emb = self.run(x)
        if self.spec.output_kind == "probs":
            scores = np.log(np.clip(scores, 1e-12, None))
        logits = scores.reshape(len(views), n, -1)
        feat = emb.reshape(len(views), n, -1).mean(axis=0) if emb is not None else None
        return logits, feat

    def view_logits(self, crops: np.ndarray) -> np.ndarray:
        """(V, N, C) per-view logits (for calibration)."""
        return self.view_outputs(crops)[0]

    def forward_tta(self, crops: np.ndarray, temperature: float = 1.0) -> tuple[
        torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None
    ]:
        """(probs (N, C), pred (N,), pred of the mirror view (N,), embedding (N, D) or None).

        As :func:`omnifer.curation.scoring.forward_tta`: ``probs`` = mean over views of
        softmax(logits / T); the embedding is the flip-averaged output minus ``center``,
        L2-normalised.
        """
        logits, feat = self.view_outputs(crops)
        v, n, c = logits.shape
        p = (torch.from_numpy(logits.reshape(v * n, c)).float() / temperature).softmax(dim=1)
        probs = (p[:n] + p[n:]) / 2 if v == 2 else p
        emb = None
        if feat is not None:
            f = torch.from_numpy(np.ascontiguousarray(feat)).float()
            emb = F.normalize(f - self.center if self.center is not None else f, dim=1)
        return probs, p[:n].argmax(1), p[(v - 1) * n :].argmax(1), emb


def load_onnx_checkpoint(directory: Path | str, card: ModelCard | None = None) -> OnnxModel:
    """An :class:`OnnxModel` from a checkpoint folder; checks every file's sha256 first."""
    from safetensors.torch import load_file


    directory = Path(directory)
    card = card or read_card(directory)
    path = directory / ONNX_FILE
    for name in card.files:
        p = directory / name
        if not p.is_file():
            raise ModelFileError(f"model checkpoint {directory} is incomplete: {name} missing")
        if sha256_file(p) != card.files[name]:
            raise ModelFileError(f"{p} does not match the sha256 in {CARD_FILE}: corrupt or "
                                 "replaced; import the ONNX file again")
    if ONNX_FILE not in card.files:
        raise ModelFileError(f"{directory / CARD_FILE} lists no {ONNX_FILE}")
    protos = center = None
    if PROTOTYPES_FILE in card.files:
        try:
            extra = load_file(str(directory / PROTOTYPES_FILE), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise ModelFileError(f"cannot read {directory / PROTOTYPES_FILE}: {exc}") from None
        protos = F.normalize(extra["prototypes"].float(), dim=1)
        center = extra["center"].float().reshape(-1)
    return OnnxModel(path, card, protos, center)


# -- checking a file at import ------------------------------------------------------------------
