"""Flips are properties of the data: a mining round on a chiral, non-face image folder.

The glyph world (:mod:`omnifer.testing.glyphs`) has mirror-pair classes (``b``/``d``,
``arrow_left``/``arrow_right``): a flipped image is its partner class. ``omnifer train
--format folder`` therefore trains without flips by default, the card records it, and every
later step follows the card: scoring without flip TTA (``flip_agreement`` null), selection's
flip gate, retraining (the new version inherits the flips). One round of mining (the
unlabeled pool as an aligned source → scores → curated → retrain on labeled + curated) must
beat the labeled-only model on the test split. ``benchmarks/chiral_mining.py`` prints the
same round over several seeds, and what flips on would have cost.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from omnifer.catalog import DataCatalog
from omnifer.testing.glyphs import write_glyph_world

DATE = "2026-12-03"
TRAIN = {"arch": "fercnn_tiny", "input_size": 32, "epochs": 40, "batch_size": 16, "lr": 3e-3,
         "patience": 0, "val_fraction": 0.0, "threads": 1}


def test_mining_a_chiral_folder_beats_labeled_only_with_flips_off(
    data_catalog: DataCatalog, tmp_path: Path
) -> None:
    from omnifer.cli import app
    from omnifer.config import RetrainSettings
    from omnifer.curation.curated import select_curated
    from omnifer.curation.selection import SelectionPolicy
    from omnifer.models import versions
    from omnifer.models.checkpoints import read_card
    from omnifer.testing.faults import run_night
    from omnifer.training.retrain import retrain

    world = write_glyph_world(tmp_path / "glyphs", labeled_per_class=10, test_per_class=30,
                              unlabeled=320, seed=1)
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump(TRAIN))
    res = CliRunner().invoke(app, ["train", "--data", str(world.labeled), "--format", "folder",
                                   "--out", str(tmp_path / "v1"), "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert "horizontal flips: augmentation off, test-time off" in res.output
    card = read_card(tmp_path / "v1")
    assert (card.hflip, card.flip_tta) == (False, False)  # an image folder: no flips by default
    versions.register_version(data_catalog, tmp_path / "v1", "v1")
    versions.record_event(data_catalog, "v1", "promoted", {})

    source = json.dumps({"path": str(world.unlabeled), "faces": "aligned"})
    assert run_night(data_catalog, [source], DATE, shard_size=160).failed == {}
    con = data_catalog.connect()
    flips = con.execute("SELECT count(*), count(flip_agreement) FROM scores").fetchone()
    assert flips == (320, 0)  # scored without flip TTA: nothing to agree on, null
    curated = select_curated(data_catalog, DATE, SelectionPolicy(min_confidence=0.8),
                             "v1", "select")
    assert curated.selected > 0  # the flip gate lets the unmeasured faces through
    prefix = world.unlabeled.as_uri() + "/"
    rows = data_catalog.connect().execute(
        "SELECT f.source_uri, c.label FROM curated c JOIN faces f USING (face_id)").fetchall()
    precision = sum(world.truth[uri.removeprefix(prefix)] == lab for uri, lab in rows) / len(rows)

    settings = RetrainSettings(recipe="curated", train=TRAIN, labeled={
        "path": str(world.labeled), "format": "folder"})
    result = retrain(data_catalog, settings, curated_versions=[curated.curated_version],
                     work_dir=tmp_path / "work", version="v2")
    gain = result.accuracy - result.parent_accuracy
    print(f"\nchiral glyphs, flips off: labeled-only {result.parent_accuracy:.3f} -> labeled + "
          f"{curated.selected} mined (pseudo-label precision {precision:.3f}) "
          f"{result.accuracy:.3f}: {100 * gain:+.1f} points")
    new_card = read_card(tmp_path / "work" / "v2")
    assert (new_card.hflip, new_card.flip_tta) == (False, False)  # inherited from v1
    assert precision > result.parent_accuracy  # selection kept the reliable pseudo-labels
    assert gain >= 0.03
