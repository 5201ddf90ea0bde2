"""Horizontal flips as recorded properties: the scorer, distillation and the CLI follow the card.

The whole mining round on a chiral folder is ``tests/test_chiral_mining.py``; here the pieces
it does not reach: a card with ``flip_tta`` off scores one view (and says so with nulls), the
distill stage takes ``hflip`` from the primitive model's card and drops ``flip`` from its
augmentation, and ``train --format folder`` honours an explicit choice in either direction.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow.compute as pc
import torch
import yaml
from typer.testing import CliRunner

from omnifer.catalog import DataCatalog
from omnifer.curation.scoring import Scorer
from omnifer.labels import CLASSES
from omnifer.models.architectures import create_model
from omnifer.models.checkpoints import ModelCard, load_checkpoint, save_checkpoint


def _chiral_checkpoint(out: Path) -> Path:
    """A random fercnn_tiny whose card says: no flips (augmentation nor test-time)."""
    torch.manual_seed(0)
    model = create_model("fercnn_tiny", len(CLASSES))
    dim = int(model.embedding_dim)
    card = ModelCard(arch="fercnn_tiny", classes=list(CLASSES), input_size=32,
                     mean=[0.5] * 3, std=[0.25] * 3, embedding_dim=dim, hflip=False,
                     flip_tta=False)
    save_checkpoint(out, model, card, torch.nn.functional.normalize(
        torch.randn(len(CLASSES), dim), dim=1))
    return out


def test_scorer_without_flip_tta_sees_one_view(tmp_path: Path) -> None:
    loaded = load_checkpoint(_chiral_checkpoint(tmp_path / "m"))
    crops = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    batch = Scorer(loaded).score(crops)
    with torch.no_grad():
        p = loaded.model(loaded.preprocess(crops)).softmax(1).numpy()
    np.testing.assert_allclose(batch.probs, p, atol=1e-5)  # no mirrored view averaged in
    assert batch.flip_tta is False
    assert batch.to_arrow()["flip_agreement"].null_count == 6  # not measured, not "agreed"
    flipped = Scorer(loaded, flip_tta=True).score(crops)  # an explicit override still works
    assert not np.allclose(flipped.probs, p, atol=1e-5)


def test_distillation_follows_the_cards_hflip(data_catalog: DataCatalog, tmp_path: Path) -> None:
    from omnifer.curation.curated import select_curated
    from omnifer.curation.selection import SelectionPolicy
    from omnifer.distill.augmentation import DSA
    from omnifer.distill.config import DistillConfig, make_config
    from omnifer.distill.stage import distill_curated
    from omnifer.models import versions
    from omnifer.testing.faults import run_night
    from omnifer.testing.glyphs import glyph_image

    versions.register_version(data_catalog, _chiral_checkpoint(tmp_path / "v1"), "v1")
    versions.record_event(data_catalog, "v1", "promoted", {})
    pool = tmp_path / "pool"
    pool.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        cv2.imwrite(str(pool / f"{i:02d}.png"), glyph_image(("b", "d")[i % 2], rng))
    night = run_night(data_catalog, [json.dumps({"path": str(pool), "faces": "aligned"})],
                      "2026-12-04", shard_size=12)
    assert night.failed == {}
    select_curated(data_catalog, "2026-12-04",
                   SelectionPolicy(min_confidence=0.0, default_confidence=0.0), "v1", "sel")
    config = make_config(iterations=1, ipc=1, batch_real=4, image_size=16, net_width=8,
                         net_depth=2, device="cpu")
    assert config.hflip is None  # unset: the stage asks the model card
    result = distill_curated(data_catalog, config, work_dir=tmp_path)
    table = data_catalog.read("distilled")
    rows = table.filter(pc.equal(table["distilled_version"], result.distilled_version))
    stored = DistillConfig.model_validate_json(rows["params"][0].as_py())
    assert stored.hflip is False and "flip" not in stored.augmentation
    assert "flip" not in DSA(stored.augmentation).ops
    assert "flip" in DSA(DistillConfig().augmentation).ops  # faces keep the literature's DSA


def test_train_folder_flips_are_an_explicit_choice(tmp_path: Path) -> None:
    from omnifer.cli import app
    from omnifer.testing.glyphs import write_glyph_world

    world = write_glyph_world(tmp_path / "w", labeled_per_class=3, test_per_class=0,
                              unlabeled=0, seed=0)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"arch": "fercnn_tiny", "input_size": 16, "epochs": 1,
                                   "val_fraction": 0.0, "threads": 1}))
    base = ["train", "--data", str(world.labeled), "--format", "folder", "--config", str(cfg)]
    runner = CliRunner()
    cards = {}
    for name, extra in {"default": [], "hflip": ["--hflip"],
                        "hflip-no-tta": ["--hflip", "--no-flip-tta"]}.items():
        res = runner.invoke(app, [*base, "--out", str(tmp_path / name), *extra])
        assert res.exit_code == 0, res.output
        card = json.loads((tmp_path / name / "card.json").read_text())
        cards[name] = (card["hflip"], card["flip_tta"], card["config"]["hflip"])
    assert cards == {"default": (False, False, False), "hflip": (True, True, True),
                     "hflip-no-tta": (True, False, True)}
    cfg.write_text(cfg.read_text() + "hflip: true\n")  # the config file is a choice too
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "from-config")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "from-config" / "card.json").read_text())["hflip"] is True
