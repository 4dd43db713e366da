"""The small HTTP/1.1 server (supervisor/http/server.py) on real loopback sockets, with plain
ASGI apps: keep-alive, limits, malformed input, failures and the disconnect an SSE stream needs."""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from supervisor.errors import IroncliwError
from supervisor.http import http1, server

pytestmark = pytest.mark.timeout(30)

Client = Callable[[int], Any]


def run_with_server(app: Any, client: Client) -> Any:
    """Serve `app` on a free loopback port, run the blocking `client(port)` in a thread."""

    async def main() -> Any:
        async with anyio.create_task_group() as tg:
            _, port = await tg.start(server.serve_app, app, "127.0.0.1", 0)
            try:
                return await anyio.to_thread.run_sync(client, port)
            finally:
                tg.cancel_scope.cancel()

    return anyio.run(main)


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    message = await receive()
    body = f"{scope['method']} {scope['path']} {scope['query_string'].decode()} {len(message['body'])}".encode()
    if scope["path"] == "/boom":
        raise RuntimeError("the app failed")
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]}
    )
    await send({"type": "http.response.body", "body": body})


async def slow_echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """echo_app after 0.2 s: what the client sends meanwhile is parsed while this is served."""
    await anyio.sleep(0.2)
    await echo_app(scope, receive, send)


