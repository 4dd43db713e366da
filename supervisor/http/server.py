"""A small HTTP/1.1 server for the ASGI app: anyio sockets and h11, in the supervisor's task group.

Why not Uvicorn: its main loop wakes every 100 ms even when no request comes (an idle
supervisor otherwise wakes once every 2 s), and it imports click, multiprocessing and logging.config
that a loopback API never uses (about 2.5 MB of the supervisor's RSS). h11 is the HTTP/1.1
state machine Uvicorn itself runs on when httptools is absent; what is left here is the ASGI
glue: keep-alive, bounded request heads and bodies, streamed responses (SSE) and the
disconnect a streaming endpoint waits for. Nothing here wakes unless a client sends bytes.

Limits (a loopback API for one user's tools, not a public server): MAX_CONNECTIONS at once,
a new connection taking the slot of the slowest partial request when all are taken, request
heads at a minimum byte rate and within a timeout that shortens when the slots run out
(slowloris; see slots.py), bodies up to MAX_BODY bytes (413 beyond), idle keep-alive
connections closed after KEEPALIVE_S.
"""

from __future__ import annotations

import importlib.util
import socket
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any
from urllib.parse import unquote

import anyio
import anyio.abc
import anyio.streams.stapled
import h11
import structlog

from ..core import Supervisor
from ..errors import IroncliwError
from .slots import BUSY, HEAD_TIMEOUT_S, IDLE, MAX_CONNECTIONS, Slot, Slots
from .token import create_token
from .upstream import preload

log = structlog.get_logger("ironcliw.http")

MAX_HEAD = 16 * 1024
MAX_BODY = 1 << 20
KEEPALIVE_S = 30.0
READ_CHUNK = 65536
BUSY_REPLY = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nretry-after: 1\r\nconnection: close\r\n\r\n"

ASGIApp = Callable[
    [dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]], Awaitable[None]]],
    Awaitable[None],
]


class _Closed(Exception):
    """The client went away or broke the protocol: drop the connection."""


