"""Config, catalog, storage and model files: the ground every stage stands on."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from omnifer import storage
from omnifer.catalog import DataCatalog, run_sql
from omnifer.catalog.schemas import IMAGES
from omnifer.config import load_catalog, load_settings
from omnifer.errors import ConfigError, ModelFileError
from omnifer.models import modelfiles

REPO = Path(__file__).resolve().parents[1]


def _images(uris: list[str], status: str = "ok") -> pa.Table:
    rows = [{"source_uri": u, "sha256": hashlib.sha256(u.encode()).hexdigest(), "status": status,
             "n_faces": 1} for u in uris]
    return pa.Table.from_pylist(rows, schema=IMAGES)


def test_repository_catalog_names_every_dataset() -> None:
    catalog = load_catalog(REPO / "data_catalog.yaml")
    assert set(catalog.datasets) == {"images", "faces", "scores", "curated", "distilled",
                                     "models", "erasures", "duplicates"}
    assert catalog.root == str(REPO / "data" / "catalog")  # relative root hangs off the file
    assert catalog.uri("faces").endswith("/data/catalog/faces")


def test_catalog_root_and_settings_from_environment(catalog_file: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNIFER_CATALOG_ROOT", "s3://bucket/omnifer")
    monkeypatch.setenv("OMNIFER_INGEST__SHARD_SIZE", "17")
    settings = load_settings()
    assert settings.ingest.shard_size == 17
    assert settings.catalog.uri("scores") == "s3://bucket/omnifer/scores"


def test_invalid_settings_and_catalog_give_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMNIFER_INGEST__SHARD_SIZE", "zero")
    with pytest.raises(ConfigError, match="ingest.shard_size"):
        load_settings()
    bad = tmp_path / "cat.yaml"
    bad.write_text("root: x\ndatasets:\n  images: {uri: images}\n")
    with pytest.raises(ConfigError, match="lacks datasets"):
        load_catalog(bad)
    # OMNIFER_CATALOG set to the data folder instead of the YAML file, or to a binary file:
    # one line through the CLI, never a traceback.
    binary = tmp_path / "cat.bin"
    binary.write_bytes(b"\xd0\xff\x00" * 10)
    for wrong, says in ((tmp_path, "is a folder"), (binary, "cannot be read")):
        with pytest.raises(ConfigError, match=says):
            load_catalog(wrong)
        env = {**os.environ, "OMNIFER_CATALOG": str(wrong)}
        env.pop("OMNIFER_INGEST__SHARD_SIZE", None)
        res = subprocess.run([sys.executable, "-m", "omnifer", "catalog"], env=env,
                             capture_output=True, text=True, cwd=REPO)
        assert res.returncode != 0 and says in res.stderr + res.stdout
        assert "Traceback" not in res.stderr


def test_write_is_atomic_idempotent_and_visible_to_duckdb(data_catalog: DataCatalog) -> None:
    data_catalog.write("images", "part-a.parquet", _images(["a", "b"]), ingest_date="2026-11-28")
    data_catalog.write("images", "part-b.parquet", _images(["c"]), ingest_date="2026-11-29")
    # A rerun of the same shard rewrites the same file: no duplicate rows.
    data_catalog.write("images", "part-a.parquet", _images(["a", "b"]), ingest_date="2026-11-28")
    # A crashed writer's leftover in the staging folder is invisible to readers.
    staging = Path(data_catalog.uri("images")) / "_staging"
    staging.mkdir(exist_ok=True)
    (staging / "dead.parquet").write_bytes(b"half a file")
    (staging / "dead.parquet.tmp").write_bytes(b"half a file")

    assert data_catalog.read("images").num_rows == 3
    con = data_catalog.connect()
    rows = con.execute("SELECT ingest_date, count(*) FROM images GROUP BY 1 ORDER BY 1").fetchall()
    assert rows == [("2026-11-28", 2), ("2026-11-29", 1)]
    assert con.execute("SELECT count(*) FROM faces").fetchone() == (0,)  # empty but queryable
    info = {i.name: i for i in data_catalog.info()}
    assert (info["images"].files, info["images"].rows) == (2, 3)


def test_sql_command_prints_and_writes(data_catalog: DataCatalog, tmp_path: Path) -> None:
    from omnifer.cli import app

    data_catalog.write("images", "p.parquet", _images(["x", "y"], "corrupt"),
                       ingest_date="2026-11-29")
    runner = CliRunner()
    res = runner.invoke(app, ["sql", "SELECT status, count(*) AS n FROM images GROUP BY 1"])
    assert res.exit_code == 0, res.output
    assert "corrupt" in res.output
    out = tmp_path / "r.csv"
    res = runner.invoke(app, ["sql", "SELECT source_uri FROM images ORDER BY 1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_text().split() == ['"source_uri"', '"x"', '"y"']
    assert run_sql("SELECT count(*) AS n FROM images").to_pylist() == [{"n": 2}]


def test_models_fetch_from_mirror_checks_sha256(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    candidates = [REPO.parent / "shared" / "models", modelfiles.models_dir()]
    src = next((c for c in candidates
                if (c / modelfiles.MODEL_FILES["yunet"].filename).exists()), None)
    if src is None:
        pytest.skip("no model mirror on this machine")
    home = tmp_path / "home"
    monkeypatch.setenv("OMNIFER_MODEL_MIRROR", str(src))
    fetched = modelfiles.fetch(["yunet"], home=home, download=False)
    assert modelfiles.sha256_file(fetched["yunet"]) == modelfiles.MODEL_FILES["yunet"].sha256

    # A tampered file is refused, with one line that says what to do.
    fetched["yunet"].write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="refusing to load"):
        modelfiles.model_path("yunet", home=home)
    # A tampered mirror is refused too.
    bad_mirror = tmp_path / "mirror"
    bad_mirror.mkdir()
    (bad_mirror / modelfiles.MODEL_FILES["yunet"].filename).write_bytes(b"evil")
    monkeypatch.setenv("OMNIFER_MODEL_MIRROR", str(bad_mirror))
    with pytest.raises(ModelFileError, match="expected"):
        modelfiles.fetch(["yunet"], home=tmp_path / "home2", download=False)


def test_missing_model_file_is_one_clear_line(tmp_path: Path) -> None:
    env = {**os.environ, "OMNIFER_HOME": str(tmp_path / "empty"), "OMNIFER_MODEL_MIRROR": ""}
    res = subprocess.run([sys.executable, "-m", "omnifer", "models", "fetch", "--offline"],
                         env=env, capture_output=True, text=True, cwd=REPO)
    assert res.returncode == ModelFileError.exit_code
    assert "Traceback" not in res.stderr
    assert str(tmp_path / "empty" / "models") in res.stderr.replace("\n", "")


@pytest.mark.parametrize("preset", [None, "true"])
def test_cli_turns_prefect_telemetry_off_unless_told(preset: str | None) -> None:
    """No network at run time: the command, not only `make`, keeps Prefect's usage heartbeat
    off; an operator's explicit setting is kept."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_SERVER_ANALYTICS_ENABLED", "DO_NOT_TRACK")}
    if preset:
        env["PREFECT_SERVER_ANALYTICS_ENABLED"] = preset
    code = ("import os, sys\nsys.argv = ['omnifer', '--help']\nfrom omnifer.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "from prefect.settings import get_current_settings\n"
            "print('RESULT', get_current_settings().server.analytics_enabled, "
            "os.environ['DO_NOT_TRACK'])\n")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr
    line = next(x for x in res.stdout.splitlines() if x.startswith("RESULT"))
    assert line == f"RESULT {preset == 'true'} 1"


def test_library_never_imports_prefect() -> None:
    code = (
        "import sys, importlib, pkgutil, omnifer\n"
        "for m in pkgutil.walk_packages(omnifer.__path__, 'omnifer.'):\n"
        "    if not m.name.startswith(('omnifer.cli', 'omnifer.__main__')):\n"
        "        importlib.import_module(m.name)\n"
        "print('prefect' in sys.modules)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


def test_storage_round_trip_bytes(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/a/b/c.json"
    storage.write_bytes_atomic(uri, b"{}")
    assert storage.read_bytes(uri) == b"{}"
    assert storage.list_files(str(tmp_path)) == [str(tmp_path / "a" / "b" / "c.json")]
