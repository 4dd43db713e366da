"""One HTTP/1.1 connection of the API's server: an asyncio protocol parsing with httptools
(llhttp, C; the parser Uvicorn runs with) and running the ASGI app for each request.

Why a protocol and not anyio streams with h11 (what this server was before): the door relays
every request of every client through here, and per request h11 (pure Python) and anyio's
stream layers cost more than the door's own work; bench/bench_door.py has the figures. The
protocol's callbacks run in the event loop without a task or a wake-up of their own; a task
exists only while the app serves a request.

What it keeps from before, and where:
- Limits: request heads up to MAX_HEAD bytes (431), bodies up to `max_body` (413; at once
  when the Content-Length says more, so a client waiting for 100-continue is told), heads
  that two parsers could read differently refused (400: Content-Length with
  Transfer-Encoding, which llhttp refuses itself; more than one Host).
- Time: a head (and its body) has HEAD_TIMEOUT_S from its first byte, a kept-alive
  connection may idle KEEPALIVE_S; the slots (slots.py) close slow heads and pick who makes
  room when every slot is taken.
- Answers: one write for an answer's head and its first body part; a body of unknown length
  is sent chunked (HTTP/1.1) or ends with the connection (HTTP/1.0); HEAD gets no body.
- The disconnect a streaming app (SSE) waits for: `receive()` after the body.
- Pipelined requests are answered in order; reading pauses while one waits.
"""

from __future__ import annotations

import asyncio
import collections
import http
import socket
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import httptools
import structlog

from .slots import BUSY, HEAD, HEAD_TIMEOUT_S, IDLE, Slot, Slots

log = structlog.get_logger("ironcliw.http")

MAX_HEAD = 16 * 1024
KEEPALIVE_S = 30.0
BUSY_REPLY = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nretry-after: 1\r\nconnection: close\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
CLIENT_GONE = "ironcliw.client_gone"  # scope["extensions"][CLIENT_GONE](callback): GoneSignal.watch
REASONS = {s.value: s.phrase.encode() for s in http.HTTPStatus}

ASGIApp = Callable[
    [dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]], Awaitable[None]]],
    Awaitable[None],
]


class Closed(Exception):
    """The client went away: what the app sends goes nowhere."""


