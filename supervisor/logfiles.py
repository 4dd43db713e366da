"""Component log files: written with rotation, kept in memory while the disk refuses them,
and read back from the end at a cost bounded by what is asked for.

A full or failing disk (ENOSPC, EIO, EROFS, EDQUOT, EFBIG) must never stop supervision:
`RotatingLog` then keeps the newest output in a bounded buffer, retries with backoff
(on the next output, or when the supervisor's keeper calls `retry()`), reports the problem
through `on_problem`, and writes what it kept, with a note of what it had to drop, as soon
as the disk takes it again. Like `tail -F`, it follows its path: a file moved away
(logrotate's `create`), removed or truncated (`copytruncate`) by someone else is noticed by
the next write a second later at most, and writing goes on in a file at the path.
"""

from __future__ import annotations

import errno
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from .statefile import NotARegularFile, open_regular

PENDING_MAX_BYTES = 1 << 20  # newest output kept per component while the disk refuses it
RETRY_INITIAL_S = 1.0
RETRY_MAX_S = 30.0
MAX_LINE_BYTES = 16 * 1024  # a line longer than this is cut when read back
FOLLOW_EVERY_S = 1.0  # how often a write first checks that `path` still names the open file

_REASONS = {
    errno.ENOSPC: "no space left",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EIO: "I/O error",
    errno.EFBIG: "file too large",
}


def disk_problem(exc: OSError) -> str:
    """A short, stable description of why a write failed (`no space left`, ...)."""
    return _REASONS.get(exc.errno or 0) or (exc.strerror or str(exc)).lower()


ProblemCallback = Callable[[str, "str | None"], None]  # (path, problem or None when it cleared)
# DiskState.problem: (where, e.g. "log_dir" or "runtime_dir"; path; problem or None when it cleared)
DiskProblem = Callable[[str, str, "str | None"], None]


class _WriteFailed(Exception):
    def __init__(self, error: OSError, rest: bytes) -> None:
        self.error = error
        self.rest = rest


