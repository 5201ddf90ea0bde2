"""Write a query result (an Arrow table) to a file: ``omnifer sql … --out FILE``.

Formats, chosen by the file's suffix (:data:`FORMATS`):

* ``.parquet``: every Arrow type as it is, except intervals (DuckDB ``INTERVAL``), which
  Parquet cannot hold: they become ``struct<months: int32, days: int32, nanoseconds: int64>``.
* ``.csv``: one text cell per value. Numbers, strings, booleans, dates, times, timestamps and
  decimals are written as Arrow's CSV writer writes them; binary (a face ``crop``) is base64;
  lists, structs, maps and intervals (``bbox``, ``probs``, ``embedding``, ``classes``) are
  JSON text, e.g. ``[10.0,12.5,80.0,90.0]`` (binary inside them base64, NaN/inf as null).
* ``.jsonl`` / ``.ndjson``: one JSON object per row; ``.json``: one JSON array of rows. Values
  as in CSV's JSON cells (dates and times ISO 8601, decimals as strings to keep every digit).

Rows are converted and written a batch at a time, and the file appears only when complete
(written beside it, then renamed): a failed export leaves no half file. An unknown suffix, or a
type no format can hold, is one :class:`~omnifer.errors.ConfigError` /
:class:`~omnifer.errors.DatasetError` line, never a traceback.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import math
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from omnifer.errors import ConfigError, DatasetError

FORMATS: dict[str, str] = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl",
                           ".ndjson": "jsonl", ".json": "json"}
"""File suffix → format."""

BATCH_ROWS = 4096


@dataclass
class ExportResult:
    """What :func:`write_result` wrote: ``rows``, the ``format`` and, per column that is not
    stored in its own type, how it was written (``{"bbox": "JSON text"}``)."""

    path: Path
    format: str
    rows: int
    converted: dict[str, str] = field(default_factory=dict)


def format_for(path: Path | str) -> str:
    """The format of ``path`` by its suffix; ConfigError (one line) for an unknown one."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"--out must end in {', '.join(FORMATS)}; got {Path(path).name!r}")
    return FORMATS[suffix]


def write_result(table: pa.Table, path: Path | str) -> ExportResult:
    """Write ``table`` to ``path`` in the format its suffix names (see the module docstring).

    Raises ConfigError for an unknown suffix and DatasetError when a column cannot be written
    (the message names the column and its type) or the file cannot be written.
    """
    path = Path(path)
    fmt = format_for(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        if fmt == "parquet":
            converted = _write_parquet(table, tmp)
        elif fmt == "csv":
            converted = _write_csv(table, tmp)
        else:
            converted = _write_json(table, tmp, lines=fmt == "jsonl")
        os.replace(tmp, path)
    except OSError as exc:
        raise DatasetError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(path, fmt, table.num_rows, converted)


# -- Parquet ---------------------------------------------------------------------------------
_INTERVAL_STRUCT = pa.struct([("months", pa.int32()), ("days", pa.int32()),
                              ("nanoseconds", pa.int64())])


def _parquet_column(col: pa.ChunkedArray) -> tuple[pa.ChunkedArray, str | None]:
    if pa.types.is_interval(col.type):
        rows = [None if v is None else {"months": v.months, "days": v.days,
                                        "nanoseconds": v.nanoseconds}
                for v in col.to_pylist()]
        return pa.chunked_array([pa.array(rows, _INTERVAL_STRUCT)]), "struct(months, days, ns)"
    return col, None


def _write_parquet(table: pa.Table, tmp: Path) -> dict[str, str]:
    converted: dict[str, str] = {}
    columns = []
    for name, col in zip(table.column_names, table.columns, strict=True):
        col, how = _parquet_column(col)
        if how:
            converted[name] = how
        columns.append(col)
    out = pa.Table.from_arrays(columns, names=table.column_names)
    try:
        pq.write_table(out, tmp, compression="zstd")
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid) as exc:
        raise DatasetError(f"cannot write Parquet: {_first_line(exc)}") from None
    return converted


