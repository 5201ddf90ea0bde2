"""User-given values that end up in paths: checked once, at every edge, with one clear line.

Why: a value such as ``--date 2026/12/01`` used to become the nested folders
``ingest_date=2026/12/01/``; the night's summary then counted 0 images and DuckDB read the
partition as ``ingest_date='2026'``. A run id or model version with ``/`` or ``..`` in it could
likewise write outside its folder. Every value that names a folder or file (ingest dates, run
ids, model / curated / distilled versions, dataset and partition names, catalog file names) goes
through :func:`check_date` or :func:`check_name` before any path is built: in the CLI (so the
error comes before Prefect starts), in the flows' parameters and in the library entry points,
and once more where paths are made (:meth:`omnifer.catalog.DataCatalog.file_uri` / ``aux_uri``).
"""

from __future__ import annotations

import datetime as dt
import re

from omnifer.errors import ConfigError

_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,199}")
_SEGMENT_BAD = re.compile(r"[/\\\x00-\x1f\x7f]")


def check_date(value: object, what: str = "date") -> str:
    """``value`` if it is an ISO calendar date ``YYYY-MM-DD`` (e.g. ``2026-11-30``).

    Raises :class:`ConfigError` (one line) for anything else: other separators
    (``2026/12/01``), missing zero padding (``2026-1-5``), times, impossible dates
    (``2026-02-30``), surrounding blanks.
    """
    text = value if isinstance(value, str) else None
    if text is None or not _ISO_DATE.fullmatch(text):
        raise ConfigError(f"{what} must be an ISO date YYYY-MM-DD (e.g. 2026-11-30), got {value!r}")
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{what} {value!r} is not a calendar date") from None
    return text


def check_name(value: object, what: str = "name") -> str:
    """``value`` if it is safe as one file or folder name: 1–200 characters from
    ``A–Z a–z 0–9 . _ - + =``, starting with a letter or digit (so never ``.``, ``..``, a
    hidden or ``_``-prefixed name that readers skip, nor anything with ``/`` or ``\\``).

    Raises :class:`ConfigError` (one line) otherwise. Examples that pass: ``v2``,
    ``2026-11-30.1a2b3c4d``, ``d-0123abcd``, a Prefect run id (a UUID),
    ``local-20261130T010203``.
    """
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ConfigError(f"{what} must be 1-200 characters of letters, digits and . _ - + = "
                          f"(starting with a letter or digit), got {value!r}")
    return value


def check_segment(value: object, what: str = "path part") -> str:
    """``value`` if it is exactly one path segment (bookkeeping folders may start with ``_``,
    partition folders hold ``=``): not empty, not ``.``/``..``, no ``/``, ``\\`` or control
    characters, no ``://``. Raises :class:`ConfigError` otherwise."""
    if (not isinstance(value, str) or value in ("", ".", "..") or _SEGMENT_BAD.search(value)
            or "://" in value):
        raise ConfigError(f"{what} must be one file or folder name, got {value!r}")
    return value


__all__ = ["check_date", "check_name", "check_segment"]
