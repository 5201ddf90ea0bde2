"""Tables for people and for pipes: full values always, never ``comp… retr…`` cells.

On a terminal a rich table wraps long cells onto more lines (``overflow="fold"``: a run id or a
URI is broken, not cut). Anywhere else (a pipe, a file, a test's captured output) the table is
plain tab-separated lines, a header line first, so ``cut -f`` and ``grep`` see every value
whole; a cell's own line breaks become ``"; "``. The CLI prints every table through
:func:`print_table`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table


def _text(value: Any) -> str:
    return "-" if value is None else str(value)


def print_table(console: Console, columns: Sequence[str], rows: Iterable[Sequence[Any]],
                title: str | None = None) -> None:
    """Print ``rows`` (one value per column) under ``columns`` on ``console``.

    A rich table on a terminal (long values wrap), tab-separated lines elsewhere (a ``# title``
    line first when ``title`` is given).
    """
    rows = [[_text(v) for v in row] for row in rows]
    if console.is_terminal:
        table = Table(title=title)
        for name in columns:
            table.add_column(name, overflow="fold")
        for row in rows:
            table.add_row(*row)
        console.print(table)
        return
    out = console.file
    if title:
        out.write(f"# {title}\n")
    out.write("\t".join(columns) + "\n")
    for row in rows:
        out.write("\t".join(cell.replace("\t", " ").replace("\n", "; ") for cell in row) + "\n")
    out.flush()
