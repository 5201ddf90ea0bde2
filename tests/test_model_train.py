"""Training: a planted separable task is learnt; same seed → same weights; resume; soft labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from omnifer.labeled import LabeledData
from omnifer.models.checkpoints import load_checkpoint
from omnifer.training.config import TrainConfig
from omnifer.training.evaluate import evaluate_model
from omnifer.training.train import stratified_split, train_model

CLASSES = ("top", "middle", "bottom")


def separable(n_per_class: int, seed: int, size: int = 16) -> LabeledData:
    """Noise plus a bright horizontal band whose row says the class (flip-invariant)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    band = size // 3
    for c in range(len(CLASSES)):
        for _ in range(n_per_class):
            img = rng.integers(0, 90, (size, size, 3)).astype(np.uint8)
            img[c * band : (c + 1) * band] += 140
            images.append(img)
            labels.append(c)
    return LabeledData(np.stack(images), np.array(labels), CLASSES,
                       [f"{i}.png" for i in range(len(labels))], source=f"separable:{seed}")


def tiny(**kw) -> TrainConfig:
    base = {"arch": "fercnn_tiny", "input_size": 16, "epochs": 4, "batch_size": 16,
            "lr": 0.01, "seed": 0, "patience": 0, "threads": 1}
    return TrainConfig(**{**base, **kw})


def test_learns_planted_task_and_writes_a_complete_checkpoint(tmp_path: Path) -> None:
    card = train_model(separable(24, 0), tiny(epochs=8), tmp_path / "m")
    assert card.classes == list(CLASSES) and card.seed == 0
    assert card.train_datasets[0].name == "separable:0" and len(card.train_datasets[0].digest)
    assert card.metrics["n_val"] > 0 and card.metrics["epochs_run"] == 8
    loaded = load_checkpoint(tmp_path / "m")
    metrics = evaluate_model(loaded, separable(10, 1))
    print("planted-task accuracy", metrics["accuracy"])
    assert metrics["accuracy"] >= 0.8, metrics  # chance is 1/3
    assert np.array(metrics["confusion"]).sum() == 30
    # prototypes: every class has one, and a class's images sit closest to their own
    from omnifer.curation.scoring import Scorer

    scores = Scorer(loaded).score(separable(10, 2).images)
    assert scores.similarity.mean() > 0.3


def test_same_seed_same_weights_and_resume_matches(tmp_path: Path, monkeypatch) -> None:
    data = separable(8, 0)
    train_model(data, tiny(), tmp_path / "a")
    train_model(data, tiny(), tmp_path / "b")
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    train_model(data, tiny(seed=1), tmp_path / "c")
    other = load_file(str(tmp_path / "c" / "model.safetensors"))
    assert not all(torch.equal(a[k], other[k]) for k in a)

    # crash during epoch 2, then rerun: resumes and ends with the same weights as 'a'
    import omnifer.training.train as train_mod

    real = train_mod._run_epoch

    def crashing(*args, **kw):
        if args[6] == 2:  # epoch
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(train_mod, "_run_epoch", crashing)
    with pytest.raises(KeyboardInterrupt):
        train_model(data, tiny(), tmp_path / "r")
    assert not (tmp_path / "r" / "card.json").exists()
    calls = []
    monkeypatch.setattr(train_mod, "_run_epoch",
                        lambda *a, **k: calls.append(a[6]) or real(*a, **k))
    train_model(data, tiny(), tmp_path / "r")
    assert calls == [2, 3]
    r = load_file(str(tmp_path / "r" / "model.safetensors"))
    assert all(torch.equal(a[k], r[k]) for k in a)
    # a finished checkpoint with the same config and data is kept, not retrained
    calls.clear()
    train_model(data, tiny(), tmp_path / "r")
    assert calls == []


def test_soft_labels_extra_sets_and_balanced_sampling(tmp_path: Path) -> None:
    data = separable(6, 0)
    soft = data.soft_targets() * 0.8 + 0.2 / len(CLASSES)
    soft_data = LabeledData(data.images, soft.astype(np.float32), CLASSES, data.names)
    extra = separable(3, 5)
    extra = LabeledData(extra.images, extra.targets, tuple(reversed(CLASSES)),
                        extra.names)  # other class order: remapped by name
    card = train_model(soft_data, tiny(epochs=2, balanced_sampling=True, val_fraction=0),
                       tmp_path / "s", extra=[extra])
    assert card.metrics["n_train"] == 18 + 9 and card.metrics["n_val"] == 0
    assert [d.role for d in card.train_datasets] == ["labeled", "extra"]


def test_stratified_split_is_seeded_and_per_class() -> None:
    labels = np.array([0] * 10 + [1] * 4 + [2] * 1)
    tr, va = stratified_split(labels, 0.2, seed=3)
    assert sorted(np.bincount(labels[va], minlength=3).tolist()) == [0, 1, 2]
    assert len(set(tr) & set(va)) == 0 and len(tr) + len(va) == 15
    assert np.array_equal(va, stratified_split(labels, 0.2, seed=3)[1])