def exchange(sock: socket.socket, request: bytes) -> bytes:
    """Send one request, read one response with a Content-Length body."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    def client(port: int) -> list[bytes]:
        with connect(port) as s:
            return [exchange(s, f"GET /a/{i}?x={i} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()) for i in range(3)]

    replies = run_with_server(echo_app, client)
    for i, reply in enumerate(replies):
        assert reply.startswith(b"HTTP/1.1 200 ")
        assert reply.endswith(f"GET /a/{i} x={i} 0".encode())


def test_body_is_delivered_and_an_oversized_one_gets_413() -> None:
    def client(port: int) -> tuple[bytes, bytes]:
        with connect(port) as s:
            ok = exchange(s, b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        with connect(port) as s:
            size = server.MAX_BODY + 1
            s.sendall(f"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode())
            try:
                s.sendall(b"x" * size)
            except OSError:
                pass  # the server may close before reading it all
            big = s.recv(65536)
        return ok, big

    ok, big = run_with_server(echo_app, client)
    assert ok.endswith(b"POST /p  5")
    assert big.startswith(b"HTTP/1.1 413 ")


def test_a_body_declared_too_large_is_refused_before_it_is_sent() -> None:
    """curl sends `Expect: 100-continue` before a large body: a Content-Length over the limit
    gets 413 at once (no 100 Continue), not a wait for a body that would be refused anyway."""

    head = f"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: {server.MAX_BODY + 1}\r\nExpect: 100-continue\r\n\r\n"
    answer = run_with_server(echo_app, lambda port: send_then_read_all(port, head.encode()))
    assert answer.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in answer


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def send_then_read_all(port: int, data: bytes) -> bytes:
    """Send `data` in one write on a new connection; everything until the server closes it."""
    with connect(port) as s:
        s.sendall(data)
        return read_all(s)


def test_pipelined_requests_are_answered_in_order_and_heads_get_no_body() -> None:
    """Three requests in one write (the last asks to close): three answers in order, then the
    end of the connection; HEAD gets the head only."""

    requests = (
        b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
        b"HEAD /two HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /three HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
    )
    data = run_with_server(echo_app, lambda port: send_then_read_all(port, requests))
    answers = data.split(b"HTTP/1.1 200 OK\r\n")
    assert answers[0] == b"" and len(answers) == 4, data
    assert answers[1].endswith(b"\r\n\r\nGET /one  0")
    assert answers[2].endswith(b"\r\n\r\n") and b"content-length: 12" in answers[2]  # HEAD: no body
    assert answers[3].endswith(b"POST /three  3") and b"connection: close" in answers[3]


def test_a_half_closed_client_gets_its_answers_and_a_bad_request_waits_its_turn() -> None:
    """A client may stop sending after its requests (shutdown(SHUT_WR)): they are answered,
    the last says `connection: close`. A malformed request behind a good one gets its 400
    after the good one's answer, not in the middle of it."""

    def client(port: int) -> tuple[bytes, bytes]:
        with connect(port) as s:
            s.sendall(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\n\r\n")
            s.shutdown(socket.SHUT_WR)
            half = read_all(s)
        with connect(port) as s:
            s.sendall(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nNOT HTTP AT ALL\r\n\r\n")
            bad = read_all(s)
        return half, bad

    half, bad = run_with_server(slow_echo_app, client)
    one, two = half.split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert one.endswith(b"GET /one  0") and b"connection: close" not in one
    assert two.endswith(b"GET /two  0") and b"connection: close" in two
    good, _, refused = bad.partition(b"HTTP/1.1 400 ")
    assert good.startswith(b"HTTP/1.1 200 ") and good.endswith(b"GET /one  0") and refused


def test_100_continue_is_never_written_inside_an_earlier_answer() -> None:
    """A pipelined request that expects 100-continue behind one being served gets no interim
    answer (it would land in the middle of the first one's bytes); both are answered in order."""

    requests = (
        b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /two HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n"
        b"Connection: close\r\n\r\nhi"
    )
    data = run_with_server(slow_echo_app, lambda port: send_then_read_all(port, requests))
    assert b"100 Continue" not in data and data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert data.count(b"HTTP/1.1 200 OK") == 2 and data.endswith(b"POST /two  2")


def test_http_1_0_streams_end_with_the_connection_and_expect_gets_100_continue() -> None:
    async def stream_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = (await receive())["body"]
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"got " + body, "more_body": True})
        await send({"type": "http.response.body", "body": b" end"})

    def client(port: int) -> tuple[bytes, bytes, bytes]:
        with connect(port) as s:  # HTTP/1.0: no chunks, the body ends with the connection
            s.sendall(b"POST /a HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi")
            old = read_all(s)
        with connect(port) as s:  # curl's Expect: the server says go on before the body comes
            s.sendall(b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
            go_on = s.recv(65536)
            s.sendall(b"yo")
            data = b""
            while not data.endswith(b"0\r\n\r\n"):
                data += s.recv(65536)
        return old, go_on, data

    old, go_on, chunked = run_with_server(stream_app, client)
    assert old.startswith(b"HTTP/1.1 200 ") and old.endswith(b"\r\n\r\ngot hi end")
    assert b"connection: close" in old and b"transfer-encoding" not in old
    assert go_on == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert chunked.endswith(b"\r\n\r\n6\r\ngot yo\r\n4\r\n end\r\n0\r\n\r\n")


def test_a_head_too_large_gets_431_and_a_header_with_a_line_break_is_never_sent() -> None:
    async def bad_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-evil", b"a\r\nset-cookie: b")]})
        await send({"type": "http.response.body", "body": b""})

    def client(port: int) -> tuple[bytes, bytes]:
        with connect(port) as s:
            big = exchange(s, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * http1.MAX_HEAD + b"\r\n\r\n")
        with connect(port) as s:
            injected = exchange(s, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        return big, injected

    big, injected = run_with_server(bad_app, client)
    assert big.startswith(b"HTTP/1.1 431 ")
    assert injected.startswith(b"HTTP/1.1 500 ") and b"set-cookie" not in injected


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"THIS IS NOT HTTP\r\n\r\n", b"400"),
        (b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n", b"500"),
        (b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", b"400"),
        (b"GET /a HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n", b"400"),
    ],
    ids=["malformed request: 400", "app failure: 500", "Content-Length with Transfer-Encoding: 400", "two Hosts: 400"],
)
def test_a_bad_request_gets_its_error_and_the_server_keeps_serving(request_bytes: bytes, status: bytes) -> None:
    def client(port: int) -> tuple[bytes, bytes]:
        with connect(port) as s:
            failed = exchange(s, request_bytes)
        with connect(port) as s:
            good = exchange(s, b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        return failed, good

    failed, good = run_with_server(echo_app, client)
    assert failed.startswith(b"HTTP/1.1 " + status + b" ")
    assert good.startswith(b"HTTP/1.1 200 ") and good.endswith(b"GET /after  0")


def test_a_silent_client_is_closed_after_the_head_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http1, "HEAD_TIMEOUT_S", 0.3)

    def client(port: int) -> tuple[bytes, float]:
        with connect(port) as s:
            started = time.monotonic()
            s.sendall(b"GET /slow HTTP/1.1\r\nHost")  # never finishes the head
            return s.recv(100), time.monotonic() - started

    data, waited = run_with_server(echo_app, client)
    assert data == b"" and waited < 5  # closed by the server, not by our 10 s socket timeout


def test_a_streaming_app_sees_the_client_disconnect() -> None:
    seen: list[str] = []

    async def stream_app(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]], send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"data: one\n\n", "more_body": True})
        message = await receive()  # waits until the client goes away
        seen.append(message["type"])

    def client(port: int) -> bytes:
        with connect(port) as s:
            s.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while b"data: one" not in data:
                data += s.recv(65536)
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        return data

    data = run_with_server(stream_app, client)
    assert b"transfer-encoding: chunked" in data.lower()
    assert seen == ["http.disconnect"]