class _Refused(Exception):
    """A request this server will not take: answered with `status`, then the connection closes."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


class Request:
    __slots__ = ("method", "target", "version", "headers", "body", "size", "keep_alive")

    def __init__(self) -> None:
        self.method = "GET"
        self.target = b""
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.size = 0  # the head's bytes, then the body's
        self.keep_alive = True


class Http1Connection(asyncio.Protocol):
    def __init__(self, app: ASGIApp, slots: Slots, max_body: int, live: set[Http1Connection]) -> None:
        self.app, self.slots, self.max_body, self.live = app, slots, max_body, live
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.request: Request | None = None  # the one being parsed
        self.waiting: collections.deque[Request] = collections.deque()  # parsed, not yet served
        self.task: asyncio.Task[None] | None = None  # serving `waiting`, one at a time
        self.closed = False
        self.gone = GoneSignal()  # the client went away (or half-closed: HTTP cannot tell)
        self.writable = asyncio.Event()
        self.writable.set()
        self.deadline = Deadline(self.loop, self.close)  # for a head, or an idle keep-alive
        self.slot: Slot | None = None
        self.refusal: _Refused | None = None  # a bad request behind ones still being answered
        self.ending = False  # no request after those parsed: close once they are answered
        self.transport: asyncio.Transport | None = None
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None

    # --- asyncio's calls ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.slot = self.slots.admit(self.loop.time(), self.close)
        if self.slot is None:  # every slot is serving a request: no one to evict
            transport.write(BUSY_REPLY)
            transport.close()
            return
        self.live.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client = address(transport.get_extra_info("peername"))
        self.server = address(transport.get_extra_info("sockname"))
        self.deadline.move(HEAD_TIMEOUT_S)

    def data_received(self, data: bytes) -> None:
        slot = self.slot
        if self.closed or slot is None:
            return
        if slot.phase == IDLE:  # a kept-alive connection starts its next request
            self.slots.heading(slot, self.loop.time())
            self.deadline.move(HEAD_TIMEOUT_S)
        if slot.phase == HEAD:
            slot.received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # no protocol switches here: served as a plain request
            self._last_answer()
        except httptools.HttpParserCallbackError as exc:
            refused = exc.__context__
            if not isinstance(refused, _Refused):
                log.error("http_connection_failed", error=f"{type(refused).__name__}: {refused}")
                refused = _Refused(500, "internal error")
            self._refuse_in_turn(refused)
        except httptools.HttpParserError as exc:
            self._refuse_in_turn(_Refused(400, str(exc) or "malformed request"))

    def eof_received(self) -> bool | None:
        """The client is done sending (or gone): a streaming app sees the disconnect; requests
        it sent before are still answered (a half-close after the request is legal), then
        the connection closes."""
        self.gone.set()
        if self.task is None and not self.waiting:
            return None  # nothing to answer: close
        self._last_answer()
        return True  # keep the sending side open for the answers

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.gone.set()
        self.writable.set()
        self.deadline.cancel()
        if self.slot is not None:
            self.slots.release(self.slot)
        self.live.discard(self)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    # --- httptools' calls -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.request = Request()

    def on_url(self, url: bytes) -> None:
        self._head_bytes(len(url)).target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes(len(name) + len(value) + 4).headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        request = self._head_bytes(0)
        request.method = self.parser.get_method().decode("ascii")
        request.version = self.parser.get_http_version()
        request.keep_alive = request.version == "1.1" and self.parser.should_keep_alive()  # 1.0: one request
        request.size = 0
        names = [name for name, _ in request.headers]
        if names.count(b"host") > 1:  # the guard must judge the Host the app sees
            raise _Refused(400, "more than one Host header")
        length = next((v for k, v in request.headers if k == b"content-length"), b"0")
        if length.isdigit() and int(length) > self.max_body:  # said in advance: refused before it comes
            raise _Refused(413, "request body too large")
        if (b"expect", b"100-continue") in request.headers and self.task is None and not self.waiting:
            # Only when no answer is due before this one's (pipelined, it would land inside
            # that answer); a client that gets no 100 sends its body after a short wait anyway.
            self._write_now(CONTINUE)

    def on_body(self, body: bytes) -> None:
        request = self._current()
        request.size += len(body)
        if request.size > self.max_body:
            raise _Refused(413, "request body too large")
        request.body.append(body)

    def on_message_complete(self) -> None:
        request, self.request = self._current(), None
        if self.slot is not None:
            self.slot.phase = BUSY
        self.deadline.move(None)
        self.waiting.append(request)
        if len(self.waiting) > 1 and self.transport is not None:
            self.transport.pause_reading()  # one answered at a time; the next waits in the socket
        if self.task is None:
            self.task = self.loop.create_task(self._serve_waiting())

    def _current(self) -> Request:
        if self.request is None:
            raise _Refused(400, "malformed request")
        return self.request

    def _head_bytes(self, count: int) -> Request:
        request = self._current()
        request.size += count
        if request.size > MAX_HEAD:
            raise _Refused(431, "request head too large")
        return request

    # --- serving --------------------------------------------------------------------------

    async def _serve_waiting(self) -> None:
        keep = True
        try:
            while keep and self.waiting and not self.closed:
                request = self.waiting.popleft()
                if self.transport is not None and self.refusal is None:
                    self.transport.resume_reading()
                keep = await self._run_app(request)
                if keep:
                    self._between_requests()
            if self.refusal is not None and not self.closed:  # a bad request after those answered
                self._refuse(self.refusal)
            elif not keep or self.ending:
                self.close()
        finally:
            self.task = None

    def _refuse_in_turn(self, refused: _Refused) -> None:
        """Refuse now, or, while earlier requests are being answered, after them (in order)."""
        if self.task is None:
            self._refuse(refused)
            return
        self.refusal = refused
        if self.transport is not None:
            self.transport.pause_reading()

    def _between_requests(self) -> None:
        slot = self.slot
        if slot is None or self.closed or self.waiting:
            return
        if self.request is not None:  # the next head has begun already
            self.slots.heading(slot, self.loop.time())
            self.deadline.move(HEAD_TIMEOUT_S)
        else:
            slot.phase, slot.since = IDLE, self.loop.time()
            self.deadline.move(KEEPALIVE_S)

    async def _run_app(self, request: Request) -> bool:
        """Serve one request; whether the connection may carry another."""
        exchange = Exchange(self, request)
        try:
            await self.app(scope(request, self.client, self.server, self.gone), exchange.receive, exchange.send)
        except Closed:
            return False
        except Exception as exc:
            log.error("http_app_failed", target=request.target.decode("latin-1"), error=f"{type(exc).__name__}: {exc}")
            if not exchange.started:
                self._refuse(_Refused(500, "internal error"))
            return False
        if not exchange.finished:
            if not exchange.started:
                self._refuse(_Refused(500, "the app sent no answer"))
            return False
        return request.keep_alive and exchange.keep_alive

    # --- writing and closing --------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise Closed()
        self.transport.write(data)
        if not self.writable.is_set():
            await self.writable.wait()
            if self.closed:
                raise Closed()

    def _write_now(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def _refuse(self, refused: _Refused) -> None:
        """Answer a request that will not be served, and close."""
        text = str(refused).encode("latin-1", "replace")
        head = b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
        self._write_now(head % (refused.status, REASONS.get(refused.status, b""), len(text)) + text)
        self.close()

    def _last_answer(self) -> None:
        """The requests parsed so far are answered, and then the connection closes."""
        self.ending = True

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        """At shutdown: drop the connection and stop serving it."""
        if self.transport is not None:
            self.transport.abort()
        if self.task is not None:
            self.task.cancel()


class GoneSignal(asyncio.Event):
    """Set when the client goes away: an Event for those who wait on it, and callbacks for
    those busy with something else (the door cancels its relay: the model server stops
    generating for nobody, as behind nginx, which also takes a client's EOF for an abort)."""

    def __init__(self) -> None:
        super().__init__()
        self.callbacks: list[Callable[[], None]] = []

    def set(self) -> None:
        if not self.is_set():
            super().set()
            callbacks, self.callbacks = self.callbacks, []
            for callback in callbacks:
                callback()

    def watch(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` when the client goes (now, if it has); returns the way to stop watching."""
        if self.is_set():
            callback()
        else:
            self.callbacks.append(callback)
        return lambda: self.callbacks.remove(callback) if callback in self.callbacks else None


class Deadline:
    """Calls `expire` once the deadline passes, unless it moved away or was cleared meanwhile.

    Moving it leaves the timer as it is (a request moves it twice, and a timer's cancel and
    re-creation cost more than the rest of the bookkeeping): a timer that fires early is set
    again for the deadline."""

    def __init__(self, loop: asyncio.AbstractEventLoop, expire: Callable[[], None]) -> None:
        self.loop, self.expire = loop, expire
        self.at: float | None = None
        self.timer: asyncio.TimerHandle | None = None

    def move(self, seconds: float | None) -> None:
        self.at = None if seconds is None else self.loop.time() + seconds
        if self.at is not None and (self.timer is None or self.timer.when() > self.at):
            if self.timer is not None:
                self.timer.cancel()
            self.timer = self.loop.call_at(self.at, self._fire)

    def cancel(self) -> None:
        """For good (the connection is gone): no timer left to wake the loop."""
        self.at = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _fire(self) -> None:
        self.timer = None
        if self.at is None:
            return
        if self.loop.time() >= self.at:
            self.at = None
            self.expire()
        else:
            self.timer = self.loop.call_at(self.at, self._fire)


class Exchange:
    """One request's ASGI `receive` and `send`."""

    def __init__(self, conn: Http1Connection, request: Request) -> None:
        self.conn, self.request = conn, request
        self.body_given = self.started = self.finished = self.chunked = False
        self.keep_alive = request.keep_alive
        self.no_body = request.method == "HEAD"
        self.length: int | None = None  # the app's Content-Length
        self.sent = 0
        self.pending: list[bytes] = []  # the head waits for the first body part: one write, not two

    async def receive(self) -> dict[str, Any]:
        # The body first; after it, the only message left is the disconnect, which a
        # streaming app (SSE) waits for. Cancelling the wait loses nothing.
        if not self.body_given:
            self.body_given = True
            return {"type": "http.request", "body": b"".join(self.request.body), "more_body": False}
        await self.conn.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start" and not self.started:
            self.pending.append(self._head(message["status"], message.get("headers", ())))
            self.started = True
            return
        if kind != "http.response.body" or not self.started or self.finished:
            raise RuntimeError(f"ASGI message {kind!r} out of order")
        data = message.get("body", b"")
        if data and not self.no_body:
            self.sent += len(data)
            self.pending.append(b"%x\r\n%s\r\n" % (len(data), data) if self.chunked else data)
        if not message.get("more_body", False):
            self.finished = True
            if self.chunked:
                self.pending.append(b"0\r\n\r\n")
            if self.length is not None and not self.no_body and self.sent != self.length:
                self.keep_alive = False  # the framing is broken: the next request cannot be found
        if self.pending:
            out = b"".join(self.pending)
            self.pending.clear()
            await self.conn.write(out)

    def _head(self, status: int, headers: Any) -> bytes:
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b""))]
        said_close = False
        for name, value in headers:
            if b"\n" in name or b"\r" in name or b"\n" in value or b"\r" in value:
                raise ValueError(f"header {name!r} has a line break")
            low = name.lower()
            if low == b"content-length":
                self.length = int(value)
            elif low == b"connection" and b"close" in value.lower():
                self.keep_alive, said_close = False, True
            elif low == b"transfer-encoding":
                continue  # the framing is this server's
            lines.append(b"%s: %s\r\n" % (name, value))
        if status < 200 or status in (204, 304):
            self.no_body = True
        elif self.length is None and not self.no_body:
            if self.request.version == "1.1":
                self.chunked = True
                lines.append(b"transfer-encoding: chunked\r\n")
            else:
                self.keep_alive = False  # HTTP/1.0: the body ends with the connection
        if self.conn.ending and not self.conn.waiting:
            self.keep_alive = False  # the last answer: say so
        if not self.keep_alive and not said_close:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)


def address(addr: Any) -> tuple[str, int] | None:
    return (str(addr[0]), int(addr[1])) if isinstance(addr, tuple) and len(addr) >= 2 else None


def scope(
    request: Request, client: tuple[str, int] | None, server: tuple[str, int] | None, gone: GoneSignal
) -> dict[str, Any]:
    raw_path, _, query = request.target.partition(b"?")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": request.version,
        "method": request.method,
        "scheme": "http",
        "path": unquote(raw_path.decode("ascii", "replace")),
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": request.headers,
        "client": client,
        "server": server,
        "extensions": {CLIENT_GONE: gone.watch},
    }
