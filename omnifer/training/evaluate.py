"""Figures for models and curated sets: accuracy, per-class accuracy, confusion, precision."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from omnifer.curation.scoring import Scorer
from omnifer.errors import DatasetError
from omnifer.labeled.base import LabeledData
from omnifer.models.checkpoints import LoadedModel


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64; rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return cm


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float((y_true == y_pred).mean()) if len(y_true) else float("nan")


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Recall per class (NaN for classes absent from the ground truth)."""
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def mean_class_accuracy(cm: np.ndarray) -> float:
    """Mean of per-class accuracy over classes that occur in the ground truth."""
    pc = per_class_accuracy(cm)
    return float(np.nanmean(pc)) if np.isfinite(pc).any() else float("nan")


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray,
                           classes: Sequence[str]) -> dict[str, Any]:
    cm = confusion_matrix(y_true, y_pred, len(classes))
    pc = per_class_accuracy(cm)
    return {
        "n": int(len(y_true)),
        "accuracy": accuracy(y_true, y_pred),
        "mean_class_accuracy": mean_class_accuracy(cm),
        "per_class_accuracy": {c: (None if np.isnan(a) else float(a))
                               for c, a in zip(classes, pc, strict=True)},
        "support": {c: int(s) for c, s in zip(classes, cm.sum(axis=1), strict=True)},
        "confusion": cm.tolist(),
        "classes": list(classes),
    }


def evaluate_model(loaded: LoadedModel, data: LabeledData, batch_size: int | None = None,
                   device: str | None = None) -> dict[str, Any]:
    """Score ``data`` with the model (flip TTA when its card's ``flip_tta`` is on, as in
    production) and compare to its labels. ``batch_size`` None: the device's scoring batch
    (:func:`omnifer.curation.scoring.batch_size_for`).

    ``data``'s classes are matched to the model's by name (so an image folder with a subset
    of the classes works). Returns accuracy, mean_class_accuracy, per_class_accuracy,
    support, confusion (rows true, columns predicted, model class order), classes, n.
    """
    data = data.remapped(loaded.classes)
    scores = Scorer(loaded, batch_size=batch_size, device=device).score(data.images)
    return classification_metrics(data.hard_labels(), scores.label, loaded.classes)


def pseudo_label_precision(selected: pa.Table, truth: Mapping[str, str | None]) -> dict[str, Any]:
    """Precision of the pseudo-labels of ``selected`` (face_id, label[, copies]) against
    ``truth`` (face_id → true label; faces absent or mapped to None are 'unmatched', e.g. a
    false detection). Returns n, matched, correct, precision (over matched rows),
    precision_weighted (rows counted ``copies`` times), per_class {label: {n, correct,
    precision}}."""
    if not {"face_id", "label"} <= set(selected.column_names):
        raise DatasetError("selected table needs face_id and label columns")
    ids = [str(f) for f in selected["face_id"].to_pylist()]
    labels = selected["label"].to_pylist()
    copies = (selected["copies"].to_pylist() if "copies" in selected.column_names
              else [1] * len(ids))
    matched = correct = 0
    w_matched = w_correct = 0
    per_class: dict[str, dict[str, Any]] = {}
    for fid, lab, cp in zip(ids, labels, copies, strict=True):
        true = truth.get(fid)
        if true is None:
            continue
        ok = true == lab
        matched += 1
        correct += ok
        w_matched += int(cp or 1)
        w_correct += int(cp or 1) * ok
        entry = per_class.setdefault(str(lab), {"n": 0, "correct": 0})
        entry["n"] += 1
        entry["correct"] += int(ok)
    for entry in per_class.values():
        entry["precision"] = entry["correct"] / entry["n"]
    return {
        "n": len(ids),
        "matched": matched,
        "correct": int(correct),
        "precision": correct / matched if matched else float("nan"),
        "precision_weighted": w_correct / w_matched if w_matched else float("nan"),
        "per_class": dict(sorted(per_class.items())),
    }

def evaluate_calibration(loaded: Any, data: Any, split: str = "test",
                         batch_size: int | None = None) -> Any:
    """How calibrated a loaded model (any kind) is on labeled ``data``: its card's temperature
    against no scaling, on the probabilities scoring emits (nothing is fitted)."""
    from omnifer.curation.scoring import Scorer
    from omnifer.models.calibration import calibrate

    data = data.remapped(loaded.classes)
    z = Scorer(loaded, batch_size=batch_size).view_logits(data.images)
    return calibrate(z, data.hard_labels(), split, temperature=loaded.card.temperature)
