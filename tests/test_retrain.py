"""Distillation and retraining over the catalog: nightly trigger, lineage, promotion rule.

Tiny settings (a few distillation iterations, two training epochs): these tests check the
plumbing and the rules (what is recorded, what gets promoted), not accuracy; accuracy on the
demo world is what ``benchmarks/retrain_distill.py`` measures.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from omnifer.catalog import DataCatalog
from omnifer.errors import ConfigError
from omnifer.models import versions

DATE = "2026-11-29"
TINY_DISTILL = {"iterations": 4, "ipc": 2, "batch_real": 8, "image_size": 16, "net_width": 16,
                "net_depth": 2, "device": "cpu"}
TINY_TRAIN = {"epochs": 2, "device": "cpu", "val_fraction": 0.0}
LOOSE_SELECTION = {"min_confidence": 0.0, "default_confidence": 0.0, "min_similarity": -1.0,
                   "require_flip_agreement": False}


@pytest.fixture()
def mined_catalog(prefect_harness, small_world: Path, tiny_model: Path,
                  data_catalog: DataCatalog, monkeypatch: pytest.MonkeyPatch) -> DataCatalog:
    """A catalog whose primitive model v1 is promoted; the selection accepts every face."""
    monkeypatch.setenv("OMNIFER_SELECTION", json.dumps(LOOSE_SELECTION))
    versions.register_version(data_catalog, tiny_model, "v1", metrics={"accuracy": 0.1})
    versions.record_event(data_catalog, "v1", "promoted", {"accuracy": 0.1})
    return data_catalog


def test_nightly_flow_triggers_distill_and_retrain_with_lineage(
    mined_catalog: DataCatalog, small_world: Path
) -> None:
    from flows.ingest import nightly_ingest

    retrain = {"enabled": True, "min_new_curated": 1, "recipe": "distilled",
               "labeled": {"path": str(small_world / "labeled"), "format": "rafdb"},
               "train": TINY_TRAIN, "distill": TINY_DISTILL}
    summary = nightly_ingest(date=DATE, sources=[str(small_world / "unlabeled")],
                             shard_size=20, workers=1, retrain=retrain)
    trigger = summary["retraining"]
    assert summary["selected"] > 0
    assert trigger["triggered"] and trigger["new_curated"] == summary["selected"]

    con = mined_catalog.connect()
    distilled = con.execute(
        "SELECT distilled_version, curated_version, class, count(*) FROM distilled GROUP BY ALL"
    ).fetchall()
    assert {r[1] for r in distilled} == {summary["curated_version"]}
    assert all(r[3] == TINY_DISTILL["ipc"] for r in distilled)
    classes = {r[2] for r in distilled}
    curated_classes = {r[0] for r in con.execute("SELECT DISTINCT label FROM curated").fetchall()}
    assert classes == curated_classes

    # v2 is registered with its lineage, and the verdict records both test figures.
    events = {r[0]: r for r in con.execute(
        "SELECT event, parent_version, train_datasets, metrics FROM models "
        "WHERE model_version = 'v2'").fetchall()}
    assert set(events) in ({"registered", "promoted"}, {"registered", "rejected"})
    lineage = json.loads(events["registered"][2])
    assert events["registered"][1] == "v1"
    assert lineage["recipe"] == "distilled"
    assert lineage["distilled"] == distilled[0][0]
    assert lineage["curated"] == [summary["curated_version"]]
    assert lineage["teacher"] == {"model_version": "v1", "weight": 0.5}  # soft targets from v1
    verdict_event = "promoted" if "promoted" in events else "rejected"
    verdict = json.loads(events[verdict_event][3])
    assert verdict["parent_version"] == "v1"
    assert (verdict["accuracy"] > verdict["parent_accuracy"]) == (verdict_event == "promoted")
    assert versions.primitive_model(mined_catalog)[0] == (
        "v2" if verdict_event == "promoted" else "v1")

    # Lineage: from the model version back to the source images it learned from.
    sources = con.execute("""
        SELECT DISTINCT i.source_uri
        FROM models m, distilled d, curated c, faces f, images i
        WHERE m.model_version = 'v2' AND m.event = 'registered'
          AND d.distilled_version = json_extract_string(m.train_datasets, '$.distilled')
          AND list_contains(string_split(d.curated_version, ','), c.curated_version)
          AND f.face_id = c.face_id AND i.sha256 = f.image_sha256""").fetchall()
    root = (small_world / "unlabeled").as_uri()
    assert sources and all(s[0].startswith(root) for s in sources)

    # A rerun of the night adds nothing and finds nothing new to distil.
    again = nightly_ingest(date=DATE, sources=[str(small_world / "unlabeled")],
                           shard_size=20, workers=1, retrain=retrain)
    assert again["retraining"]["triggered"] is False
    assert again["retraining"]["new_curated"] == 0
    assert con.execute("SELECT count(DISTINCT model_version) FROM models").fetchone()[0] == 2


def test_teacher_targets_mix_the_parent_softmax_with_the_image_class(tiny_model: Path) -> None:
    """Distilled images train on ``w`` × the parent's softmax + ``1 − w`` on their own class."""
    import numpy as np

    from omnifer.curation.scoring import Scorer
    from omnifer.labeled import LabeledData
    from omnifer.models.checkpoints import load_checkpoint
    from omnifer.training.retrain import with_teacher_targets

    teacher = load_checkpoint(tiny_model)
    classes = tuple(reversed(teacher.classes))  # another class order: targets follow the teacher
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(6) % len(classes)
    data = LabeledData(images, labels, classes, [f"img{i}" for i in range(6)], source="dm")
    probs = Scorer(teacher).score(images).probs
    onehot = np.eye(len(classes), dtype=np.float32)[
        [teacher.classes.index(classes[c]) for c in labels]]

    mixed = with_teacher_targets(data, teacher, 0.5)
    assert mixed.classes == teacher.classes and mixed.source == "dm+teacher0.5"
    np.testing.assert_allclose(mixed.targets, 0.5 * probs + 0.5 * onehot, atol=1e-6)
    np.testing.assert_allclose(mixed.targets.sum(axis=1), 1.0, atol=1e-5)
    assert (mixed.hard_labels() == onehot.argmax(axis=1)).all()  # the class still dominates
    np.testing.assert_allclose(with_teacher_targets(data, teacher, 1.0).targets, probs, atol=1e-6)
    with pytest.raises(ConfigError):
        with_teacher_targets(data, teacher, 1.5)


