"""The shared Typer application and consoles."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(
    name="omnifer",
    help="Mine, curate and distil facial-expression data from unlabeled faces.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)
