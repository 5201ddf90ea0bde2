"""Score face crops with the primitive model (batched, flip TTA, bounded memory).

Per face (:class:`ScoreBatch`, arrays of length N):

* ``probs`` (N, C) float32: mean of softmax(logits / T) of the image and of its horizontally
  flipped image (flip test-time augmentation), or softmax(logits / T) of the image alone when
  the model card's ``flip_tta`` is off (a chiral data set: a mirrored image is another class,
  or none); ``T`` is the card's temperature (1 unless calibrated, see
  :mod:`omnifer.models.calibration`)
* ``label`` (N,) int64 argmax of ``probs``; ``confidence`` its probability; ``margin`` top-1
  minus top-2 probability; ``entropy`` of ``probs`` in nats
* ``flip_agreement`` (N,) bool: argmax(image) == argmax(flipped image); without flip TTA
  nothing was compared, and :meth:`ScoreBatch.to_arrow` (and the ingest) write nulls, which
  selection's flip gate lets through
* ``embedding`` (N, D) float32: mean of the (one or two) views' pooled features, minus the
  labeled set's mean feature (``center``), L2-normalised
* ``similarity`` (N,) float32: cosine of ``embedding`` to the prototype of the predicted class
  (the feature-wise similarity of the paper; 0 when that class had no labeled images)

A model without embeddings or prototypes (an ONNX model imported without an embedding output
or labeled split) gives ``embedding`` of width 0 and ``similarity`` NaN (null in Arrow).
Every model kind (:mod:`omnifer.models`) is scored here the same way.

Build one :class:`Scorer` per worker and keep it: the model stays loaded (and warm).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from omnifer.devices import resolve_device
from omnifer.imaging.transforms import resize_image
from omnifer.models.checkpoints import LoadedModel
from omnifer.models.inference import fold_batch_norm


@dataclass
class ScoreBatch:
    probs: np.ndarray
    label: np.ndarray
    confidence: np.ndarray
    margin: np.ndarray
    entropy: np.ndarray
    flip_agreement: np.ndarray
    embedding: np.ndarray
    similarity: np.ndarray
    classes: tuple[str, ...]
    flip_tta: bool = True  # False: flip_agreement was not measured (all True, meaningless)

    def __len__(self) -> int:
        return len(self.label)

    @property
    def label_names(self) -> list[str]:
        return [self.classes[i] for i in self.label]

    @classmethod
    def concat(cls, batches: Sequence[ScoreBatch], classes: Sequence[str] = ()) -> ScoreBatch:
        """Join batches; with no batches, an empty one (``classes`` says which)."""
        if not batches:
            c = len(classes)
            return cls(np.zeros((0, c), np.float32), np.zeros(0, np.int64),
                       *(np.zeros(0, np.float32) for _ in range(3)), np.zeros(0, bool),
                       np.zeros((0, 0), np.float32), np.zeros(0, np.float32), tuple(classes))
        fields = ("probs", "label", "confidence", "margin", "entropy", "flip_agreement",
                  "embedding", "similarity")
        return cls(**{f: np.concatenate([getattr(b, f) for b in batches]) for f in fields},
                   classes=batches[0].classes, flip_tta=batches[0].flip_tta)

    def to_arrow(self, face_ids: Sequence[str] | None = None) -> pa.Table:
        """A table with the ``scores`` dataset's score columns (plus ``face_id`` if given)."""
        n, c = self.probs.shape
        d = self.embedding.shape[1] if self.embedding.ndim == 2 else 0
        cols: dict[str, pa.Array] = {}
        if face_ids is not None:
            if len(face_ids) != n:
                raise ValueError(f"{len(face_ids)} face ids for {n} scores")
            cols["face_id"] = pa.array(list(face_ids), pa.string())
        cols.update({
            "label": pa.array(self.label_names, pa.string()),
            "label_index": pa.array(self.label.astype(np.int16), pa.int16()),
            "probs": _list_array(self.probs, c),
            "confidence": pa.array(self.confidence.astype(np.float32)),
            "margin": pa.array(self.margin.astype(np.float32)),
            "entropy": pa.array(self.entropy.astype(np.float32)),
            "flip_agreement": (pa.array(self.flip_agreement.astype(bool)) if self.flip_tta
                               else pa.nulls(n, pa.bool_())),
            "similarity": pa.array(self.similarity.astype(np.float32),
                                   mask=np.isnan(self.similarity)),
            "embedding": (_list_array(self.embedding, d) if d
                          else pa.nulls(n, pa.list_(pa.float32()))),  # a model without one
        })
        return pa.table(cols)