# -- CSV -------------------------------------------------------------------------------------
def _csv_native(t: pa.DataType) -> bool:
    """Types Arrow's CSV writer writes as readable text."""
    return (_is_string_view(t) or pa.types.is_integer(t) or pa.types.is_floating(t)
            or pa.types.is_boolean(t)
            or pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_date(t)
            or pa.types.is_time(t) or pa.types.is_timestamp(t) or pa.types.is_decimal(t)
            or pa.types.is_null(t))


def _is_string_view(t: pa.DataType) -> bool:
    return bool(getattr(pa.types, "is_string_view", lambda _: False)(t))


def _csv_plan(schema: pa.Schema) -> dict[str, str]:
    """Column → how it is written when not natively: ``base64`` or ``JSON text``."""
    plan = {}
    for f in schema:
        t = f.type.value_type if pa.types.is_dictionary(f.type) else f.type
        if _csv_native(t):
            continue
        is_binary = (pa.types.is_binary(t) or pa.types.is_large_binary(t)
                     or pa.types.is_fixed_size_binary(t))
        plan[f.name] = "base64" if is_binary else "JSON text"
    return plan


def _csv_batch(batch: pa.RecordBatch, plan: dict[str, str]) -> pa.RecordBatch:
    arrays = []
    for name, col in zip(batch.schema.names, batch.columns, strict=True):
        if pa.types.is_dictionary(col.type):
            col = col.dictionary_decode()
        if _is_string_view(col.type):
            col = col.cast(pa.string())
        how = plan.get(name)
        if how == "base64":
            col = pa.array([None if v is None else base64.b64encode(v).decode()
                            for v in col.to_pylist()], pa.string())
        elif how:
            col = pa.array([None if v is None else _dumps(v) for v in col.to_pylist()],
                           pa.string())
        arrays.append(col)
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


def _csv_type(t: pa.DataType, as_text: bool) -> pa.DataType:
    t = t.value_type if pa.types.is_dictionary(t) else t
    return pa.string() if as_text or _is_string_view(t) else t


def _write_csv(table: pa.Table, tmp: Path) -> dict[str, str]:
    plan = _csv_plan(table.schema)
    schema = pa.schema([pa.field(f.name, _csv_type(f.type, f.name in plan))
                        for f in table.schema])
    try:
        with pacsv.CSVWriter(str(tmp), schema) as writer:
            for batch in _batches(table):
                writer.write_batch(_csv_batch(batch, plan))
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid) as exc:
        raise DatasetError(f"cannot write CSV: {_first_line(exc)}") from None
    return plan


# -- JSON ------------------------------------------------------------------------------------
def _write_json(table: pa.Table, tmp: Path, lines: bool) -> dict[str, str]:
    names = table.column_names
    first = True
    with open(tmp, "w", encoding="utf-8") as fh:
        if not lines:
            fh.write("[")
        for batch in _batches(table):
            columns = [c.to_pylist() for c in batch.columns]
            for row in zip(*columns, strict=True):
                text = _dumps(dict(zip(names, row, strict=True)))
                if lines:
                    fh.write(text + "\n")
                else:
                    fh.write(("\n" if first else ",\n") + text)
                first = False
        if not lines:
            fh.write("\n]\n" if not first else "]\n")
    return {}


# -- shared ----------------------------------------------------------------------------------
def _batches(table: pa.Table) -> Iterator[pa.RecordBatch]:
    yield from table.to_batches(max_chunksize=BATCH_ROWS)


def _plain(value: Any) -> Any:
    """A Python value from ``to_pylist`` as JSON-ready data (see the module docstring)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if hasattr(value, "months") and hasattr(value, "nanoseconds"):  # MonthDayNano interval
        return {"months": value.months, "days": value.days, "nanoseconds": value.nanoseconds}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if value and all(isinstance(p, tuple) and len(p) == 2 for p in value):
            keys = [p[0] for p in value]  # an Arrow map arrives as a list of (key, value)
            if all(isinstance(k, str) for k in keys) and len(set(keys)) == len(keys):
                return {k: _plain(v) for k, v in value}
        return [_plain(v) for v in value]
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(value)


def _dumps(value: Any) -> str:
    return json.dumps(_plain(value), ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


__all__ = ["FORMATS", "ExportResult", "format_for", "write_result"]
