"""The output pump (supervisor/pump.py) on a real pipe: the rate limit holds a flood back
(`block`) or drops and counts it (`drop`); nothing is lost or split in `block` mode."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import anyio
import pytest

from supervisor.logfiles import RotatingLog
from supervisor.pump import LINE_COST_BYTES, OutputStats, TokenBucket, enlarge_pipe, pump_output

pytestmark = pytest.mark.timeout(30)
MB = 1 << 20
LINE = b"z" * 99 + b"\n"


def flood(fd: int, total: int, line: bytes = LINE) -> threading.Thread:
    """A writer thread that writes `total` bytes of lines as fast as the pipe takes them, then closes."""
    block = line * (65536 // len(line))

    def run() -> None:
        sent = 0
        try:
            while sent < total:
                chunk = block[: total - sent]
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
                sent += len(chunk)
        except BrokenPipeError:  # the test stopped reading early
            pass
        finally:
            os.close(fd)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def pump(
    tmp_path: Path,
    total: int,
    *,
    rate: float,
    burst: float,
    drop: bool,
    line: bytes = LINE,
    check_at_s: float = 1.0,
    stop_after_s: float | None = None,
):
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    enlarge_pipe(read_end)
    sink = RotatingLog(tmp_path / "c.log", 1 << 40, 0)
    stats = OutputStats()
    blocks: list[bytes] = []
    seen: dict[str, float] = {}
    writer = flood(write_end, total, line)

    async def main() -> None:
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                await anyio.sleep(check_at_s)
                seen["bytes"], seen["writer_alive"] = stats.bytes, writer.is_alive()

            tg.start_soon(watch)
            bucket = TokenBucket(rate, burst, anyio.current_time())
            with anyio.move_on_after(stop_after_s if stop_after_s is not None else float("inf")):
                await pump_output(read_end, sink, blocks.append, bucket=bucket, drop=drop, stats=stats)
            if "bytes" not in seen:  # it all came through before the check
                seen["bytes"], seen["writer_alive"], seen["ended_early"] = stats.bytes, writer.is_alive(), True
            tg.cancel_scope.cancel()

    try:
        anyio.run(main)
    finally:
        os.close(read_end)
        sink.close()
    writer.join(5)
    return stats, blocks, seen, (tmp_path / "c.log").read_bytes()


def test_block_holds_a_flood_to_the_limit_and_loses_nothing(tmp_path: Path) -> None:
    total = 40_000 * len(LINE)  # 4 MB of whole lines
    stats, blocks, seen, log = pump(tmp_path, total, rate=1 * MB, burst=0.5 * MB, drop=False)
    # After 1 s: the burst, a second of rate and what one read may take, not the whole flood;
    # the writer was still blocked on its full pipe.
    assert seen["bytes"] <= 0.5 * MB + 1 * MB + 1 * MB + 64 * 1024, seen
    assert seen["writer_alive"]
    assert stats.throttled_s > 0 and stats.dropped_bytes == 0
    assert stats.bytes == total and len(log) == total  # everything, in the end
    joined = b"".join(blocks)
    assert joined == log and all(b.endswith(b"\n") for b in blocks)  # blocks of whole lines


def test_drop_keeps_the_writer_going_and_counts_what_it_dropped(tmp_path: Path) -> None:
    total = 80_000 * len(LINE)  # 8 MB of whole lines
    stats, blocks, seen, log = pump(tmp_path, total, rate=1 * MB, burst=0.5 * MB, drop=True, check_at_s=3.0)
    assert not seen["writer_alive"] and seen.get("ended_early")  # 8 MB past a 1 MB/s limit within 3 s: not held back
    assert stats.dropped_bytes > 0 and stats.bytes + stats.dropped_bytes == total
    assert len(log) >= stats.bytes and stats.bytes < total / 2
    lines = log.splitlines()
    notes = [line for line in lines if line.startswith(b"[ironcliw: ")]
    assert notes and all(b"bytes of output over the rate limit were dropped" in n for n in notes)
    # Every line is whole, a note, or the start of one whose rest was dropped (ended there).
    assert all(line == LINE[:-1] or line in notes or LINE[:-1].startswith(line) for line in lines)


def test_short_lines_count_at_least_their_line_cost(tmp_path: Path) -> None:
    # `yes`: 2-byte lines. 4 MB of them would pass a byte-only limit of 8 MB/s (1 MB burst)
    # within a second; charged 64 bytes a line, the first read alone costs 32 MB: 4 s of the limit.
    stats, _, seen, _ = pump(
        tmp_path, 4 * MB, rate=8 * MB, burst=1 * MB, drop=False, line=b"y\n", check_at_s=1.0, stop_after_s=1.2
    )
    assert LINE_COST_BYTES == 64
    assert 0 < seen["bytes"] <= 1 * MB + 64 * 1024, seen
    assert seen["writer_alive"] and stats.throttled_s > 1.0
