"""The ``omnifer`` command line.

Each command is a thin shell over one typed library function (docs/architecture.md, habit 1), so the
CLI, the Prefect tasks and a notebook cannot drift apart. Sub-modules register their commands
on :data:`app`; :func:`main` turns every :class:`~omnifer.errors.OmniferError` into one line on
stderr and its exit code, never a traceback.
"""

from __future__ import annotations

import gc
import sys

from rich.markup import escape

# Importing a module registers its commands on ``app``.
from omnifer.cli import backfill as _backfill  # noqa: E402,F401
from omnifer.cli import data as _data  # noqa: E402,F401
from omnifer.cli import distill as _distill  # noqa: E402,F401
from omnifer.cli import erasure as _erasure  # noqa: E402,F401
from omnifer.cli import export as _export  # noqa: E402,F401
from omnifer.cli import model as _model  # noqa: E402,F401
from omnifer.cli import model_import as _model_import  # noqa: E402,F401
from omnifer.cli import ops as _ops  # noqa: E402,F401
from omnifer.cli import report as _report  # noqa: E402,F401
from omnifer.cli import retrain as _retrain  # noqa: E402,F401
from omnifer.cli import synth as _synth  # noqa: E402,F401
from omnifer.cli._app import app, err_console
from omnifer.config import default_variable
from omnifer.errors import OmniferError
from omnifer.logs import configure_logging

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    configure_logging()  # once per process: level from OMNIFER_LOG_LEVEL; httpx quiet
    # No network at run time: Prefect's temporary server would otherwise send a usage
    # heartbeat (and, beside another server's database, log "database is locked"
    # tracebacks for it). `make` exports the same; an explicit setting wins.
    default_variable("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    default_variable("DO_NOT_TRACK", "1")
    try:
        app()
    except OmniferError as exc:
        # escape: a message may hold brackets (pip install -e '.[dask]') that are not markup
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False,
                          soft_wrap=True)  # one line
        sys.exit(exc.exit_code)
    finally:
        # The process ends now. Python's last garbage collection walks every object of every
        # imported module (torch, Prefect, pydantic): 1.5-2 s after `omnifer ingest`, for
        # memory the OS takes back anyway (docs/performance.md, "Fixed cost of a run").
        # Frozen objects are left out of it; atexit handlers (Prefect's log and event
        # workers, its temporary server's stop) still run, and stdout/stderr are flushed.
        gc.freeze()
