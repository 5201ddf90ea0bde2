"""CLI commands: distill."""

from omnifer.cli._app import app  # noqa: F401
