"""What the supervisor keeps on disk, written without ever stopping it: the history file
(off the loop, by one keeper task) and the disk trouble every writer reports (a full disk,
a read-only mount), published as `warning` events and `warnings` in status, and retried
with backoff until the disk takes the writes again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import anyio
import anyio.to_thread
import structlog

from .events import EventBus
from .history import History
from .logfiles import RETRY_INITIAL_S, RETRY_MAX_S, RotatingLog, disk_problem

log = structlog.get_logger("ironcliw.supervisor")


class DiskState:
    def __init__(
        self,
        bus: EventBus,
        history: History,
        log_sinks: Callable[[], Iterable[RotatingLog]],
        retry_record: Callable[[], None],
    ) -> None:
        self.bus = bus
        self.history = history
        self._log_sinks = log_sinks  # every component's current log file
        self._retry_record = retry_record  # asks the record keeper (record.py) to write again
        # Disk trouble that is reported, never fatal: path -> (where, problem), e.g. ("log_dir", "no space left").
        self._problems: dict[str, tuple[str, str]] = {}
        self._dirty = anyio.Event()  # history to write, or a write to retry (the keeper's wake-up)

    def problem(self, where: str, path: str, problem: str | None) -> None:
        """Record (or clear, with None) a write the disk refused; publish the change once."""
        had = self._problems.get(path)
        if problem is None:
            if had is not None:
                del self._problems[path]
                log.info("disk_recovered", where=where, path=path)
                self.bus.publish("warning", where=where, path=path, problem=None)
            return
        if had == (where, problem):
            return
        self._problems[path] = (where, problem)
        log.warning("disk_write_failed", where=where, path=path, problem=problem, action="kept in memory, retrying")
        self.bus.publish("warning", where=where, path=path, problem=problem)
        self._dirty.set()  # the keeper retries with backoff

    def warnings(self) -> list[str]:
        """One line per kind of trouble, e.g. `log_dir: no space left` (in status and report)."""
        return sorted({f"{where}: {problem}" for where, problem in self._problems.values()})

    def reopen_logs(self) -> None:
        """Every component's log file opened again at its path (logrotate moved them)."""
        sinks = list(self._log_sinks())
        for sink in sinks:
            sink.reopen()
        log.info("logs_reopened", files=len(sinks))

    def history_changed(self) -> None:
        self._dirty.set()

    async def keep(self) -> None:
        """The one writer of the history file (off the loop, in a worker thread), and the
        retrier of every write the disk refused, with backoff until it takes them again."""
        backoff = RETRY_INITIAL_S
        while True:
            await self._dirty.wait()
            self._dirty = anyio.Event()
            saved = await self._save_history()
            if any(where == "runtime_dir" for where, _ in self._problems.values()):
                self._retry_record()
            logs_ok = all(sink.retry() for sink in self._log_sinks() if sink.problem)
            if saved and logs_ok and not self._problems:
                backoff = RETRY_INITIAL_S
                continue
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, RETRY_MAX_S)
            self._dirty.set()

    async def _save_history(self) -> bool:
        if not self.history.dirty:
            return True
        data = self.history.encode()  # on the loop: the thread must not read what the loop changes
        try:
            await anyio.to_thread.run_sync(self.history.write, data)
        except OSError as exc:
            self.problem("state_dir", str(self.history.path), disk_problem(exc))
            return False
        self.problem("state_dir", str(self.history.path), None)
        return True

    def save_history_now(self) -> None:
        """At exit: the last runs are written before the supervisor is gone (or reported)."""
        if self.history.dirty:
            try:
                self.history.save()
            except OSError as exc:
                log.error("history_not_saved", path=str(self.history.path), problem=disk_problem(exc))