def _as_image_folder(rafdb_root: Path, dest: Path) -> Path:
    """The labeled set re-laid as a generic image folder ROOT/<split>/<class>/*.jpg."""
    from omnifer.labels import CLASSES, RAFDB_TO_CANONICAL

    lines = (rafdb_root / "EmoLabel" / "list_patition_label.txt").read_text().split()
    for name, label in zip(lines[::2], lines[1::2], strict=True):
        split = name.split("_")[0]
        cls = RAFDB_TO_CANONICAL[int(label)]
        assert cls in CLASSES
        src = rafdb_root / "Image" / "aligned" / name.replace(".jpg", "_aligned.jpg")
        (dest / split / cls).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest / split / cls / src.name)
    return dest


def test_cli_distill_and_retrain_on_an_image_folder_and_the_promotion_rule(
    mined_catalog: DataCatalog, small_world: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows.ingest import nightly_ingest
    from omnifer.cli import app

    nightly_ingest(date=DATE, sources=[str(small_world / "unlabeled")], shard_size=20, workers=1)
    folder = _as_image_folder(small_world / "labeled", tmp_path / "folder")
    monkeypatch.setenv("OMNIFER_RETRAIN__DISTILL", json.dumps(TINY_DISTILL))
    monkeypatch.setenv("OMNIFER_RETRAIN__TRAIN", json.dumps(TINY_TRAIN))
    runner = CliRunner()

    # Without a labeled set: a ConfigError (main() prints it as one line, exit code 2).
    missing = runner.invoke(app, ["retrain", "--recipe", "curated"])
    assert isinstance(missing.exception, ConfigError)
    assert "retrain.labeled.path" in str(missing.exception)

    out = runner.invoke(app, ["distill", "curated", "--method", "dm"])
    assert out.exit_code == 0, out.output
    again = runner.invoke(app, ["distill", "curated", "--method", "dm"])
    assert "already committed" in again.output
    con = mined_catalog.connect()
    assert con.execute("SELECT count(DISTINCT distilled_version) FROM distilled").fetchone()[0] == 1

    # An impossible bar: the new version is registered but rejected; v1 stays primitive.
    res = runner.invoke(app, ["retrain", "--recipe", "all", "--labeled", str(folder),
                              "--format", "folder", "--min-gain", "1.0"])
    assert res.exit_code == 0, res.output
    assert "rejected" in res.output
    assert versions.primitive_model(mined_catalog)[0] == "v1"
    con = mined_catalog.connect()  # a connection sees the files that existed when it opened
    rows = con.execute("SELECT event, metrics, train_datasets FROM models "
                       "WHERE model_version = 'v2' ORDER BY event").fetchall()
    assert [r[0] for r in rows] == ["registered", "rejected"]
    verdict = json.loads(rows[1][1])
    assert {"accuracy", "parent_accuracy", "gain"} <= set(verdict)
    lineage = json.loads(rows[0][2])
    assert lineage["recipe"] == "all" and lineage["distilled"] and lineage["curated"]
    assert lineage["teacher"]["model_version"] == "v1"
    assert lineage["labeled"]["source"].startswith("folder:")
    assert json.loads(rows[0][1])["train_images"] > lineage["labeled"]["n"]


def test_nightly_trigger_hands_work_to_the_gpu_deployment(
    mined_catalog: DataCatalog, small_world: Path
) -> None:
    """With deployments configured the nightly flow only schedules a run on the pool."""
    from prefect import get_client
    from prefect.utilities.asyncutils import run_coro_as_sync

    from flows.distill import distill_flow
    from flows.ingest import nightly_ingest

    deployment_id = distill_flow.to_deployment(name="distill").apply()
    retrain = {"enabled": True, "min_new_curated": 1, "deployment_distill": "distill/distill",
               "deployment_retrain": "retrain/retrain",
               "labeled": {"path": str(small_world / "labeled"), "format": "rafdb"}}
    summary = nightly_ingest(date=DATE, sources=[str(small_world / "unlabeled")],
                             shard_size=20, workers=1, retrain=retrain)
    trigger = summary["retraining"]
    assert trigger["triggered"] and "distill_flow_run" in trigger

    async def read(flow_run_id: str):
        async with get_client() as client:
            return await client.read_flow_run(flow_run_id)

    run = run_coro_as_sync(read(trigger["distill_flow_run"]))
    assert run.deployment_id == deployment_id
    assert run.parameters["then_retrain"] is True
    assert run.parameters["retrain"]["deployment_retrain"] == "retrain/retrain"
    assert run.state.is_scheduled()
    # Nothing ran here: no distilled rows, no new model version.
    assert mined_catalog.read("distilled").num_rows == 0
    assert versions.primitive_model(mined_catalog)[0] == "v1"
