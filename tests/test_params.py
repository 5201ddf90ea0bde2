"""Values that land in paths are checked at every edge (issue 15, kind 7).

``omnifer ingest --date 2026/12/01`` used to write nested partitions ``ingest_date=2026/12/01/``
(the summary said 0 images, DuckDB read ``ingest_date='2026'``). Now a date that is not ISO
``YYYY-MM-DD`` is one line from the CLI, the flows and the library, and nothing is written.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from omnifer.catalog import DataCatalog, runs
from omnifer.catalog.schemas import IMAGES
from omnifer.config import load_catalog
from omnifer.curation import curated
from omnifer.errors import ConfigError
from omnifer.models import versions
from omnifer.params import check_date, check_name
from omnifer.pipeline import ingest

BAD_DATES = ["2026/12/01", "2026-12-1", "26-12-01", "2026-02-30", "2026-12-01T00:00",
             " 2026-12-01", "2026-12-01/..", "../2026-12-01", ""]
BAD_NAMES = ["a/b", "..", ".", "../x", "_hidden", ".hidden", "a b", "x\\y", "", "v1\n"]


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_dates_and_names_are_checked_in_the_library(data_catalog: DataCatalog) -> None:
    assert check_date("2026-12-01") == "2026-12-01"
    assert check_name("2026-11-30.1a2b3c4d") == "2026-11-30.1a2b3c4d"
    for bad in BAD_DATES:
        with pytest.raises(ConfigError, match="ISO date|calendar date"):
            check_date(bad)
    for bad in BAD_NAMES:
        with pytest.raises(ConfigError):
            check_name(bad)

    root = Path(data_catalog.catalog.root)
    table = pa.Table.from_pylist([{"source_uri": "file:///x.jpg", "status": "ok"}],
                                 schema=IMAGES)
    params = ingest.IngestParams(model_version="v1", model_uri="unused")
    for bad in BAD_DATES:
        with pytest.raises(ConfigError):
            data_catalog.write("images", "part-x.parquet", table, ingest_date=bad)
        with pytest.raises(ConfigError):
            ingest.plan_ingest(data_catalog, [], bad, params)
        with pytest.raises(ConfigError):
            ingest.summarize(data_catalog, bad)
    for bad in BAD_NAMES:
        with pytest.raises(ConfigError):
            data_catalog.write("images", bad, table, ingest_date="2026-12-01")
        with pytest.raises(ConfigError):
            runs.start(data_catalog, bad, "nightly-ingest", "2026-12-01", {})
        with pytest.raises(ConfigError):
            versions.register_version(data_catalog, root, bad)
    for bad in ["a/b", "..", ".", "../x", "x\\y", "", "/etc", "s3://bucket/x"]:
        with pytest.raises(ConfigError):  # bookkeeping paths: one segment per part
            data_catalog.aux_uri("_runs", bad)
    with pytest.raises(ConfigError):  # a select with a model version that would be a folder
        curated.select_curated(data_catalog, "2026-12-01", None, "../v1", "run")
    assert not root.exists() or _files(root) == []  # nothing written anywhere

    data_catalog.write("images", "part-x.parquet", table, ingest_date="2026-12-01")
    assert _files(root) == ["images/ingest_date=2026-12-01/part-x.parquet"]


def test_catalog_names_are_checked_when_loaded(tmp_path: Path) -> None:
    import yaml

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "data_catalog.yaml")
                         .read_text())
    raw["root"] = str(tmp_path / "c")
    raw["datasets"]["images"]["partitioning"] = ["ingest/date"]
    path = tmp_path / "cat.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="partition column"):
        load_catalog(path)


def test_cli_rejects_a_bad_date_in_one_line_before_anything_runs(
    catalog_file: Path, tmp_path: Path
) -> None:
    from omnifer.cli import app

    root = tmp_path / "catalog"
    runner = CliRunner()
    cases = [
        ["ingest", "--date", "2026/12/01", "--source", str(tmp_path)],
        ["rerun", "--date", "2026/12/01"],
        ["retry-failed", "--stage", "fetch", "--date", "2026/12/01"],
        ["report", "--date", "2026/12/01"],
        ["catalog", "compact", "--date", "2026/12/01"],
        ["catalog", "verify", "--date", "2026/12/01"],
        ["demo", "--date", "2026/12/01", "--out", str(tmp_path / "demo")],
        ["models", "register", str(tmp_path), "--version", "../v9"],
    ]
    for args in cases:
        res = runner.invoke(app, args)
        assert res.exit_code != 0, args
        assert isinstance(res.exception, ConfigError), (args, res.exception)
        assert "\n" not in str(res.exception)
        assert "2026/12/01" in str(res.exception) or "../v9" in str(res.exception)
    assert not root.exists() or _files(root) == []
    assert not (tmp_path / "demo").exists()


def test_flows_reject_a_bad_date(catalog_file: Path) -> None:
    """The flows' own parameters are checked too (a deployment's run bypasses the CLI).
    Called through ``.fn`` (the function under the flow), so no Prefect server is needed."""
    from flows.ingest import nightly_ingest
    from flows.retry import retry_failed_flow

    with pytest.raises(ConfigError, match="2026/12/01"):
        nightly_ingest.fn(date="2026/12/01", sources=["/nowhere"])
    with pytest.raises(ConfigError, match="2026/12/01"):
        retry_failed_flow.fn(stage="fetch", date="2026/12/01")
    assert not Path(load_catalog(catalog_file).root).exists()
