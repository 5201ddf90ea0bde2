"""CLI commands: model."""

from omnifer.cli._app import app  # noqa: F401
