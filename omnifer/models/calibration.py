"""Calibrated confidence: temperature scaling and the expected calibration error (ECE).

Method: temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML
2017): one scalar ``T`` divides every logit before the softmax; it is fitted by minimising the
negative log-likelihood on a held-out labeled split. Here the probabilities that scoring emits
are flip-TTA averages, so ``T`` is fitted on exactly those: ``p = mean_v softmax(z_v / T)``
over the views ``v`` (image, flipped image). For one view ``T`` never changes the predicted
class; for the average of two it can, rarely, when the views disagree.

ECE (Naeini et al., AAAI 2015; Guo et al. 2017): confidences binned into ``n_bins`` equal-width
bins, ``Σ_b |B_b|/N · |accuracy(B_b) − mean confidence(B_b)|``. 0 means "among faces scored
0.8, 80 % are right". On a few dozen images the binned ECE is noisy (most bins hold one or two
faces) and can rise while the NLL and the gap between mean confidence and accuracy fall; the
split's size is printed with it, and ``omnifer evaluate`` gives it on a test split.

After calibration a selection threshold of ``t`` keeps faces each
right with probability ≥ ``t`` (on data like the calibration split), so the kept labels'
precision is at least about ``t``.

Label smoothing (the built-in trainer uses 0.1) makes the raw model *under*-confident, so the
fitted ``T`` is usually below 1 there: it sharpens.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import BaseModel

T_MIN, T_MAX = 0.05, 20.0
MIN_IMAGES = 30  # below this many labeled images a fitted temperature is mostly noise
NOISY_BELOW = 200  # a binned ECE on fewer images is mostly noise


class Calibration(BaseModel):
    """A fitted temperature and what it did on the split it was fitted on (stored in the card)."""

    temperature: float
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    n: int
    split: str
    n_bins: int = 15
    accuracy: float | None = None
    confidence_before: float | None = None  # mean top-1 confidence
    confidence_after: float | None = None

    def line(self) -> str:
        conf = ""
        if self.accuracy is not None:
            conf = (f", mean confidence {self.confidence_before:.3f} -> "
                    f"{self.confidence_after:.3f} (accuracy {self.accuracy:.3f})")
        noisy = " (few images: the ECE is noisy)" if self.n < NOISY_BELOW else ""
        return (f"temperature {self.temperature:.3f}: ECE {self.ece_before:.3f} -> "
                f"{self.ece_after:.3f}, NLL {self.nll_before:.3f} -> {self.nll_after:.3f}{conf} "
                f"on {self.n} images ({self.split}){noisy}")


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def tta_probs(view_logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(V, N, C) logits of V views → (N, C) mean over views of softmax(logits / T)."""
    z = np.asarray(view_logits, np.float64)
    if z.ndim == 2:
        z = z[None]
    return np.exp(_log_softmax(z / temperature)).mean(axis=0)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes (nats)."""
    p = probs[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(p, 1e-12, None)).mean()) if len(labels) else math.nan


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE of (N, C) probabilities against (N,) true class indices, equal-width bins on the
    top-1 confidence (see the module docstring). NaN for N = 0."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels)
    if len(labels) == 0:
        return math.nan
    conf = probs.max(axis=1)
    right = (probs.argmax(axis=1) == labels).astype(np.float64)
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.mean() * abs(right[sel].mean() - conf[sel].mean())
    return float(ece)


def fit_temperature(view_logits: np.ndarray, labels: np.ndarray) -> float:
    """The ``T`` in [0.05, 20] minimising the NLL of :func:`tta_probs` (a grid over log T,
    then golden-section refinement around the best grid point). Deterministic."""
    labels = np.asarray(labels, np.int64)

    def loss(log_t: float) -> float:
        return nll(tta_probs(view_logits, math.exp(log_t)), labels)

    grid = np.linspace(math.log(T_MIN), math.log(T_MAX), 61)
    values = [loss(g) for g in grid]
    i = int(np.argmin(values))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(40):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    best = (lo + hi) / 2
    # never worse than no scaling, or than the best grid point
    candidates = [(loss(best), best), (values[i], grid[i]), (loss(0.0), 0.0)]
    return float(math.exp(min(candidates)[1]))


def calibrate(view_logits: np.ndarray, labels: np.ndarray, split: str,
              n_bins: int = 15, temperature: float | None = None) -> Calibration:
    """Fit ``T`` on (V, N, C) ``view_logits`` with (N,) ``labels`` (or take ``temperature``);
    ECE, NLL and mean confidence before and after, and the accuracy."""
    labels = np.asarray(labels, np.int64)
    t = round(fit_temperature(view_logits, labels), 6) if temperature is None \
        else float(temperature)
    before, after = tta_probs(view_logits, 1.0), tta_probs(view_logits, t)
    return Calibration(
        temperature=t, ece_before=expected_calibration_error(before, labels, n_bins),
        ece_after=expected_calibration_error(after, labels, n_bins),
        nll_before=nll(before, labels), nll_after=nll(after, labels), n=len(labels),
        split=split, n_bins=n_bins, accuracy=float((after.argmax(1) == labels).mean()),
        confidence_before=float(before.max(1).mean()),
        confidence_after=float(after.max(1).mean()))




def torch_view_logits(model: Any, images: np.ndarray, mean: list[float], std: list[float],
                      device: Any = "cpu", batch: int = 256) -> np.ndarray:
    """(V=2, N, C) logits of a torch model (eval mode) on (N, S, S, 3) uint8 BGR images at its
    input size and on their mirror images, normalised with ``mean``/``std``."""
    import torch

    from omnifer.imaging.tensors import normalize, to_tensor

    parts = [np.zeros((2, 0, int(getattr(model, "num_classes", 0))), np.float32)]
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = normalize(to_tensor(images[i : i + batch], device), mean, std)
            z = model(torch.cat([x, torch.flip(x, dims=[3])])).float()
            parts.append(z.reshape(2, len(x), -1).cpu().numpy())
    return np.concatenate(parts[1:] or parts, axis=1)


def skipped(reason: str) -> dict[str, Any]:
    """The card's ``calibration`` entry when no temperature was fitted."""
    return {"temperature": 1.0, "skipped": reason}
