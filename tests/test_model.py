"""Model registry, checkpoints (round trip, corruption) and the scorer (flip TTA)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from omnifer.curation.scoring import ScoreBatch, Scorer
from omnifer.errors import ModelFileError
from omnifer.models.architectures import count_parameters, create_model, list_architectures
from omnifer.models.checkpoints import ModelCard, load_checkpoint, save_checkpoint

CLASSES = ["a", "b", "c"]


@pytest.mark.parametrize("name", list_architectures())
def test_every_registered_model_runs_on_tiny_tensors(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=3).eval()
    x = torch.rand(2, 3, 16, 16)
    assert model(x).shape == (2, 3)
    assert model.embed(x).shape == (2, model.embedding_dim)


def test_default_model_size() -> None:
    assert 300_000 <= count_parameters(create_model("fercnn_small", 7)) <= 1_000_000
    with pytest.raises(ModelFileError, match="unknown model"):
        create_model("nope", 7)


def _checkpoint(tmp_path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = create_model("fercnn_tiny", len(CLASSES)).eval()
    # non-trivial BN statistics, so a round trip that dropped buffers would show
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 3, 16, 16))
    model.eval()
    card = ModelCard(arch="fercnn_tiny", classes=CLASSES, input_size=16, mean=[0.5] * 3,
                     std=[0.25] * 3, embedding_dim=model.embedding_dim, seed=seed)
    protos = torch.nn.functional.normalize(torch.rand(len(CLASSES), model.embedding_dim), dim=1)
    save_checkpoint(tmp_path / "ckpt", model, card, protos, torch.rand(model.embedding_dim))
    return tmp_path / "ckpt"


def test_checkpoint_round_trip_gives_identical_logits(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("fercnn_tiny", len(CLASSES))
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 3, 16, 16))
    model.eval()
    card = ModelCard(arch="fercnn_tiny", classes=CLASSES, input_size=16, mean=[0.5] * 3,
                     std=[0.25] * 3, embedding_dim=model.embedding_dim)
    protos = torch.eye(3, model.embedding_dim)
    saved = save_checkpoint(tmp_path / "m", model, card, protos)
    assert set(saved.files) == {"model.safetensors", "prototypes.safetensors"}
    loaded = load_checkpoint(tmp_path / "m")
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), loaded.model(x))
    assert torch.equal(loaded.prototypes, protos)
    assert loaded.classes == tuple(CLASSES) and loaded.card.code_version


def test_missing_or_corrupt_checkpoint_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="card.json missing"):
        load_checkpoint(tmp_path / "nothing")
    ckpt = _checkpoint(tmp_path)
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(ModelFileError, match="sha256"):
        load_checkpoint(ckpt)
    (ckpt / "card.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="corrupt model card"):
        load_checkpoint(ckpt)


def test_scorer_outputs_and_flip_tta(tmp_path: Path) -> None:
    scorer = Scorer(load_checkpoint(_checkpoint(tmp_path)), batch_size=3, device="cpu")
    rng = np.random.default_rng(0)
    half = rng.integers(0, 255, (5, 32, 16, 3), dtype=np.uint8)
    symmetric = np.concatenate([half, half[:, :, ::-1]], axis=2)  # mirror-symmetric, 32×32
    batch = scorer.score(symmetric)
    assert len(batch) == 5 and batch.probs.shape == (5, 3)
    assert batch.flip_agreement.all()  # a symmetric image and its flip are the same image
    np.testing.assert_allclose(batch.probs.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batch.embedding, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(batch.confidence, batch.probs.max(1), atol=1e-6)
    top2 = np.sort(batch.probs, 1)[:, -2]
    np.testing.assert_allclose(batch.margin, batch.confidence - top2, atol=1e-6)
    assert (batch.entropy >= 0).all() and (np.abs(batch.similarity) <= 1 + 1e-5).all()

    crops = rng.integers(0, 255, (7, 16, 16, 3), dtype=np.uint8)
    whole = Scorer(scorer.loaded, batch_size=256).score(crops)
    streamed = ScoreBatch.concat(list(scorer.score_iter(iter(crops))))
    np.testing.assert_allclose(whole.probs, streamed.probs, atol=1e-5)
    # an asymmetric image's flip changes the input: the TTA probs are the mean of both views
    with torch.no_grad():
        x = scorer.loaded.preprocess(crops)
        p = scorer.model(x).softmax(1)
        pf = scorer.model(torch.flip(x, dims=[3])).softmax(1)
    np.testing.assert_allclose(whole.probs, ((p + pf) / 2).numpy(), atol=1e-5)
    assert whole.flip_agreement.tolist() == (p.argmax(1) == pf.argmax(1)).tolist()

    table = whole.to_arrow([f"f{i}" for i in range(7)])
    assert table.column_names == ["face_id", "label", "label_index", "probs", "confidence",
                                  "margin", "entropy", "flip_agreement", "similarity",
                                  "embedding"]
    assert str(table.schema.field("probs").type) == "list<item: float>"
    assert str(table.schema.field("label_index").type) == "int16"
    assert table["label"].to_pylist() == [CLASSES[i] for i in whole.label]
    assert len(table["embedding"][0]) == whole.embedding.shape[1]


@pytest.mark.parametrize("name", list_architectures())
def test_inference_copy_folds_batch_norm_and_computes_the_same(name: str) -> None:
    from torch import nn

    from omnifer.models.inference import fold_batch_norm

    torch.manual_seed(0)
    model = create_model(name, num_classes=3)
    for m in model.modules():  # trained-looking statistics, not the identity of a fresh BN
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    model.eval()
    folded = fold_batch_norm(model)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():  # float rounding only (deep nets with random statistics: large
        ref = model(x)       # outputs, so compared relative to their scale)
        scale = ref.abs().max()
        torch.testing.assert_close(folded(x) / scale, ref / scale, rtol=0, atol=1e-5)

    def bn_after_conv(m: nn.Module) -> int:
        return sum(isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d)
                   for s in m.modules() if isinstance(s, nn.Sequential)
                   for a, b in zip(list(s), list(s)[1:], strict=False))

    assert bn_after_conv(folded) == 0
    if name.startswith("fercnn"):  # all its batch norms follow a conv in one Sequential
        assert bn_after_conv(model) > 0
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # original untouched
