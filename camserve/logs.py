"""Logging set-up of every camserve process (the CLI and `serve --workers` worker processes)."""

from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int, fmt: str = LOG_FORMAT) -> None:
    """Log to stderr at ``level`` in ``fmt``. No camserve format shows the caller's file, line or
    thread, so records skip finding them (the Python Logging HOWTO's "Optimization"): a server logs
    one line per request, and finding the caller was a fifth of that line's cost."""
    logging.basicConfig(level=level, format=fmt)
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
