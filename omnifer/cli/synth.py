"""CLI commands: synth."""

from omnifer.cli._app import app  # noqa: F401
