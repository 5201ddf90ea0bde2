"""Exceptions that the CLI turns into one line and a non-zero exit code.

Everything the library raises on purpose derives from :class:`OmniferError`, so callers can
tell "the input or set-up is wrong" (say what to fix) from a bug (show the traceback).
Per-image problems are *not* exceptions: they become rows with ``status`` and ``error``.
"""

from __future__ import annotations


class OmniferError(Exception):
    """Base class; ``exit_code`` is what the CLI returns."""

    exit_code = 1


class ConfigError(OmniferError):
    """The configuration or catalog is invalid."""

    exit_code = 2


class ModelFileError(OmniferError):
    """A model file is missing, or its checksum does not match."""

    exit_code = 3


class DatasetError(OmniferError):
    """A dataset is missing, has the wrong layout, or cannot be read."""

    exit_code = 4


class SourceError(OmniferError):
    """A source (folder, bucket, manifest) cannot be listed or is not allowed."""

    exit_code = 5


class StorageError(OmniferError):
    """Reading or committing to the catalog storage failed."""

    exit_code = 6


class DecodeError(OmniferError):
    """An image cannot be decoded; carries the row status to record."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


def config_error(what: str, exc: Exception) -> ConfigError:
    """One :class:`ConfigError` line for a pydantic ``ValidationError`` (the one place that
    turns validation errors into what the CLI prints): ``invalid <what>: <field>: <message>``,
    at most three fields, ``; ``-separated. Other exceptions (YAML errors, ``TypeError``) give
    their first line.

    Use as ``raise config_error("train config", exc) from None``.
    """
    errors = getattr(exc, "errors", None)
    if callable(errors):
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ())) or '(top level)'}: {e['msg']}"
                 for e in errors()[:3]]
        return ConfigError(f"invalid {what}: {'; '.join(parts)}")
    first = str(exc).strip().splitlines()
    return ConfigError(f"invalid {what}: {first[0] if first else type(exc).__name__}")