def test_a_client_that_does_not_read_holds_the_app_back_instead_of_filling_memory() -> None:
    """An app streaming to a client that stops reading (a stalled dashboard's SSE, say) waits
    in `send` once the socket's buffers are full: what it has sent is not piled up in the
    supervisor's memory. When the client reads again, everything arrives."""
    chunk, count = b"z" * (1 << 20), 64
    sent: list[float] = []

    async def flood_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for _ in range(count):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            sent.append(time.monotonic())
        await send({"type": "http.response.body", "body": b""})

    def client(port: int) -> tuple[int, int]:
        with connect(port) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
            s.sendall(b"GET /flood HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(1.0)  # not reading: the server's sends back up
            before = len(sent)
            data = bytearray()
            while not data.endswith(b"\r\n0\r\n\r\n"):
                data += s.recv(1 << 20)
        return before, data.count(b"z")

    before, received = run_with_server(flood_app, client)
    assert before < count // 2, before  # held back, not all 64 MB buffered
    assert received == count * len(chunk)


def test_a_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        async def main() -> None:
            await server.serve_app(echo_app, "127.0.0.1", port)

        with pytest.raises(IroncliwError, match=f"cannot serve HTTP on 127.0.0.1:{port}"):
            anyio.run(main)


def test_a_kept_alive_connection_waits_longer_than_a_new_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http1, "HEAD_TIMEOUT_S", 0.2)
    monkeypatch.setattr(http1, "KEEPALIVE_S", 5.0)

    def client(port: int) -> tuple[bytes, bytes]:
        with connect(port) as s:
            first = exchange(s, b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.6)  # longer than a new connection may idle, shorter than a kept-alive one
            second = exchange(s, b"GET /two HTTP/1.1\r\nHost: x\r\n\r\n")
        return first, second

    first, second = run_with_server(echo_app, client)
    assert first.endswith(b"GET /one  0") and second.endswith(b"GET /two  0")


# --- slowloris: the slots (supervisor/http/slots.py) ---------------------------------------------


def test_slot_decisions() -> None:
    from supervisor.http.slots import BUSY, IDLE, MIN_HEAD_BYTES_S, RATE_GRACE_S, Slot, too_slow, victim

    def slot(phase: str, since: float, received: int = 0) -> Slot:
        s = Slot(since)
        s.phase, s.received = phase, received
        return s

    now = 100.0
    slow = slot("head", now - 5, received=5)  # a byte a second
    faster = slot("head", now - 5, received=2000)
    young = slot("head", now - RATE_GRACE_S / 2)
    idle = slot(IDLE, now - 20)
    busy = slot(BUSY, now - 50)
    assert victim([busy, idle, faster, slow, young], now) is slow
    assert victim([busy, idle, young], now) is idle
    assert victim([busy, young], now) is young
    assert victim([busy], now) is None
    assert too_slow(slow, now, crowded=False) and not too_slow(faster, now, crowded=False)
    assert not too_slow(young, now, crowded=False) and not too_slow(idle, now, crowded=True)
    steady = slot("head", now - 3, received=int(3 * MIN_HEAD_BYTES_S) + 10)
    assert not too_slow(steady, now, crowded=False) and too_slow(steady, now, crowded=True)  # past the crowded timeout


def test_health_is_answered_while_100_slowloris_clients_hold_on() -> None:
    """Before: /health p50 4 s and 4 of 9 unanswered. The figure (p99) is in bench_http."""
    from bench.common import Slowloris

    def client(port: int) -> tuple[list[float], int, int]:
        times = []
        with Slowloris(port, clients=100, byte_every_s=1.0, seconds=20) as attack:
            time.sleep(2.0)  # every slot taken by now
            for _ in range(20):
                started = time.monotonic()
                with connect(port) as s:
                    reply = exchange(s, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                assert reply.startswith(b"HTTP/1.1 200 "), reply[:100]
                times.append(time.monotonic() - started)
                time.sleep(0.1)
        return times, attack.connects, attack.drops

    times, connects, drops = run_with_server(echo_app, client)
    assert len(times) == 20 and max(times) < 2.0, times  # answered, never queued behind the attack
    assert connects > 100 and drops > 0  # the attack was real: it had to reconnect
