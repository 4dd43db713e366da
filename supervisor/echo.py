"""`up`'s own stdout and stderr, written without ever blocking the supervisor.

`up` echoes every component's output and its own log. If whoever reads that (a terminal
scrolled back, a pipe into `less`, `| head -n 3`) is slow or gone, a blocking write would
stop the event loop, and with it sampling and enforcement; EPIPE would end the supervisor.
Like journald and supervisord, the supervisor never waits on its own output:

- the descriptor is switched to non-blocking (and back at exit); what the reader has not
  taken yet waits in a bounded buffer that one drain task writes out when the descriptor is
  writable again;
- while the buffer is full, whole blocks of lines are dropped and counted, and the count is
  written as soon as the reader catches up;
- on EPIPE (or a closed descriptor) echoing stops for good and supervision goes on; the
  components' log files still get everything.
"""

from __future__ import annotations

import errno
import os

import anyio

BUFFER_BYTES = 1 << 20
RETRY_S = 1.0
_GONE = (errno.EPIPE, errno.EBADF, errno.ECONNRESET, errno.EINVAL)


class Echo:
    """One output descriptor (1 or 2) of `up`. `write` never blocks; run `drain()` as a task."""

    def __init__(self, fd: int, buffer_bytes: int = BUFFER_BYTES) -> None:
        self.fd = fd
        self.buffer_bytes = buffer_bytes
        self.closed = False
        self.dropped_lines = 0
        self._buffer = bytearray()
        self._waiting: anyio.Event | None = None  # made by drain(), inside the event loop
        try:
            self._was_blocking = os.get_blocking(fd)
            os.set_blocking(fd, False)
        except OSError:
            self._was_blocking = True
            self.closed = True

    def write(self, data: bytes) -> None:
        """Queue whole lines; write them now if the reader keeps up, else drop and count them."""
        if self.closed or not data:
            return
        if self._buffer:  # still behind: keep order, and bound what waits
            if len(self._buffer) + len(data) > self.buffer_bytes:
                self.dropped_lines += data.count(b"\n")
            else:
                self._buffer += data
            return
        written = self._try_write(data)
        if written < len(data) and not self.closed:
            self._buffer += data[written:]
            if self._waiting is not None:
                self._waiting.set()

    def _try_write(self, data: bytes | bytearray) -> int:
        try:
            return os.write(self.fd, data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            if exc.errno in _GONE:
                self.closed = True
                self._buffer.clear()
            # ENOSPC, EIO (a full disk, a hung-up terminal): this part is lost, later writes try again
            self.dropped_lines += data.count(b"\n")
            return len(data)

    async def drain(self) -> None:
        """Write out what waits whenever the descriptor is writable; runs for the life of `up`."""
        while not self.closed:
            if not self._buffer:
                self._waiting = anyio.Event()
                await self._waiting.wait()
                continue
            try:
                await anyio.wait_writable(self.fd)
            except OSError:  # a regular file cannot be polled (a write to it never waits): try again later
                await anyio.sleep(RETRY_S)
            del self._buffer[: self._try_write(self._buffer)]
            if not self._buffer and self.dropped_lines and not self.closed:
                note = (
                    f"[ironcliw: {self.dropped_lines} lines of output were dropped while the reader was slow;"
                    " the log files have them]\n"
                )
                self.dropped_lines = 0
                self.write(note.encode())

    def close(self) -> None:
        """At exit: one last try without waiting, then the descriptor's mode as it was."""
        if self._buffer and not self.closed:
            del self._buffer[: self._try_write(self._buffer)]
        self.closed = True
        try:
            os.set_blocking(self.fd, self._was_blocking)
        except OSError:
            pass


class LineWriter:
    """A text stream for structlog (print() writes a message, then its newline, separately)
    that hands the echo whole lines only, so a dropped block is never half a line."""

    def __init__(self, echo: Echo) -> None:
        self.echo = echo
        self._partial = ""

    def write(self, text: str) -> int:
        text = self._partial + text
        cut = text.rfind("\n") + 1
        self._partial = text[cut:]
        if cut:
            self.echo.write(text[:cut].encode("utf-8", "replace"))
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        try:
            return os.isatty(self.echo.fd)
        except OSError:
            return False


def prefixed(prefix: bytes, block: bytes) -> bytes:
    """Each line of a block of whole lines behind `prefix` (one C-level pass, not a loop)."""
    return prefix + block[:-1].replace(b"\n", b"\n" + prefix) + b"\n"