def _list_array(values: np.ndarray, width: int) -> pa.Array:
    flat = pa.array(np.ascontiguousarray(values, np.float32).reshape(-1))
    offsets = pa.array(np.arange(0, (len(values) + 1) * width, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, flat)


@torch.inference_mode()
def forward_tta(
    model: torch.nn.Module, x: torch.Tensor, center: torch.Tensor | None = None,
    temperature: float = 1.0, flip: bool = True,
) -> tuple[torch.Tensor, ...]:
    """One pass over image and flipped image: (probs, pred, pred_flip, embedding, features).

    ``probs`` is the mean of the two softmaxes of logits / ``temperature``; ``features`` the
    mean of the two views' pooled features and ``embedding`` those minus ``center``,
    L2-normalised. With ``flip=False`` (the card's ``flip_tta`` off) only the image itself is
    seen and ``pred_flip`` is ``pred``. Used by the scorer and for the prototypes at training
    time, so both sides of the similarity are computed the same way.
    """
    n = x.shape[0]
    feats = model.embed(torch.cat([x, torch.flip(x, dims=[3])]) if flip else x)
    logits = model.classify(feats)
    p = (logits.float() / temperature).softmax(dim=1)
    if not flip:
        feat = feats.float()
        emb = F.normalize(feat - center if center is not None else feat, dim=1)
        pred = p.argmax(1)
        return p, pred, pred, emb, feat
    probs = (p[:n] + p[n:]) / 2
    feat = (feats[:n] + feats[n:]).float() / 2
    emb = F.normalize(feat - center if center is not None else feat, dim=1)
    return probs, p[:n].argmax(1), p[n:].argmax(1), emb, feat


#: Crops per forward pass when none is given, by device. On a CPU one thread scored a batch of
#: 16 FerCNN-small crops 1.5x faster per face than a batch of 128 (4.6-5.3 against 7.7 ms a
#: face, flip TTA; the activations of 256 images at 64 px fall out of cache); on a GPU a large
#: batch is what saves kernel launches (21.5x one at a time at 128 on an H200).
#: docs/performance.md, "Scoring".
CPU_BATCH_SIZE = 16
GPU_BATCH_SIZE = 128


def batch_size_for(device: torch.device) -> int:
    """The default crops per forward pass on ``device`` (:data:`CPU_BATCH_SIZE` or
    :data:`GPU_BATCH_SIZE`)."""
    return CPU_BATCH_SIZE if device.type == "cpu" else GPU_BATCH_SIZE


class Scorer:
    """Keeps a loaded model on a device and scores crops in batches of ``batch_size`` (None:
    :func:`batch_size_for` the device). A torch model is scored through an inference copy
    with its batch norms folded into its convolutions
    (:func:`omnifer.models.inference.fold_batch_norm`).

    ``loaded``: a :class:`~omnifer.models.checkpoints.LoadedModel` or another kind's loaded
    model (:func:`omnifer.models.checkpoints.load_checkpoint` gives the right one).
    ``calibrated=False`` ignores the card's temperature (raw confidences, as before
    calibration). ``device``: :func:`omnifer.devices.resolve_device` (None: CUDA if present).
    Flip test-time augmentation follows the model card's ``flip_tta`` unless ``flip_tta``
    says otherwise.
    """

    def __init__(self, loaded: LoadedModel, batch_size: int | None = None,
                 device: str | torch.device | None = None, calibrated: bool = True,
                 flip_tta: bool | None = None) -> None:
        self.device = resolve_device(device)
        self.loaded = loaded
        self.flip_tta = loaded.card.flip_tta if flip_tta is None else bool(flip_tta)
        self.kind = getattr(loaded.card, "kind", "torch")
        if self.kind == "torch":  # an inference copy: batch norm folded into its conv
            self.model = fold_batch_norm(loaded.model).to(self.device)
        else:
            self.model = loaded.to(self.device)  # e.g. OnnxModel: picks its providers
            if self.flip_tta != loaded.card.flip_tta:  # the kind reads flip_tta from its card
                self.model = copy.copy(self.model)
                self.model.card = loaded.card.model_copy(update={"flip_tta": self.flip_tta})
        protos = loaded.prototypes
        self.prototypes = protos.to(self.device) if protos is not None else None
        self.center = loaded.center.to(self.device) if loaded.center is not None else None
        self.temperature = float(loaded.card.temperature) if calibrated else 1.0
        self.batch_size = max(1, int(batch_size or batch_size_for(self.device)))

    @property
    def classes(self) -> tuple[str, ...]:
        return self.loaded.classes

    def _score_one(self, crops: np.ndarray) -> ScoreBatch:
        if self.kind == "torch":
            x = self.loaded.preprocess(crops, self.device)
            probs, pred, pred_flip, emb, _ = forward_tta(self.model, x, self.center,
                                                         self.temperature, flip=self.flip_tta)
        else:
            probs, pred, pred_flip, emb = self.model.forward_tta(crops, self.temperature)
        top2 = probs.topk(min(2, probs.shape[1]), dim=1).values
        label = probs.argmax(dim=1)
        margin = top2[:, 0] - top2[:, 1] if top2.shape[1] > 1 else top2[:, 0]
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=1)
        if emb is None:
            emb = torch.zeros(len(label), 0)
        if self.prototypes is not None and emb.shape[1]:
            sim = (emb * self.prototypes[label].to(emb.device)).sum(dim=1)
        else:
            sim = torch.full((len(label),), float("nan"))

        def np32(t: torch.Tensor) -> np.ndarray:
            return t.float().cpu().numpy().astype(np.float32)

        return ScoreBatch(np32(probs), label.cpu().numpy().astype(np.int64), np32(top2[:, 0]),
                          np32(margin), np32(entropy), (pred == pred_flip).cpu().numpy(),
                          np32(emb), np32(sim), self.classes, self.flip_tta)

    def view_logits(self, crops: np.ndarray) -> np.ndarray:
        """(V, N, C) float32 logits of each view (the image, and its flipped image when flip
        TTA is on): what a temperature is fitted on (:mod:`omnifer.models.calibration`).
        Probability outputs come back as log-probabilities."""
        crops = np.asarray(crops)
        views = 2 if self.flip_tta else 1
        parts = [np.zeros((views, 0, len(self.classes)), np.float32)]
        for i in range(0, len(crops), self.batch_size):
            chunk = crops[i : i + self.batch_size]
            if self.kind != "torch":
                parts.append(self.model.view_logits(chunk))
                continue
            with torch.inference_mode():
                x = self.loaded.preprocess(chunk, self.device)
                z = self.model(torch.cat([x, torch.flip(x, dims=[3])]) if views == 2 else x)
            parts.append(z.float().reshape(views, len(chunk), -1).cpu().numpy())
        return np.concatenate(parts, axis=1)

    def score(self, crops: np.ndarray) -> ScoreBatch:
        """Score (N, H, W, 3) uint8 BGR crops (any size; resized to the model's input)."""
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[-1] != 3 or crops.dtype != np.uint8:
            raise ValueError(f"expected N×H×W×3 uint8 crops, got {crops.shape} {crops.dtype}")
        parts = [self._score_one(crops[i : i + self.batch_size])
                 for i in range(0, len(crops), self.batch_size)]
        return ScoreBatch.concat(parts, self.classes)

    def score_iter(self, crops: Iterable[np.ndarray]) -> Iterator[ScoreBatch]:
        """Stream single H×W×3 crops; yields one :class:`ScoreBatch` per ``batch_size`` crops.

        Crops of different sizes are resized to the model's input as they arrive.
        """
        size = self.loaded.card.input_size
        buf: list[np.ndarray] = []
        for crop in crops:
            crop = resize_image(crop, size)
            buf.append(crop)
            if len(buf) == self.batch_size:
                yield self._score_one(np.stack(buf))
                buf = []
        if buf:
            yield self._score_one(np.stack(buf))
