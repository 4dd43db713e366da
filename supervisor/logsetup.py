"""structlog configuration, done once by the entry point (never at import time)."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def configure(fmt: str = "auto", stream: TextIO | None = None, level: int = logging.INFO) -> None:
    """`console` for people, `json` (one object per line) for machines; `auto` picks by TTY."""
    out = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    renderer: structlog.types.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            # JSON lines are read by machines, maybe on another host or after a move across time
            # zones: UTC with its `Z`, as the components' own lines and docker's logs carry it.
            # People at the console read their local time.
            structlog.processors.TimeStamper(fmt="iso", utc=fmt == "json"),
            structlog.processors.format_exc_info if fmt == "json" else structlog.processors.StackInfoRenderer(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # The standard library's loggers (asyncio's "socket.accept() out of system resource",
    # "Task exception was never retrieved", ...) go the same way: rendered like every other
    # line (JSON stays JSON lines) and written by `up`'s non-blocking writer, never straight
    # to a stderr that a full pipe could block.
    root = logging.getLogger()
    root.handlers = [_ToStructlog()]
    root.setLevel(logging.WARNING)


class _ToStructlog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            extra = {"exc_info": record.exc_info} if record.exc_info else {}
            structlog.get_logger(record.name).log(record.levelno, record.getMessage(), logger=record.name, **extra)
        except Exception:  # a logging call must never raise into the code that made it
            self.handleError(record)
