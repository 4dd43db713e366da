"""Copy a component's output pipe to its log, in large blocks of whole lines, within a rate limit.

A component that floods its output (`yes`, a debug log left on) must not cost the supervisor
a core: the pipe is read in blocks of up to PIPE_BYTES (the pipe is enlarged to that on Linux),
never split per byte or per line here, and each block is handed on whole (`on_block`), so the
log write, the echo and the ready check cost a few C-level passes per block.

Beyond `limit` (a token bucket: a rate and a burst, journald's RateLimitIntervalSec and
RateLimitBurst; a line counts at least LINE_COST_BYTES), the pump either stops reading for
a while, so the component's next write
blocks on its full pipe (`block`, the default: nothing is lost and a flood only slows the
flooder), or keeps reading at a bounded pace and drops what is over the limit, counting it
(`drop`: for a component whose work must never wait on its logging).
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import time
from collections.abc import Callable

import anyio

from .logfiles import RotatingLog

PIPE_BYTES = 1 << 20
MAX_LINE_BYTES = 64 * 1024  # a runaway line without a newline is handed on in pieces of this
DROP_PACE_S = 0.05  # in `drop` mode over the limit: one read per this long (the writer waits at most this)
SHORT_READ_BYTES = 64 * 1024
# Each line costs at least this much of the limit: the work per line (echo prefix, a log
# event for subscribers) dominates for short ones, and `yes` writes 2-byte lines (journald
# limits messages, not bytes, for the same reason).
LINE_COST_BYTES = 64
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031 if sys.platform.startswith("linux") else None)


def enlarge_pipe(fd: int) -> None:
    """Fewer, larger reads for a chatty component (Linux; the default pipe holds 64 KiB)."""
    if _F_SETPIPE_SZ is not None:
        try:
            fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            pass  # over /proc/sys/fs/pipe-max-size: keep the default


class TokenBucket:
    """`rate` bytes a second on average, bursts up to `burst` bytes."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = now

    def level(self, now: float) -> float:
        """The bytes available now (refilled, nothing spent)."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        return self.tokens

    def take(self, n: int, now: float) -> float:
        """Spend `n` bytes; returns how long to wait before the bucket is positive again."""
        self.tokens = self.level(now) - n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class OutputStats:
    """What the limit did to one run's output (shown in `report`)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.dropped_bytes = 0
        self.throttled_s = 0.0
        self.throttling = False


async def pump_output(
    fd: int,
    sink: RotatingLog,
    on_block: Callable[[bytes], None],
    *,
    bucket: TokenBucket | None,
    drop: bool,
    stats: OutputStats,
    on_throttle: Callable[[bool], None] | None = None,
) -> None:
    """Copy `fd` to `sink` until EOF; `on_block` gets each block of whole lines."""
    pending = b""
    dense = False  # the last block was mostly line ends (`yes`): read less at a time
    while data := await _read(fd, SHORT_READ_BYTES if dense else PIPE_BYTES):
        wait = 0.0
        if bucket is not None:
            wait, dense = _charge(bucket, data, drop and stats.throttling)
        if wait and drop:
            if pending:  # the line in progress ends here, in the log too; what follows is dropped
                sink.write(b"\n")
                on_block(pending + b"\n")
                pending = b""
            stats.dropped_bytes += len(data)
            _set_throttling(stats, True, on_throttle)
            await anyio.sleep(DROP_PACE_S)
            continue
        if stats.throttling and drop:
            _note_dropped(sink, on_block, stats)
            _set_throttling(stats, False, on_throttle)
        stats.bytes += len(data)
        sink.write(data)
        pending = _hand_on(pending + data, on_block)
        if wait:  # over the limit: stop reading, so the writer blocks on its full pipe
            _set_throttling(stats, True, on_throttle)
            stats.throttled_s += wait
            await anyio.sleep(wait)
        elif stats.throttling:
            _set_throttling(stats, False, on_throttle)
    if pending:
        on_block(pending + b"\n")
    if stats.throttling and drop:  # it ended while dropping: say so all the same
        _note_dropped(sink, on_block, stats)


async def _read(fd: int, size: int) -> bytes:
    """The next chunk of output, b"" at the end (EOF, or the descriptor closed under us)."""
    while True:
        await anyio.wait_readable(fd)
        try:
            return os.read(fd, size)
        except BlockingIOError:
            continue
        except OSError as exc:
            if exc.errno in (errno.EBADF, errno.EIO):
                return b""
            raise


def _charge(bucket: TokenBucket, data: bytes, dropping: bool) -> tuple[float, bool]:
    """(seconds to wait before reading on, whether the block was dense in lines)."""
    now = time.monotonic()
    if dropping and bucket.level(now) < bucket.burst / 2:
        return DROP_PACE_S, False  # still dropping: resume only with room for a burst, not per read
    cost = max(len(data), data.count(b"\n") * LINE_COST_BYTES)
    # A dense block costs a pass per line downstream: the next read is smaller, to pause the loop less.
    return bucket.take(cost, now), cost > 2 * len(data)


def _hand_on(pending: bytes, on_block: Callable[[bytes], None]) -> bytes:
    """Give `on_block` the whole lines of `pending` (a runaway line in pieces); return the rest."""
    cut = pending.rfind(b"\n") + 1
    if cut == 0 and len(pending) >= MAX_LINE_BYTES:
        cut = len(pending)
    if not cut:
        return pending
    block = pending[:cut]
    on_block(block if block.endswith(b"\n") else block + b"\n")
    return pending[cut:]


def _note_dropped(sink: RotatingLog, on_block: Callable[[bytes], None], stats: OutputStats) -> None:
    note = f"[ironcliw: {stats.dropped_bytes} bytes of output over the rate limit were dropped so far]\n".encode()
    sink.write(note)
    on_block(note)


def _set_throttling(stats: OutputStats, on: bool, callback: Callable[[bool], None] | None) -> None:
    if stats.throttling is not on:
        stats.throttling = on
        if callback is not None:
            callback(on)


def split_lines(block: bytes) -> list[str]:
    """A block of whole lines as text (only for those who need lines: subscribers, readiness)."""
    return [line.rstrip("\r") for line in block.decode("utf-8", "replace").split("\n")[:-1]]
