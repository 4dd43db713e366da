"""The supervisor's requests to its components, against hostile answers (no process of ours)."""

from __future__ import annotations

import contextlib
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


SLEEP = f"61.{os.getpid()}"  # this run's own sleepers: another test run may be going on the machine


def test_a_probe_command_that_hangs_is_killed_with_its_group() -> None:
    async def scenario() -> tuple[bool, str, float]:
        started = anyio.current_time()
        result = await run_exec_probe(["sh", "-c", f"sleep {SLEEP} & sleep {SLEEP}"], 0.3, None, {})
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
                    if f.read() == f"sleep\x00{SLEEP}\x00".encode():
                        found.append(int(pid))
            except OSError:
                pass
    return found


def test_the_doors_pool_keeps_connections_alive_and_sees_one_the_server_closed() -> None:
    """The door's pool (supervisor/http/upstream.py): connections are kept alive and reused,
    one request on each at a time; an idle connection polls as not readable and, once the
    server closes it, as readable, so the next request opens a new one instead of failing."""
    from supervisor.http.upstream import UpstreamPool

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []

    def answer(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                accepted.append(conn)
                threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    url = f"http://127.0.0.1:{port}/x".encode()

    async def get(pool: UpstreamPool) -> int:
        async with pool.stream("GET", url) as got:
            await got.aread()
            return got.status

    async def scenario() -> tuple[list[int], list[int], list[bool]]:
        pool = UpstreamPool()
        statuses, opened, readable = [], [], []
        async with anyio.create_task_group() as group:  # two at once: two connections
            for _ in range(2):
                group.start_soon(get, pool)
        opened.append(len(accepted))
        for _ in range(4):  # one at a time: the kept ones again
            statuses.append(await get(pool))
        opened.append(len(accepted))
        (idle,) = [p for p in pool._idle.values() if p]
        stream = idle[-1].connections[0]._connection._network_stream  # type: ignore[union-attr]
        readable.append(stream.get_extra_info("is_readable"))
        for conn in list(accepted):
            conn.shutdown(socket.SHUT_RDWR)  # the server drops every kept-alive connection
        await anyio.sleep(0.05)
        readable.append(stream.get_extra_info("is_readable"))
        pool._sweep_at = 0.0  # the next request first closes what the server closed
        statuses.append(await get(pool))
        opened.append(len(accepted))
        kept = [p for idle in pool._idle.values() for p in idle]
        readable.append(len(kept) == 1 and not kept[0].connections[0].has_expired())
        await pool.aclose()
        return statuses, opened, readable

    try:
        statuses, opened, readable = anyio.run(scenario)
    finally:
        listener.close()
        for conn in accepted:
            conn.close()
    assert statuses == [200] * 5 and opened == [2, 2, 3] and readable == [False, True, True]