class _Connection:
    def __init__(
        self, app: ASGIApp, stream: anyio.abc.SocketStream, slot: Slot, slots: Slots, max_body: int = MAX_BODY
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.stream = stream
        self.slot = slot
        self.slots = slots
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.server = _address(stream.extra(anyio.abc.SocketAttribute.local_address))
        self.client = _address(stream.extra(anyio.abc.SocketAttribute.remote_address))

    async def serve(self) -> None:
        first = True
        try:
            while True:
                # The first request may take HEAD_TIMEOUT_S to arrive; a kept-alive one KEEPALIVE_S.
                request = body = None
                with anyio.move_on_after(KEEPALIVE_S if not first else HEAD_TIMEOUT_S) as deadline:
                    request = await self._next_event()
                    if isinstance(request, h11.Request):
                        if (refusal := _ambiguous_head(request)) is not None:
                            await self._reply_plain(400, refusal)
                            return
                        # Once the head is in, the body has HEAD_TIMEOUT_S at most.
                        deadline.deadline = min(deadline.deadline, anyio.current_time() + HEAD_TIMEOUT_S)
                        body = await self._read_body()
                        self.slot.phase = BUSY
                if not isinstance(request, h11.Request) or deadline.cancelled_caught:
                    return  # a timeout, a close, or the end of the stream
                if body is None:
                    await self._reply_plain(413, b"request body too large")
                    return
                await self._run_app(request, body)
                if self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
                    return
                self.h11.start_next_cycle()
                self.slot.phase, self.slot.since = IDLE, anyio.current_time()
                first = False
        except h11.RemoteProtocolError as exc:
            if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                await self._reply_plain(exc.error_status_hint, str(exc).encode())
        except (_Closed, TimeoutError, OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        finally:
            with anyio.CancelScope(shield=True):  # also when the slot was taken from us
                await self.stream.aclose()

    async def _next_event(self) -> Any:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await self.stream.receive(READ_CHUNK)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                data = b""
            slot = self.slot
            if slot.phase == IDLE:  # a kept-alive connection starts its next request
                self.slots.heading(slot, anyio.current_time())
            slot.received += len(data)
            self.h11.receive_data(data)

    async def _read_body(self) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > self.max_body:
                    return None
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            else:
                raise _Closed()

    async def _run_app(self, request: h11.Request, body: bytes) -> None:
        scope = asgi_scope(request, self.client, self.server)
        exchange = _Exchange(self, body, head=request.method == b"HEAD")
        try:
            await self.app(scope, exchange.receive, exchange.send)
            return
        except Exception as exc:
            failure = exc
        if not isinstance(failure, (_Closed, OSError, anyio.BrokenResourceError)):
            log.error("http_app_failed", path=scope["path"], error=f"{type(failure).__name__}: {failure}")
            if not exchange.started:
                await self._reply_plain(500, b"internal error")
        raise _Closed()

    async def _write(self, data: bytes) -> None:
        try:
            await self.stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            raise _Closed() from None

    async def _reply_plain(self, status: int, text: bytes) -> None:
        headers = [
            (b"content-type", b"text/plain"),
            (b"content-length", str(len(text)).encode()),
            (b"connection", b"close"),
        ]
        try:
            events = (h11.Response(status_code=status, headers=headers), h11.Data(data=text), h11.EndOfMessage())
            await self._write(b"".join(self.h11.send(event) or b"" for event in events))
        except (_Closed, h11.LocalProtocolError):
            pass


def _ambiguous_head(request: h11.Request) -> bytes | None:
    """Heads that two parsers could read differently are refused (request smuggling): a body
    framed by both Content-Length and Transfer-Encoding (h11 would silently prefer the
    latter), and more than one Host (the guard must judge the one the app sees)."""
    names = [name for name, _ in request.headers]
    if b"content-length" in names and b"transfer-encoding" in names:
        return b"both Content-Length and Transfer-Encoding"
    if names.count(b"host") > 1:
        return b"more than one Host header"
    return None


def _bind_tcp(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address `host` names ("localhost": IPv4 and IPv6).

    Resolved and bound here, synchronously: a loopback name resolves from /etc/hosts at once,
    and anyio.create_tcp_listener would resolve it through asyncio's executor, whose thread
    then idles for the supervisor's whole life (~0.5 MB of RSS)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys((i[0], i[1], i[2], "", i[4]) for i in infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address[0], port, *address[2:]))
            if port == 0:  # the other families on the port the first one got
                port = sock.getsockname()[1]
            sock.listen(128)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _address(addr: Any) -> tuple[str, int] | None:
    return (str(addr[0]), int(addr[1])) if isinstance(addr, tuple) and len(addr) >= 2 else None


async def serve_app(
    app: ASGIApp,
    host: str,
    port: int,
    *,
    max_body: int = MAX_BODY,
    task_status: anyio.abc.TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on host:port until cancelled; reports the bound (host, port) once listening."""
    try:
        listeners = [await anyio.abc.SocketListener.from_socket(sock) for sock in _bind_tcp(host, port)]
    except OSError as exc:
        raise IroncliwError(
            f"cannot serve HTTP on {host}:{port} ({exc.strerror or exc}); set [http] port or enabled = false"
        ) from None
    listener = listeners[0] if len(listeners) == 1 else anyio.streams.stapled.MultiListener(listeners)
    slots = Slots(MAX_CONNECTIONS)

    async def handle(stream: anyio.abc.SocketStream) -> None:
        slot = slots.admit(anyio.current_time())
        if slot is None:  # every slot is serving a request: no one to evict
            with anyio.move_on_after(1.0):
                await stream.send(BUSY_REPLY)
            await stream.aclose()
            return
        try:
            raw: socket.socket = stream.extra(anyio.abc.SocketAttribute.raw_socket)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            assert slot.scope is not None
            with slot.scope:
                await _Connection(app, stream, slot, slots, max_body).serve()
        except Exception as exc:  # one connection's bug must not take the listener down
            log.error("http_connection_failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            slots.release(slot)

    bound = listener.extra(anyio.abc.SocketAttribute.local_address)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(slots.sweep)
        task_status.started(_address(bound) or (host, port))
        await listener.serve(handle)


class _BuiltOnFirstRequest:
    """The API's ASGI app (Starlette, the routes, the guard), imported and built when the first
    request arrives: a supervisor whose API nobody calls does not carry the web framework
    (about 2.5 MB of RSS); the first request pays ~50 ms for the import once."""

    def __init__(self, build: Callable[[], ASGIApp]) -> None:
        self._build = build
        self._app: ASGIApp | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self._app is None:
            self._app = self._build()  # synchronous: no other request can start a second build
        await self._app(scope, receive, send)

    async def aclose(self) -> None:
        """Once the server has stopped: the app closes what it holds open (the door's upstream
        connections), so nothing is left for the garbage collector to complain about."""
        closer = getattr(self._app, "aclose", None)
        if closer is not None:
            await closer()


async def serve(supervisor: Supervisor, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    cfg = supervisor.config.http
    for module in ("starlette", "msgspec"):  # a broken install fails at `up`, not at the first request
        if importlib.util.find_spec(module) is None:
            raise IroncliwError(
                f"the HTTP API needs the `{module}` package; reinstall the project or set [http] enabled = false"
            )
    token = create_token(supervisor.paths.runtime_dir)

    def build() -> ASGIApp:
        from .app import build_app
        from .security import Guard

        return Guard(build_app(supervisor, token), token)  # type: ignore[return-value]

    proxy = supervisor.config.proxy  # the door's requests carry prompts: its own body limit
    max_body = max(MAX_BODY, int(proxy.max_body_mb * MAX_BODY)) if proxy.enabled else MAX_BODY
    app = _BuiltOnFirstRequest(build)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(partial(serve_app, max_body=max_body), app, cfg.host, cfg.port)
            if proxy.enabled:
                tg.start_soon(partial(anyio.to_thread.run_sync, preload, abandon_on_cancel=True))
            task_status.started()
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
            await app.aclose()


def asgi_scope(request: h11.Request, client: tuple[str, int] | None, server: tuple[str, int] | None) -> dict[str, Any]:
    raw_path, _, query = request.target.partition(b"?")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": request.http_version.decode("ascii"),
        "method": request.method.decode("ascii"),
        "scheme": "http",
        "path": unquote(raw_path.decode("ascii", "replace")),
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": list(request.headers),  # h11 gives lower-case names
        "client": client,
        "server": server,
    }


class _Exchange:
    """One request's ASGI receive and send, over the connection's h11 state."""

    def __init__(self, conn: _Connection, body: bytes, head: bool) -> None:
        self.conn, self.body, self.head = conn, body, head
        self.body_sent = self.started = False
        self.pending: list[bytes] = []  # the head waits for the first body part: one write, not two

    async def receive(self) -> dict[str, Any]:
        # The body first; after it, the only message left is the disconnect, which a
        # streaming app (SSE) waits for: read until the client closes. Bytes that come
        # meanwhile are a pipelined next request, kept for h11. One receiver at a time,
        # as ASGI apps do; cancelling it (the stream ended) loses nothing.
        if not self.body_sent:
            self.body_sent = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        while True:
            try:
                data = await self.conn.stream.receive(READ_CHUNK)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                return {"type": "http.disconnect"}
            self.conn.h11.receive_data(data)

    async def send(self, message: dict[str, Any]) -> None:
        conn, pending = self.conn, self.pending
        if message["type"] == "http.response.start":
            self.started = True
            headers = [(k, v) for k, v in message.get("headers", ())]
            pending.append(conn.h11.send(h11.Response(status_code=message["status"], headers=headers)) or b"")
        elif message["type"] == "http.response.body":
            data = message.get("body", b"")
            if data and not self.head and conn.h11.our_state is h11.SEND_BODY:
                pending.append(conn.h11.send(h11.Data(data=data)) or b"")
            if not message.get("more_body", False):
                pending.append(conn.h11.send(h11.EndOfMessage()) or b"")
            out = b"".join(pending)
            pending.clear()
            if out:
                await conn._write(out)
