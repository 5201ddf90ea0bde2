"""Choose reliable pseudo-labeled faces from scores (the paper's "distilled data" input).

A face is *eligible* when it passes every gate of the :class:`SelectionPolicy`:

1. ``status`` is ``ok`` (when the column exists) and its label is among ``classes`` (if set)
2. confidence ≥ ``min_confidence`` (one number, or per class: ``{"happy": 0.9, ...}``; a
   class missing from the dict uses ``default_confidence``)
3. similarity ≥ ``min_similarity``: cosine of the face's embedding to the labeled prototype
   of its predicted class (feature-wise similarity, as in the paper). A model that gives no
   embeddings (an ONNX model imported without an embedding output) leaves ``similarity``
   null: :func:`adapt_policy` then drops this gate and says so in the policy's ``note``
4. ``flip_agreement`` when ``require_flip_agreement``; a null value passes: the scoring
   model has no flip test-time augmentation (its card's ``flip_tta`` is off because mirrored
   images are not the same class), so there was nothing to agree on
5. margin ≥ ``min_margin``; det_score ≥ ``min_det_score``; face_size ≥ ``min_face_size``
   (quality gates; a gate whose column is absent is skipped with a warning, and a null
   value passes it: no detector said anything about that face)

Then, per class (Noisy Student's balancing), eligible faces are ranked by ``rank_by``
(descending, ties by ``face_id`` ascending) and the top ``top_k_per_class`` are kept (all
when unset). With ``duplicate_to_k``, a class with fewer than K kept faces is filled up to K
by **copies**: rows are never duplicated; the ``copies`` int column says how many times a
training loader should repeat the row (K // n each, the best-ranked K % n one more, never
above ``max_copies``). Output order: label name, then rank, then ``face_id``.

What a confidence threshold means: a model whose card carries a fitted temperature
(``omnifer train`` fits one on the validation split; ``omnifer models import-onnx`` on a
labeled split) is *calibrated*: among faces it scores c, about a share c is labeled right
(see :mod:`omnifer.models.calibration`). ``min_confidence: 0.8`` then keeps faces each
right with probability ≥ 0.8, so the kept pseudo-labels are at least about 80 % right, on
data like the calibration split (faces far from it, such as other cameras or crawls, can be
worse). Without calibration a threshold has no such meaning and differs between models:
label smoothing caps the raw built-in model's confidence near 0.9.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from omnifer.config import Settings
from omnifer.errors import ConfigError, DatasetError, config_error

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("face_id", "label", "confidence")
GATES = ("status", "class", "confidence", "similarity", "flip", "margin", "det_score",
         "face_size")


class SelectionPolicy(BaseModel):
    """Thresholds, balancing and caps; recorded as JSON with every curated row."""

    model_config = ConfigDict(extra="forbid")

    min_confidence: float | dict[str, float] = 0.8
    default_confidence: float = Field(0.8, ge=0, le=1)  # for classes absent from a dict
    min_similarity: float | None = Field(None, ge=-1, le=1)
    require_flip_agreement: bool = True
    min_margin: float | None = Field(None, ge=0, le=1)
    min_det_score: float | None = None
    min_face_size: float | None = None
    classes: list[str] | None = None  # only these labels (None: all)
    rank_by: Literal["confidence", "similarity", "margin"] = "confidence"
    top_k_per_class: int | None = Field(None, ge=1)
    duplicate_to_k: bool = False
    max_copies: int = Field(4, ge=1)
    note: str | None = None  # why the policy differs from the configured one (adapt_policy)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): the same policy always gives the same text."""
        data = self.model_dump(mode="json")
        if data.get("note") is None:
            data.pop("note", None)  # policies without a note keep their former text
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def confidence_threshold(self, label: str) -> float:
        if isinstance(self.min_confidence, dict):
            return self.min_confidence.get(label, self.default_confidence)
        return self.min_confidence


def load_policy(path: Path | str | None = None, **overrides: Any) -> SelectionPolicy:
    """A policy from a YAML/JSON file (optional), then keyword overrides that are not None."""
    raw: dict[str, Any] = {}
    if path is not None:
        import yaml

        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read selection policy {path}: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"selection policy {path} must be a mapping")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return SelectionPolicy(**raw)
    except ValidationError as exc:
        raise config_error("selection policy", exc) from None


def policy_from_settings(settings: Settings) -> SelectionPolicy:
    """The policy of ``selection:`` in the settings (omnifer.yaml / ``OMNIFER_SELECTION``)."""
    return load_policy(None, **settings.selection)


def adapt_policy(policy: SelectionPolicy, table: pa.Table) -> SelectionPolicy:
    """``policy`` fitted to what the scores can say: when every row's ``similarity`` is null
    (or the column is absent) the model had no embeddings, so the similarity gate is
    disabled and ``note`` says why; otherwise ``policy`` unchanged."""
    if policy.min_similarity is None or table.num_rows == 0:
        return policy
    if "similarity" in table.column_names and table["similarity"].null_count < table.num_rows:
        return policy
    note = (f"similarity gate (min_similarity {policy.min_similarity}) disabled: the model "
            "gives no embeddings")
    log.warning("selection: %s", note)
    return policy.model_copy(update={"min_similarity": None, "note": note})


def _column(table: pa.Table, name: str, dtype: Any, fill: Any) -> np.ndarray:
    """Column ``name`` as a numpy array of ``dtype``, nulls replaced by ``fill``."""
    col = table[name]
    if dtype is bool:
        col = pc.cast(col, pa.bool_())
    else:
        col = pc.cast(col, pa.float64())
    return np.asarray(pc.fill_null(col, fill).to_numpy(zero_copy_only=False), dtype=dtype)


