"""``omnifer train / score / select / evaluate`` on a generic image folder (not faces)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
from typer.testing import CliRunner

import omnifer.cli.model  # noqa: F401  (registers the commands)
from omnifer.cli._app import app


def _folder(root: Path, n: int, seed: int) -> Path:
    """Three classes of 20×20 PNGs: a bright band at the top, middle or bottom."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(("bottom_band", "middle_band", "top_band")[::-1]):
        (root / name).mkdir(parents=True)
        for i in range(n):
            img = rng.integers(0, 90, (20, 20, 3)).astype(np.uint8)
            img[c * 6 : c * 6 + 6] += 140
            cv2.imwrite(str(root / name / f"{i:03d}.png"), img)
    return root


def test_cli_train_score_select_evaluate(tmp_path: Path) -> None:
    runner = CliRunner()
    train = _folder(tmp_path / "data" / "train", 16, 0)
    _folder(tmp_path / "data" / "test", 6, 1)
    model = tmp_path / "model"
    cfg = tmp_path / "train.yaml"
    cfg.write_text("arch: fercnn_tiny\ninput_size: 16\nbatch_size: 16\nlr: 0.01\npatience: 0\n"
                   "threads: 1\n")
    res = runner.invoke(app, ["train", "--data", str(tmp_path / "data"), "--format", "folder",
                              "--out", str(model), "--epochs", "6", "--seed", "1",
                              "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    card = json.loads((model / "card.json").read_text())
    assert card["classes"] == ["bottom_band", "middle_band", "top_band"]
    assert card["config"]["epochs"] == 6 and card["seed"] == 1

    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / "broken.jpg").write_bytes(b"garbage")
    scores = tmp_path / "scores.parquet"
    res = runner.invoke(app, ["score", "--model", str(model), "--images",
                              str(tmp_path / "data" / "test"), "--out", str(scores),
                              "--batch-size", "7"])
    assert res.exit_code == 0, res.output
    table = pq.read_table(scores)
    assert table.num_rows == 18 and set(table["status"].to_pylist()) == {"ok"}
    truth = {f: f.split("/")[0] for f in table["face_id"].to_pylist()}
    acc = np.mean([truth[f] == lab for f, lab in zip(table["face_id"].to_pylist(),
                                                     table["label"].to_pylist(), strict=True)])
    assert acc >= 0.7

    res = runner.invoke(app, ["score", "--model", str(model), "--images",
                              str(tmp_path / "pool"), "--out", str(tmp_path / "bad.parquet")])
    assert res.exit_code == 0, res.output
    assert pq.read_table(tmp_path / "bad.parquet")["status"].to_pylist() == ["not_image"]

    curated = tmp_path / "curated.parquet"
    res = runner.invoke(app, ["select", "--scores", str(scores), "--out", str(curated),
                              "--min-confidence", "0.5", "--top-k", "4"])
    assert res.exit_code == 0, res.output
    sel = pq.read_table(curated)
    assert 0 < sel.num_rows <= 12 and "copies" in sel.column_names
    assert json.loads(sel["policy"][0].as_py())["top_k_per_class"] == 4

    res = runner.invoke(app, ["evaluate", "--model", str(model), "--data",
                              str(tmp_path / "data"), "--format", "folder",
                              "--json", str(tmp_path / "m.json")])
    assert res.exit_code == 0, res.output
    assert "accuracy" in res.output
    assert json.loads((tmp_path / "m.json").read_text())["n"] == 18
    assert train.exists()


def test_cli_errors_are_omnifer_errors(tmp_path: Path) -> None:
    from omnifer.errors import DatasetError, ModelFileError

    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", "--model", str(tmp_path / "none"), "--data",
                              str(tmp_path)])
    assert isinstance(res.exception, ModelFileError)
    res = runner.invoke(app, ["train", "--data", str(tmp_path / "none"), "--out",
                              str(tmp_path / "m"), "--format", "rafdb"])
    assert isinstance(res.exception, DatasetError)
