"""Logging, configured once per process: one format, each line printed once.

The library only logs (``logging.getLogger(__name__)``); the process that owns the terminal (the
CLI, a benchmark) calls :func:`configure_logging` once. Inside a Prefect run, ``tasks/logging.py``
forwards a copy of each ``omnifer.*`` record to the run's logger (so it reaches the Prefect UI)
and marks the copy :data:`FORWARDED`; the handler installed here skips marked copies, because
it prints the original already (before: every line twice, ``omnifer.progress: …`` and
``prefect.task_runs: omnifer.progress: …``). Where nobody configured logging (a Prefect worker),
Prefect's own console handler prints the copy: once again.

OpenCV logs from C++ straight to stderr; :func:`quiet_opencv` lowers its level around calls that
print warnings a user cannot act on (OpenCV 5's ``setPreferableTarget ... not supported by the
new graph engine``, once per detector).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

from omnifer.config import environment

FORWARDED = "omnifer_forwarded"
"""Attribute (``extra``) of the copy of a record that was handed to a Prefect run logger."""

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_configured = False
_cv2_lock = threading.Lock()


class _NotForwarded(logging.Filter):
    """Drops the copies forwarded to a Prefect run logger (the original is printed)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, FORWARDED, False)


def configure_logging(level: str | int | None = None) -> None:
    """Configure the root logger once (later calls only change the level).

    ``level`` defaults to ``OMNIFER_LOG_LEVEL`` (``INFO``). Noisy third-party loggers (httpx:
    Prefect's client logs every API request at INFO) are set to WARNING.
    """
    global _configured
    level = level or environment().log_level
    root = logging.getLogger()
    if not _configured:
        logging.basicConfig(level=level, format=FORMAT)
        for handler in root.handlers:
            handler.addFilter(_NotForwarded())
        logging.getLogger("httpx").setLevel(logging.WARNING)
        _configured = True
    root.setLevel(level)


@contextlib.contextmanager
def quiet_opencv() -> Iterator[None]:
    """OpenCV's own log level at ERROR for the duration (then restored)."""
    import cv2.utils.logging as cv_log

    with _cv2_lock:
        before = cv_log.getLogLevel()
        cv_log.setLogLevel(cv_log.LOG_LEVEL_ERROR)
        try:
            yield
        finally:
            cv_log.setLogLevel(before)
