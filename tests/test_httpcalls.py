"""The supervisor's requests to its components, against hostile answers (no process of ours)."""

from __future__ import annotations

import contextlib
import gzip
import os
import socket
import threading
from collections.abc import Iterator

import anyio
import pytest

from supervisor.httpcalls import MAX_ANSWER_BYTES, HttpCaller, run_exec_probe
from tests.helpers import wait_until


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
    # Neither sleep is left, the one in the background included. That one is a grandchild,
    # reaped by whoever adopts it: SIGKILLed, it may still be in /proc for a moment (seen on
    # Python 3.13), but never for the minute it would sleep if the kill had missed it.
    wait_until(lambda: _sleepers() == [], timeout=5, what="no sleep left of the probe's group")


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


def test_the_doors_client_keeps_connections_alive_adds_nothing_and_survives_a_server_closing_them() -> None:
    """The door's upstream client (supervisor/http/upstream.py) on a real socket server:
    connections are kept alive and reused; once the server closes the kept ones, the next
    request opens a new one instead of failing; a request carries only the headers it was
    given (plus Host and Content-Length: no cookie an earlier answer set), a gzip answer
    comes back as gzip and a redirect as a redirect."""
    from supervisor.http.upstream import Upstreams

    gzipped = gzip.compress(b"ok" * 100)
    answer_bytes = (
        b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nSet-Cookie: session=1; Path=/\r\n"
        b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(gzipped)
    )
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    heads: list[bytes] = []

    def answer(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := conn.recv(65536):
                heads.append(data.split(b"\r\n\r\n")[0])
                conn.sendall(answer_bytes + gzipped)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                accepted.append(conn)
                threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    url = f"http://localhost:{port}/x"  # a name: aiohttp's stock jar keeps no cookie an IP address sets

    async def post(upstreams: Upstreams) -> tuple[int, bytes]:
        async with upstreams.post(url, b"{}", [("X-Mine", "1")]) as got:
            return got.status, await got.read()

    async def scenario() -> tuple[list[tuple[int, bytes]], list[int]]:
        upstreams = Upstreams(read_timeout_s=5.0)
        answers, opened = [], []
        async with anyio.create_task_group() as group:  # two at once: two connections
            for _ in range(2):
                group.start_soon(post, upstreams)
        opened.append(len(accepted))
        for _ in range(4):  # one at a time: the kept ones again
            answers.append(await post(upstreams))
        opened.append(len(accepted))
        for conn in list(accepted):
            conn.shutdown(socket.SHUT_RDWR)  # the server drops every kept-alive connection
        await anyio.sleep(0.05)
        answers.append(await post(upstreams))
        opened.append(len(accepted))
        await upstreams.aclose()
        return answers, opened

    try:
        answers, opened = anyio.run(scenario)
    finally:
        listener.close()
        for conn in accepted:
            conn.close()
    assert answers == [(302, gzipped)] * 5 and opened == [2, 2, 3] and len(heads) == 7
    names = sorted(line.split(b":")[0].lower() for line in heads[-1].split(b"\r\n")[1:])
    assert heads[-1].startswith(b"POST /x HTTP/1.1") and names == [b"content-length", b"host", b"x-mine"]