def _gates(table: pa.Table, policy: SelectionPolicy) -> dict[str, np.ndarray]:
    """A boolean mask per gate (True = passes); absent columns → all True (with a warning)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise DatasetError(f"scores table lacks columns {missing} (has {table.column_names})")
    n = table.num_rows
    labels = np.asarray(table["label"].to_pylist(), dtype=object)
    yes = np.ones(n, bool)
    masks: dict[str, np.ndarray] = {}
    masks["status"] = (np.asarray(table["status"].to_pylist(), object) == "ok"
                       if "status" in table.column_names else yes)
    masks["class"] = (np.isin(labels, policy.classes) if policy.classes is not None
                      else np.array([lab is not None for lab in labels], bool))
    conf = _column(table, "confidence", np.float64, -np.inf)
    thresholds = np.array([policy.confidence_threshold(str(lab)) for lab in labels])
    masks["confidence"] = conf >= thresholds if n else yes

    def gate(name: str, column: str, threshold: float | None, null_passes: bool) -> None:
        if threshold is None:
            masks[name] = yes
        elif column not in table.column_names:
            log.warning("selection: column %r is absent; gate %s skipped", column, name)
            masks[name] = yes
        else:
            fill = np.inf if null_passes else -np.inf
            masks[name] = _column(table, column, np.float64, fill) >= threshold

    gate("similarity", "similarity", policy.min_similarity, null_passes=False)
    gate("margin", "margin", policy.min_margin, null_passes=False)
    gate("det_score", "det_score", policy.min_det_score, null_passes=True)
    gate("face_size", "face_size", policy.min_face_size, null_passes=True)
    if policy.require_flip_agreement and "flip_agreement" in table.column_names:
        # null = not measured (a model without flip TTA): the gate does not apply to it
        masks["flip"] = _column(table, "flip_agreement", bool, True)
    else:
        if policy.require_flip_agreement:
            log.warning("selection: column 'flip_agreement' is absent; gate flip skipped")
        masks["flip"] = yes
    return masks


def _select_indices(table: pa.Table, policy: SelectionPolicy) -> tuple[np.ndarray, np.ndarray,
                                                                         dict[str, np.ndarray]]:
    """(row indices kept in output order, copies per kept row, gate masks)."""
    masks = _gates(table, policy)
    eligible = np.logical_and.reduce(list(masks.values())) if masks else np.ones(0, bool)
    labels = np.asarray(table["label"].to_pylist(), dtype=object)
    face_ids = np.asarray([str(f) for f in table["face_id"].to_pylist()], dtype=object)
    rank_col = policy.rank_by if policy.rank_by in table.column_names else "confidence"
    rank = _column(table, rank_col, np.float64, -np.inf)
    kept: list[np.ndarray] = []
    copies: list[np.ndarray] = []
    for lab in sorted({str(v) for v in labels[eligible]}):
        idx = np.flatnonzero(eligible & (labels == lab))
        # lexsort: last key is primary → rank descending, then face_id ascending
        idx = idx[np.lexsort((face_ids[idx], -rank[idx]))]
        k = policy.top_k_per_class
        if k is not None:
            idx = idx[:k]
        c = np.ones(len(idx), np.int64)
        if policy.duplicate_to_k and k is not None and 0 < len(idx) < k:
            base, extra = divmod(k, len(idx))
            c[:] = base
            c[:extra] += 1
            c = np.minimum(c, policy.max_copies)
        kept.append(idx)
        copies.append(c)
    if not kept:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), masks
    return np.concatenate(kept), np.concatenate(copies), masks


def select_samples(table: pa.Table, policy: SelectionPolicy | None = None) -> pa.Table:
    """The selected rows of ``table`` (all its columns) plus ``copies`` (int16).

    ``table`` needs face_id, label, confidence; similarity, flip_agreement, margin,
    det_score, face_size and status are used when present (see the module docstring).
    Deterministic: the same table and policy always give the same rows in the same order.
    """
    policy = policy or SelectionPolicy()
    idx, copies, _ = _select_indices(table, policy)
    out = table.take(pa.array(idx, pa.int64()))
    if "copies" in out.column_names:
        out = out.drop_columns(["copies"])
    return out.append_column("copies", pa.array(copies.astype(np.int16), pa.int16()))


def selection_report(table: pa.Table, policy: SelectionPolicy | None = None) -> pa.Table:
    """Per class (predicted label): candidates, how many pass each gate on its own,
    ``eligible`` (all gates), ``kept`` rows and ``copies`` (sum); plus a ``total`` row."""
    policy = policy or SelectionPolicy()
    idx, copies, masks = _select_indices(table, policy)
    labels = np.asarray([str(v) for v in table["label"].to_pylist()], dtype=object)
    eligible = np.logical_and.reduce(list(masks.values()))
    kept_labels = labels[idx]
    rows = []
    for lab in [*sorted(set(labels)), "total"]:
        sel = labels == lab if lab != "total" else np.ones(len(labels), bool)
        ksel = kept_labels == lab if lab != "total" else np.ones(len(idx), bool)
        row: dict[str, Any] = {"label": lab, "candidates": int(sel.sum())}
        for g in GATES:
            row[f"pass_{g}"] = int((masks[g] & sel).sum())
        row.update(eligible=int((eligible & sel).sum()), kept=int(ksel.sum()),
                   copies=int(copies[ksel].sum()))
        rows.append(row)
    return pa.Table.from_pylist(rows)
