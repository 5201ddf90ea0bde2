"""``omnifer sql … --out`` writes every column type of every dataset in every format
(issue 15, kind 9: ``SELECT bbox FROM faces --out x.csv`` ended in a pyarrow traceback)."""

from __future__ import annotations

import base64
import csv
import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from omnifer.catalog import DataCatalog, run_sql
from omnifer.catalog.schemas import SCHEMAS
from omnifer.catalog.sql_export import FORMATS, write_result
from omnifer.errors import ConfigError

DATE = "2026-11-30"


def _value(t: pa.DataType, i: int) -> Any:
    """A non-trivial value of Arrow type ``t`` (row ``i``): every type the schemas use."""
    if pa.types.is_string(t):
        return f"text-{i}, with \"quotes\"\nand a newline"
    if pa.types.is_integer(t):
        return 7 + i
    if pa.types.is_floating(t):
        return 0.25 + i
    if pa.types.is_boolean(t):
        return i % 2 == 0
    if pa.types.is_timestamp(t):
        return dt.datetime(2026, 11, 30, 1, 2, 3, 456000, tzinfo=dt.UTC)
    if pa.types.is_fixed_size_binary(t):  # a face hash
        return bytes([0xFF, 0x00, i % 256, 0x80] * (t.byte_width // 4 + 1))[: t.byte_width]
    if pa.types.is_binary(t):
        return bytes([0xFF, 0xD8, 0x00, i, 0x80])  # not UTF-8: a JPEG's first bytes
    if pa.types.is_fixed_size_list(t):
        return [_value(t.value_type, i + k) for k in range(t.list_size)]
    if pa.types.is_list(t):
        return [_value(t.value_type, i + k) for k in range(3)]
    raise AssertionError(f"no sample value for {t}")


def _fill(catalog: DataCatalog) -> None:
    for name, schema in SCHEMAS.items():
        rows = [{f.name: _value(f.type, i) for f in schema} for i in range(2)]
        rows.append({f.name: None for f in schema})  # and a row of nulls
        part = {c: DATE for c in catalog.partition_cols(name)}
        catalog.write(name, "part-x.parquet", pa.Table.from_pylist(rows, schema=schema), **part)


def _norm(value: Any) -> Any:
    """The JSON form the export promises for ``value`` (binary base64, times ISO, ...)."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_norm(v) for v in value]
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    return value


def _csv_cell(value: Any, t: pa.DataType) -> str:
    """What the CSV cell must say for ``value`` of type ``t``."""
    if value is None:
        return ""
    if pa.types.is_binary(t):
        return base64.b64encode(value).decode()
    if pa.types.is_list(t) or pa.types.is_fixed_size_list(t):
        return json.dumps(_norm(value), separators=(",", ":"), ensure_ascii=False)
    if pa.types.is_boolean(t):
        return "true" if value else "false"
    if pa.types.is_timestamp(t):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f") + "+0000"
    return str(value)


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_every_dataset_every_column_every_format(
    name: str, data_catalog: DataCatalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from omnifer.cli import app

    _fill(data_catalog)
    query = f"SELECT * FROM {name} ORDER BY {SCHEMAS[name].names[0]} NULLS LAST"
    want = run_sql(query)
    assert want.num_rows == 3
    rows = want.to_pylist()
    runner = CliRunner()
    for suffix in FORMATS:
        out = tmp_path / f"{name}{suffix}"
        res = runner.invoke(app, ["sql", query, "--out", str(out)])
        assert res.exit_code == 0, (suffix, res.output, res.exception)
        assert "wrote 3 rows" in res.output
        if suffix == ".parquet":
            got = pq.read_table(out)
            assert got.schema.equals(want.schema), suffix
            assert got.to_pylist() == rows
        elif suffix == ".csv":
            with open(out, newline="", encoding="utf-8") as fh:
                lines = list(csv.reader(fh))
            assert lines[0] == want.column_names
            types = [f.type for f in want.schema]
            assert lines[1:] == [[_csv_cell(v, t) for v, t in zip(r.values(), types,
                                                                   strict=True)]
                                 for r in rows]
        else:
            text = out.read_text(encoding="utf-8")
            got_rows = ([json.loads(line) for line in text.splitlines()]
                        if FORMATS[suffix] == "jsonl" else json.loads(text))
            assert got_rows == [_norm(r) for r in rows], suffix
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files


def test_the_issue_example_and_duckdb_types(data_catalog: DataCatalog, tmp_path: Path) -> None:
    from omnifer.cli import app

    _fill(data_catalog)
    runner = CliRunner()
    out = tmp_path / "x.csv"
    res = runner.invoke(app, ["sql", "SELECT bbox FROM faces ORDER BY bbox NULLS LAST",
                              "--out", str(out)])
    assert res.exit_code == 0, (res.output, res.exception)
    assert "bbox as JSON text" in " ".join(res.output.split())
    assert out.read_text().splitlines() == ['"bbox"', '"[0.25,1.25,2.25,3.25]"',
                                            '"[1.25,2.25,3.25,4.25]"', ""]

    # Types only a query makes: structs, maps, intervals, huge integers, UUIDs, enums.
    query = ("SELECT {'a': 1, 'b': [1, 2]} AS s, MAP {'k': 1.5::DOUBLE} AS m, "
             "INTERVAL 3 DAY AS iv, "
             "12345678901234567890::HUGEINT AS h, '8a7f0d1e-0000-4000-8000-000000000001'::UUID"
             " AS u, 'x'::ENUM('x', 'y') AS e, [[1], [2, 3]] AS ll, NULL AS n")
    table = run_sql(query)
    expected = {"s": {"a": 1, "b": [1, 2]}, "m": {"k": 1.5},
                "iv": {"months": 0, "days": 3, "nanoseconds": 0},
                "h": "12345678901234567890", "u": "8a7f0d1e-0000-4000-8000-000000000001",
                "e": "x", "ll": [[1], [2, 3]], "n": None}
    for suffix in FORMATS:
        path = tmp_path / f"types{suffix}"
        result = write_result(table, path)
        assert result.rows == 1
        if suffix == ".parquet":
            got = pq.read_table(path).to_pylist()[0]
            assert got["iv"] == expected["iv"] and got["s"] == expected["s"]
            assert str(got["h"]) == expected["h"] and got["ll"] == expected["ll"]
        elif suffix == ".csv":
            with open(path, newline="") as fh:
                header, row = list(csv.reader(fh))
            cell = dict(zip(header, row, strict=True))
            for key in ("s", "m", "iv", "ll"):
                assert json.loads(cell[key]) == expected[key], key
            assert cell["h"] == expected["h"] and cell["e"] == "x" and cell["n"] == ""
        else:
            text = path.read_text()
            got = (json.loads(text.splitlines()[0]) if FORMATS[suffix] == "jsonl"
                   else json.loads(text)[0])
            assert got == expected, suffix

    res = runner.invoke(app, ["sql", "SELECT 1", "--out", str(tmp_path / "x.xlsx")])
    assert res.exit_code != 0 and isinstance(res.exception, ConfigError)
    assert "--out must end in" in str(res.exception) and "\n" not in str(res.exception)
