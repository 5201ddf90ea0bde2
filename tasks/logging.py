"""Route the library's ``logging`` records into the Prefect run's log.

Each forwarded copy carries ``omnifer.logs.FORWARDED``, so a process whose logging omnifer
configured prints the original line only once (see :mod:`omnifer.logs`).
"""

from __future__ import annotations

import logging

from prefect.logging import get_run_logger

from omnifer.logs import FORWARDED


class _ToPrefect(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, FORWARDED, False):
            return
        try:
            get_run_logger().log(record.levelno, "%s: %s", record.name, record.getMessage(),
                                 extra={FORWARDED: True})
        except Exception:  # outside a run context: nowhere to send it
            pass


_handler = _ToPrefect(level=logging.INFO)


def attach_prefect_logger() -> None:
    """Idempotently forward ``omnifer.*`` logs to whichever Prefect run is current."""
    logger = logging.getLogger("omnifer")
    if _handler not in logger.handlers:
        logger.addHandler(_handler)
        logger.setLevel(min(logger.level or logging.INFO, logging.INFO))
