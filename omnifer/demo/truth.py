"""Compare what the pipeline found with a world whose answers are known (the demo world).

The synthetic world keeps its ground truth apart from the images (``truth/faces.parquet``:
relpath, face_index, box, landmarks, label). Here detected faces are matched to true faces
by IoU within the same image, which gives detection recall/precision and, for curated faces,
pseudo-label precision: the numbers that say whether mining works at all.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes ``a`` (N,4) and ``b`` (M,4), x1 y1 x2 y2."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def _root_prefix(root: Path | str) -> str:
    if isinstance(root, Path) or "://" not in str(root):
        return "file://" + str(Path(root).resolve()).rstrip("/") + "/"
    return str(root).rstrip("/") + "/"


def _relpath(source_uri: str, prefix: str) -> str | None:
    uri = unquote(source_uri)
    return uri[len(prefix) :] if uri.startswith(prefix) else None


def match_faces(
    faces: pa.Table, truth: pa.Table, unlabeled_root: Path | str, min_iou: float = 0.5
) -> dict[str, Any]:
    """Greedy IoU matching per image; returns recall, precision and face_id → true label.

    ``faces`` needs face_id, source_uri, bbox; ``truth`` needs relpath, x1, y1, x2, y2, label.
    ``unlabeled_root`` is the local folder or the URI prefix (``s3://b/p``) of the scenes.
    """
    prefix = _root_prefix(unlabeled_root)
    by_image: dict[str, list[dict]] = {}
    for row in truth.select(["relpath", "x1", "y1", "x2", "y2", "label"]).to_pylist():
        by_image.setdefault(row["relpath"], []).append(row)
    detected: dict[str, list[dict]] = {}
    for row in faces.select(["face_id", "source_uri", "bbox"]).to_pylist():
        rel = _relpath(row["source_uri"], prefix)
        if rel is not None:
            detected.setdefault(rel, []).append(row)
    labels: dict[str, str] = {}
    matched = 0
    for rel, dets in detected.items():
        true = by_image.get(rel, [])
        if not true:
            continue
        m = iou(np.array([d["bbox"] for d in dets]),
                np.array([[t["x1"], t["y1"], t["x2"], t["y2"]] for t in true]))
        used_d: set[int] = set()
        used_t: set[int] = set()
        for flat in np.argsort(-m, axis=None):
            i, j = np.unravel_index(flat, m.shape)
            if m[i, j] < min_iou:
                break
            if i in used_d or j in used_t:
                continue
            used_d.add(int(i))
            used_t.add(int(j))
            labels[dets[i]["face_id"]] = true[j]["label"]
            matched += 1
    n_true = truth.num_rows
    n_det = sum(len(v) for v in detected.values())
    return {
        "true_faces": n_true,
        "detected": n_det,
        "matched": matched,
        "recall": matched / n_true if n_true else 0.0,
        "precision": matched / n_det if n_det else 0.0,
        "labels": labels,
    }


def label_precision(selected: pa.Table, labels: dict[str, str]) -> dict[str, Any]:
    """How many selected pseudo-labels are right, overall and per class."""
    right: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for row in selected.select(["face_id", "label"]).to_pylist():
        truth = labels.get(row["face_id"])
        if truth is None:
            continue  # a false detection has no true label; counted by detection precision
        total[row["label"]] += 1
        right[row["label"]] += truth == row["label"]
    n = sum(total.values())
    return {
        "evaluated": n,
        "precision": sum(right.values()) / n if n else 0.0,
        "per_class": {k: right[k] / total[k] for k in sorted(total)},
    }


def load_truth(world: Path) -> pa.Table:
    return pq.read_table(Path(world) / "truth" / "faces.parquet")
