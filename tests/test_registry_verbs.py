"""The model registry's verbs, as an operator uses them: register (with the card's figures),
promote, rollback, list. Real checkpoint (trained by the session fixture), real catalog."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from omnifer.catalog import DataCatalog
from omnifer.models import versions
from omnifer.report.facts import find_confusion, model_rows


def _cli(*args: str, code: int = 0) -> str:
    from omnifer.cli import app
    from omnifer.errors import OmniferError

    res = CliRunner().invoke(app, list(args))
    if code == 0:
        assert res.exit_code == 0, (args, res.output, res.exception)
        return res.output
    # main() prints an OmniferError as one line and exits with its code
    assert isinstance(res.exception, OmniferError), (args, res.output, res.exception)
    assert res.exception.exit_code == code and "\n" not in str(res.exception)
    return str(res.exception)


def _registered_metrics(catalog: DataCatalog, version: str) -> dict:
    return json.loads(versions.history(catalog, version)["metrics"])


def test_register_carries_the_card_figures_and_the_report_finds_them(
    data_catalog: DataCatalog, ops_model: Path, ops_world: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    card = json.loads((ops_model / "card.json").read_text())
    n_val = card["metrics"]["n_val"]
    assert n_val > 0 and len(card["metrics"]["val_confusion"]) == len(card["classes"])

    _cli("models", "register", str(ops_model), "--version", "v1", "--promote")
    m1 = _registered_metrics(data_catalog, "v1")
    assert m1["accuracy"] == card["metrics"]["val_accuracy"] and m1["split"] == "val"
    cm = m1["confusion"]
    assert sum(map(sum, cm)) == n_val  # one count per held-out image
    assert m1["accuracy"] == pytest.approx(sum(cm[i][i] for i in range(len(cm))) / n_val)
    assert m1["classes"] == card["classes"] and "history" not in m1
    assert json.loads(versions.history(data_catalog, "v1")["train_datasets"])["labeled"]

    # With the labeled set's test split: the figures retrain compares against.
    _cli("models", "register", str(ops_model), "--version", "v2", "--test-data",
         str(ops_world / "labeled"), "--format", "rafdb")
    m2 = _registered_metrics(data_catalog, "v2")
    n_test = sum(1 for p in (ops_world / "labeled").rglob("test_*") if p.is_file())
    assert m2["split"] == "test" and m2["n"] == n_test > 0
    assert sum(map(sum, m2["confusion"])) == n_test

    # The run report reads the same rows: both versions have a confusion matrix to draw.
    models = {m["version"]: m for m in model_rows(data_catalog.connect())}
    for version in ("v1", "v2"):
        found = find_confusion(models[version]["metrics"])
        assert found is not None and found[1] == card["classes"]
    assert models["v1"]["current"] and models["v1"]["metrics"]["accuracy"] == m1["accuracy"]


def test_promote_rollback_and_list(data_catalog: DataCatalog, ops_model: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    # An empty catalog: the error names commands that exist (tests/test_messages.py).
    err = _cli("models", "rollback", code=3)
    assert "'omnifer models promote VERSION'" in err
    for version in ("v1", "v2", "v3"):
        versions.register_version(data_catalog, ops_model, version, metrics={})
    assert "no primitive model yet" in _cli("models", "list")

    assert "promoted v1" in _cli("models", "promote", "v1")
    assert "v1 is the primitive model already" in _cli("models", "promote", "v1")
    _cli("models", "promote", "v2")
    _cli("models", "promote", "v3")
    assert versions.primitive_model(data_catalog)[0] == "v3"

    # Each rollback steps back once: v3 -> v2 -> v1, then there is nothing earlier.
    assert "rolled back from v3 to v2" in _cli("models", "rollback")
    assert "rolled back from v2 to v1" in _cli("models", "rollback")
    assert versions.primitive_model(data_catalog)[0] == "v1"
    assert "no earlier promoted version" in _cli("models", "rollback", code=3)

    out = _cli("models", "list")
    rows = {}  # version -> the table row's cells, box characters dropped
    for line in out.splitlines():
        cells = line.replace("│", " ").replace("┃", " ").split()
        version = next((c for c in cells[:2] if c in ("v1", "v2", "v3")), None)
        if version:
            rows[version] = " ".join(cells)
    assert rows["v1"].startswith("* v1 primitive")
    assert "rolled back" in rows["v2"] and "rolled back" in rows["v3"]
    assert out.strip().splitlines()[-1] == "primitive model: v1"

    # A named version: any earlier promoted one; never one that was not promoted.
    assert "rolled back from v1 to v3" in _cli("models", "rollback", "v3")
    assert versions.primitive_model(data_catalog)[0] == "v3"
    versions.register_version(data_catalog, ops_model, "v4", metrics={})
    err = _cli("models", "rollback", "v4", code=3)
    assert "v4 was never promoted" in err and "'omnifer models promote v4'" in err
    err = _cli("models", "promote", "v9", code=3)
    assert "not registered" in err
    assert "'omnifer models register CHECKPOINT --version v9'" in err
    # Promoting again after a rollback is allowed, and every event is its own row.
    _cli("models", "promote", "v2")
    events = [r["event"] for r in data_catalog.read("models").to_pylist()
              if r["model_version"] == "v2"]
    # registered, promoted (by hand), promoted (rollback from v3), rolled_back (to v1), promoted
    assert sorted(events) == ["promoted"] * 3 + ["registered", "rolled_back"]
    assert versions.primitive_model(data_catalog)[0] == "v2"


def test_no_model_error_names_the_register_command(data_catalog: DataCatalog) -> None:
    from omnifer.errors import ModelFileError

    with pytest.raises(ModelFileError) as info:
        versions.primitive_model(data_catalog)
    assert "'omnifer models register CHECKPOINT --version v1 --promote'" in str(info.value)
