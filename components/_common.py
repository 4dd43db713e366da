"""What every component shares: JSON logging to stdout, and signal-driven stop and trim."""

from __future__ import annotations

import os
import signal
import sys
import threading

import structlog


def logger(name: str) -> structlog.stdlib.BoundLogger:
    """One JSON object per line on stdout, which the supervisor copies to the component's log."""
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
    )
    return structlog.get_logger(name).bind(component=name, pid=os.getpid())


class Signals:
    """SIGTERM/SIGINT set `stop`; the trim signal (SIGUSR1 unless overridden) sets `trim`.

    Handlers only set events; the program's own loop does the work, so no handler runs
    arbitrary code between two bytecodes of a half-built data structure.
    """

    def __init__(self, trim_signal: int = signal.SIGUSR1) -> None:
        self.stop = threading.Event()
        self.trim = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop.set())
        signal.signal(trim_signal, lambda *_: self.trim.set())

    def take_trim(self) -> bool:
        if self.trim.is_set():
            self.trim.clear()
            return True
        return False


def rss_mb() -> float:
    """Our own resident size, for log lines (Linux /proc; 0 elsewhere)."""
    try:
        with open(f"/proc/{os.getpid()}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1048576
    except OSError:
        return 0.0
