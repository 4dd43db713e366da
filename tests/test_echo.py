"""`up`'s own output (supervisor/echo.py) on real pipes: it never blocks, drops and counts
what a slow reader cannot take, says so when the reader catches up, and stops on EPIPE."""

from __future__ import annotations

import os

import anyio
import pytest

from supervisor.echo import Echo, LineWriter, prefixed

pytestmark = pytest.mark.timeout(30)
LINE = b"y" * 99 + b"\n"


def test_a_full_pipe_never_blocks_drops_whole_lines_and_reports_them_later() -> None:
    read_end, write_end = os.pipe()
    echo = Echo(write_end, buffer_bytes=64 * 1024)
    received = bytearray()

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(echo.drain)
            for _ in range(10_000):  # 1 MB into a 64 KiB pipe that nobody reads yet: must not block
                echo.write(LINE)
            assert echo.dropped_lines > 0
            dropped = echo.dropped_lines
            os.set_blocking(read_end, False)
            with anyio.fail_after(10):
                while b"lines of output were dropped" not in received:
                    await anyio.wait_readable(read_end)
                    received.extend(os.read(read_end, 1 << 20))
            assert f"[ironcliw: {dropped} lines of output were dropped".encode() in received
            tg.cancel_scope.cancel()

    try:
        anyio.run(main)
    finally:
        echo.close()
        os.close(read_end)
        os.close(write_end)
    kept = bytes(received).split(b"\n[ironcliw")[0] + b"\n"
    assert kept.count(b"\n") + dropped_count(received) == 10_000
    assert set(kept.split(b"\n")[:-1]) == {LINE[:-1]}  # only whole lines, none cut


def dropped_count(data: bytes | bytearray) -> int:
    return int(bytes(data).split(b"[ironcliw: ")[1].split(b" ")[0])


def test_epipe_stops_the_echo_and_nothing_else() -> None:
    read_end, write_end = os.pipe()
    echo = Echo(write_end)
    os.close(read_end)
    echo.write(LINE)  # EPIPE (Python ignores SIGPIPE): no exception
    assert echo.closed
    echo.write(LINE)
    echo.close()
    assert os.get_blocking(write_end)  # the descriptor's mode is given back
    os.close(write_end)


def test_structlog_lines_reach_the_echo_whole() -> None:
    read_end, write_end = os.pipe()
    echo = Echo(write_end)
    writer = LineWriter(echo)
    writer.write('{"event": "a"')  # print() writes the message, then its newline
    writer.write("\n")
    writer.write('{"event": "b"}\n{"event": ')
    echo.close()
    os.set_blocking(read_end, False)
    assert os.read(read_end, 1000) == b'{"event": "a"\n{"event": "b"}\n'
    os.close(read_end)
    os.close(write_end)


def test_prefixed_puts_the_name_before_every_line() -> None:
    assert prefixed(b"nlp | ", b"a\nb\n\nc\n") == b"nlp | a\nnlp | b\nnlp | \nnlp | c\n"