class RotatingLog:
    """A component's log file, rotated by size like logrotate's `size` + `rotate N`."""

    def __init__(self, path: Path, max_bytes: int, backups: int, on_problem: ProblemCallback | None = None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.problem: str | None = None
        self._on_problem = on_problem
        self._fd = -1
        self._size = 0
        self._pending: deque[bytes | None] = deque()  # None: output dropped here
        self._pending_bytes = 0
        self._dropped_bytes = 0
        self._line_open = False  # the file ends inside a line
        self._note_rest: bytes | None = None  # the unwritten end of a note the disk cut short
        self._noted_bytes = 0  # the dropped bytes that note counts
        self._retry_at = 0.0
        self._backoff = RETRY_INITIAL_S
        self._follow_at = time.monotonic() + FOLLOW_EVERY_S
        try:
            self._open()
        except OSError as exc:
            self._fail(exc)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A regular file only: a FIFO put at the path would hold the event loop in open()
        # until it had a reader (the rest is a problem, and the output is kept).
        self._fd, info = open_regular(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        self._size = info.st_size
        if self._size == 0:
            self._line_open = False

    def reopen(self) -> None:
        """Write to the file at `path` from now on (`kill -USR2` after logrotate moved it)."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                os.close(fd)
            except OSError:
                pass  # what the old file did not take is no reason to stop writing the new one
        try:
            self._open()
        except OSError as exc:
            self._fail(exc)

    def _follow(self) -> None:
        """Reopen if `path` no longer names the open file; take a truncated file's size."""
        self._follow_at = time.monotonic() + FOLLOW_EVERY_S
        try:
            held = os.fstat(self._fd)
            named = os.stat(self.path)
        except FileNotFoundError:
            self.reopen()
            return
        except OSError as exc:
            self._fail(exc)
            return
        if (named.st_ino, named.st_dev) != (held.st_ino, held.st_dev):
            self.reopen()
        else:
            self._size = held.st_size

    def write(self, data: bytes) -> None:
        if self.problem is None and time.monotonic() >= self._follow_at:
            self._follow()
        if self.problem is None:
            try:
                self._write(data)
                return
            except _WriteFailed as failed:
                self._fail(failed.error)
                data = failed.rest  # a short write: keep only what did not reach the file
        self._keep(data)
        if time.monotonic() >= self._retry_at:
            self.retry()

    def retry(self) -> bool:
        """Try to write what was kept; True once the log is healthy again."""
        if self.problem is None:
            return True
        try:
            if self._fd < 0:
                self._open()
            while self._pending:
                item = self._pending[0]
                if item is None:  # where output was dropped: say so, on a line of its own
                    self._write_note()
                    continue
                try:
                    self._write(item)
                except _WriteFailed as failed:
                    self._pending_bytes -= len(item) - len(failed.rest)
                    self._pending[0] = failed.rest
                    raise failed.error from None
                self._pending.popleft()
                self._pending_bytes -= len(item)
        except _WriteFailed as failed:
            self._fail(failed.error)
            return False
        except OSError as exc:
            self._fail(exc)
            return False
        self.problem = None
        self._backoff = RETRY_INITIAL_S
        if self._on_problem is not None:
            self._on_problem(str(self.path), None)
        return True

    def _write_note(self) -> None:
        """Write the note standing where output was dropped. A note the disk cut short is
        finished where it stopped, so the file never holds a fragment of one."""
        if self._note_rest is None:
            self._noted_bytes = self._dropped_bytes
            note = (
                f"[ironcliw: {self._noted_bytes} bytes of output were not kept"
                f" while the log could not be written ({self.problem})]\n"
            )
            self._note_rest = ("\n" if self._line_open else "").encode() + note.encode()
        try:
            self._write(self._note_rest)
        except _WriteFailed as failed:
            self._note_rest = failed.rest
            raise
        self._note_rest = None
        self._dropped_bytes -= self._noted_bytes
        if self._dropped_bytes == 0:  # else more was dropped meanwhile: the marker stays for a second note
            self._pending.popleft()

    def _write(self, data: bytes) -> None:
        """Write all of `data`, or raise _WriteFailed with the part that was not written."""
        try:
            if self._size + len(data) > self.max_bytes and self._size > 0:
                self._rotate()
        except OSError as exc:
            raise _WriteFailed(exc, data) from None
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except OSError as exc:  # _line_open already says whether the file ends mid-line
                raise _WriteFailed(exc, bytes(view)) from None
            self._size += written
            if written:
                self._line_open = view[written - 1] != 0x0A
            view = view[written:]

    def _keep(self, data: bytes) -> None:
        """Queue `data`; past PENDING_MAX_BYTES the oldest output goes, and a marker (None)
        at the front stands where it was, so the note lands in its place."""
        self._pending.append(data)
        self._pending_bytes += len(data)
        while self._pending_bytes > PENDING_MAX_BYTES and len(self._pending) > 2:
            if self._pending[0] is None:
                old = self._pending[1]
                del self._pending[1]
            else:
                old = self._pending.popleft()
                self._pending.appendleft(None)
            assert old is not None
            self._pending_bytes -= len(old)
            self._dropped_bytes += len(old)

    def _fail(self, exc: OSError) -> None:
        first = self.problem is None
        self.problem = disk_problem(exc)
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, RETRY_MAX_S)
        if first and self._on_problem is not None:
            self._on_problem(str(self.path), self.problem)

    def _rotate(self) -> None:
        os.close(self._fd)
        self._fd = -1
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for i in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._open()

    def close(self) -> None:
        self.retry()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def tail_lines(path: Path, count: int, block: int = 65536, max_line: int = MAX_LINE_BYTES) -> list[str]:
    """The last `count` lines of a file, read backwards in blocks.

    Time and memory are bounded by what is asked for, not by the file: at most
    `count * (max_line + 1)` bytes are read, so a giant line without a newline costs no more
    than `count` long lines; a line longer than `max_line` is cut and says so. Blocking file
    I/O: the supervisor calls this from a worker thread."""
    if count <= 0:
        return []
    budget = count * (max_line + 1) + 1
    chunks: list[bytes] = []
    newlines = 0
    try:
        fd, _ = open_regular(path, os.O_RDONLY)
        with os.fdopen(fd, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            size = end
            while end > 0 and newlines <= count and size - end < budget:
                start = max(0, end - block, size - budget)
                f.seek(start)
                chunk = f.read(end - start)
                chunks.append(chunk)
                newlines += chunk.count(b"\n")
                end = start
    except FileNotFoundError:
        return []
    except NotARegularFile:  # a FIFO there: nothing to show, and no wait for a writer
        return []
    data = b"".join(reversed(chunks))
    pieces = data.split(b"\n")
    if pieces and pieces[-1] == b"":
        pieces.pop()  # the file ends with a newline
    cut_head = end > 0  # the first piece is the end of a line that began before what was read
    lines = [_shorten(p, max_line, cut_head and i == 0) for i, p in enumerate(pieces)]
    if cut_head and newlines > count:
        lines = lines[1:]
    return lines[-count:]


def _shorten(line: bytes, max_line: int, began_earlier: bool) -> str:
    text = line.rstrip(b"\r")
    if began_earlier:
        return f"[ironcliw: a longer line, its last {min(len(text), max_line)} bytes] " + text[-max_line:].decode(
            "utf-8", "replace"
        )
    if len(text) > max_line:
        return text[:max_line].decode("utf-8", "replace") + f" [ironcliw: line cut at {max_line} of {len(text)} bytes]"
    return text.decode("utf-8", "replace")
