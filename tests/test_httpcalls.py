"""The supervisor's requests to its components, against hostile answers (no process of ours)."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator

import anyio
import pytest

from supervisor.httpcalls import MAX_ANSWER_BYTES, HttpCaller, run_exec_probe


@pytest.fixture
def endless_server() -> Iterator[tuple[int, list[int]]]:
    """Answers every request with a status line and then body bytes forever (until closed)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.1)
    sent: list[int] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.recv(65536)
                status = b"503 Service Unavailable" if sent else b"200 OK"
                conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain\r\n\r\n")
                total = 0
                try:
                    while not stop.is_set() and total < 512 << 20:
                        conn.sendall(b"x" * 65536)
                        total += 65536
                except OSError:
                    pass
                sent.append(total)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], sent
    stop.set()
    listener.close()
    thread.join(5)


def test_an_endless_answer_is_read_only_as_far_as_a_bound(endless_server: tuple[int, list[int]]) -> None:
    port, sent = endless_server

    async def scenario() -> tuple[bool, str, bool, str]:
        caller = HttpCaller()
        try:
            first = await caller.call("/health", port, "GET", timeout_s=5)
            second = await caller.call("/health", port, "GET", timeout_s=5)
        finally:
            await caller.aclose()
        return first.ok, first.detail, second.ok, second.detail

    ok, detail, ok_again, detail_again = anyio.run(scenario)
    assert ok and detail.endswith(": 200")
    assert not ok_again and ": 503 'xxx" in detail_again and len(detail_again) < 400
    # The server stopped being read: far less than its 512 MB went out (socket buffers aside).
    assert sent and sent[0] < 64 * MAX_ANSWER_BYTES


def test_a_probe_command_that_hangs_is_killed_with_its_group() -> None:
    async def scenario() -> tuple[bool, str, float]:
        started = anyio.current_time()
        result = await run_exec_probe(["sh", "-c", "sleep 61.5 & sleep 61.5"], 0.3, None, {})
        return result.ok, result.detail, anyio.current_time() - started

    ok, detail, took = anyio.run(scenario)
    assert not ok and detail.endswith("timed out after 0.3 s")
    assert took < 5
    assert _sleepers() == []  # neither sleep is left, the one in the background included


def _sleepers() -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f.read() == b"sleep\x0061.5\x00":
                        found.append(int(pid))
            except OSError:
                pass
    return found


def test_the_doors_pool_sees_a_kept_alive_connection_the_server_closed() -> None:
    """The door's pool (supervisor/http/upstream.py) answers httpcore's "is it readable" from
    the socket it kept at connect: an idle connection is not readable, and once the server
    closes it, it is, so the next request opens a new connection instead of failing."""
    from supervisor.http.upstream import connection_pool

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []

    def serve() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            accepted.append(conn)
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    server = threading.Thread(target=serve, daemon=True)
    server.start()

    async def scenario() -> tuple[list[bool], list[int]]:
        readable, statuses = [], []
        async with connection_pool() as pool:
            url = f"http://127.0.0.1:{port}/x"
            statuses.append((await pool.request("GET", url)).status)
            (connection,) = pool.connections
            stream = connection._connection._network_stream  # type: ignore[union-attr]
            readable.append(stream.get_extra_info("is_readable"))
            accepted[0].close()  # the server drops the kept-alive connection
            await anyio.sleep(0.05)
            readable.append(stream.get_extra_info("is_readable"))
            statuses.append((await pool.request("GET", url)).status)
        return readable, statuses

    try:
        readable, statuses = anyio.run(scenario)
    finally:
        listener.close()
        for conn in accepted:
            conn.close()
    server.join(5)
    assert readable == [False, True] and statuses == [200, 200] and len(accepted) == 2
