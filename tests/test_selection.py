"""Selection policy on a planted scores table: which rows must be kept, dropped, copied."""

from __future__ import annotations

import pyarrow as pa
import pytest

from omnifer.curation.selection import (
    SelectionPolicy,
    load_policy,
    select_samples,
    selection_report,
)
from omnifer.errors import ConfigError, DatasetError
from omnifer.training.evaluate import pseudo_label_precision

ROWS = [
    # face_id, label, confidence, similarity, flip, det_score, face_size
    ("h1", "happy", 0.99, 0.9, True, 0.9, 80.0),
    ("h2", "happy", 0.95, 0.8, True, 0.9, 80.0),
    ("h3", "happy", 0.95, 0.8, True, 0.9, 80.0),  # ties h2: face_id decides
    ("h4", "happy", 0.70, 0.9, True, 0.9, 80.0),  # low confidence
    ("h5", "happy", 0.98, 0.1, True, 0.9, 80.0),  # far from the happy prototype
    ("h6", "happy", 0.97, 0.9, False, 0.9, 80.0),  # flip disagrees
    ("h7", "happy", 0.96, 0.9, True, 0.3, 80.0),  # weak detection
    ("h8", "happy", 0.96, 0.9, True, 0.9, 12.0),  # tiny face
    ("h9", "happy", 0.96, 0.9, True, None, None),  # no detector info: quality gates pass
    ("s1", "sad", 0.90, 0.7, True, 0.9, 80.0),
    ("s2", "sad", 0.85, 0.6, True, 0.9, 80.0),  # passes 0.8, fails a sad-specific 0.88
]


def _table() -> pa.Table:
    cols = list(zip(*ROWS, strict=True))
    names = ["face_id", "label", "confidence", "similarity", "flip_agreement", "det_score",
             "face_size"]
    return pa.table({n: pa.array(c) for n, c in zip(names, cols, strict=True)})


POLICY = SelectionPolicy(min_confidence=0.8, min_similarity=0.5, require_flip_agreement=True,
                         min_det_score=0.5, min_face_size=32)


def test_gates_keep_and_drop_planted_rows() -> None:
    out = select_samples(_table(), POLICY)
    assert out["face_id"].to_pylist() == ["h1", "h9", "h2", "h3", "s1", "s2"]
    assert out["copies"].to_pylist() == [1] * 6
    assert out.column_names[-1] == "copies"


def test_per_class_threshold_top_k_and_duplication() -> None:
    per_class = POLICY.model_copy(update={"min_confidence": {"sad": 0.88},
                                          "default_confidence": 0.9})
    assert select_samples(_table(), per_class)["face_id"].to_pylist() == [
        "h1", "h9", "h2", "h3", "s1"]
    top = POLICY.model_copy(update={"top_k_per_class": 3, "duplicate_to_k": True,
                                    "max_copies": 4})
    out = select_samples(_table(), top)
    assert out["face_id"].to_pylist() == ["h1", "h9", "h2", "s1", "s2"]
    # sad has 2 of K=3: the better-ranked one is copied twice
    assert out["copies"].to_pylist() == [1, 1, 1, 2, 1]
    capped = top.model_copy(update={"top_k_per_class": 9, "max_copies": 3})
    copies = dict(zip(*(select_samples(_table(), capped)[c].to_pylist()
                        for c in ("face_id", "copies")), strict=True))
    assert copies == {"h1": 3, "h9": 2, "h2": 2, "h3": 2, "s1": 3, "s2": 3}


def test_selection_is_deterministic_under_row_order() -> None:
    table = _table()
    shuffled = table.take(pa.array([5, 2, 10, 0, 7, 1, 9, 3, 8, 4, 6]))
    assert select_samples(table, POLICY).equals(select_samples(shuffled, POLICY))
    assert select_samples(shuffled, POLICY)["face_id"].to_pylist() == [
        "h1", "h9", "h2", "h3", "s1", "s2"]


def test_report_counts_each_gate() -> None:
    report = {r["label"]: r for r in selection_report(_table(), POLICY).to_pylist()}
    happy = report["happy"]
    assert happy["candidates"] == 9
    assert happy["pass_confidence"] == 8 and happy["pass_similarity"] == 8
    assert happy["pass_flip"] == 8 and happy["pass_det_score"] == 8
    assert happy["pass_face_size"] == 8
    assert happy["eligible"] == happy["kept"] == 4
    assert report["total"]["kept"] == 6 and report["total"]["candidates"] == 11


def test_policy_json_is_stable_and_loadable(tmp_path) -> None:
    a = SelectionPolicy(min_confidence={"sad": 0.7, "happy": 0.9})
    b = SelectionPolicy(min_confidence={"happy": 0.9, "sad": 0.7})
    assert a.to_json() == b.to_json() and " " not in a.to_json()
    assert SelectionPolicy.model_validate_json(a.to_json()) == a
    path = tmp_path / "policy.yaml"
    path.write_text("min_confidence: 0.9\ntop_k_per_class: 5\n")
    pol = load_policy(path, min_similarity=0.3)
    assert (pol.min_confidence, pol.top_k_per_class, pol.min_similarity) == (0.9, 5, 0.3)
    path.write_text("min_confidnce: 0.9\n")
    with pytest.raises(ConfigError):
        load_policy(path)


def test_missing_columns_and_status() -> None:
    with pytest.raises(DatasetError, match="confidence"):
        select_samples(pa.table({"face_id": ["x"], "label": ["happy"]}), POLICY)
    table = _table().append_column("status", pa.array(["ok"] * 10 + ["score_failed"]))
    minimal = table.select(["face_id", "label", "confidence", "status"])
    out = select_samples(minimal, SelectionPolicy(min_confidence=0.9))
    assert out["face_id"].to_pylist() == ["h1", "h5", "h6", "h7", "h8", "h9", "h2", "h3", "s1"]


def test_pseudo_label_precision() -> None:
    out = select_samples(_table(), POLICY.model_copy(update={"top_k_per_class": 3,
                                                             "duplicate_to_k": True}))
    truth = {"h1": "happy", "h9": "sad", "h2": "happy", "s1": "sad"}  # s2: unmatched
    p = pseudo_label_precision(out, truth)
    assert (p["n"], p["matched"], p["correct"]) == (5, 4, 3)
    assert p["precision"] == 0.75
    assert p["precision_weighted"] == 4 / 5  # s1 counts twice
    assert p["per_class"]["happy"] == {"n": 3, "correct": 2, "precision": 2 / 3}
