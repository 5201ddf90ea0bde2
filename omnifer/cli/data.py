"""CLI commands: data."""

from omnifer.cli._app import app  # noqa: F401
