"""A small HTTP/1.1 server for the ASGI app: asyncio protocols and httptools (http1.py), in
the supervisor's task group.

Why not Uvicorn: its main loop wakes every 100 ms even when no request comes (an idle
supervisor otherwise wakes once every 2 s), and it imports click, multiprocessing and logging.config
that a loopback API never uses (about 2.5 MB of the supervisor's RSS). httptools is the
parser Uvicorn itself runs with; what is left here is the ASGI glue (http1.py): keep-alive,
bounded request heads and bodies, streamed responses (SSE) and the disconnect a streaming
endpoint waits for. Nothing here wakes unless a client sends bytes.

Limits (a loopback API for one user's tools, not a public server): MAX_CONNECTIONS at once,
a new connection taking the slot of the slowest partial request when all are taken, request
heads at a minimum byte rate and within a timeout that shortens when the slots run out
(slowloris; see slots.py), bodies up to MAX_BODY bytes (413 beyond), idle keep-alive
connections closed after KEEPALIVE_S.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
from collections.abc import Callable
from functools import partial
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import structlog

from ..core import Supervisor
from ..errors import IroncliwError
from .http1 import ASGIApp, Http1Connection, address
from .slots import MAX_CONNECTIONS, Slots
from .token import create_token, write_token
from .upstream import preload

log = structlog.get_logger("ironcliw.http")

MAX_BODY = 1 << 20
SHUTDOWN_S = 1.0  # requests still being served when the server stops get this long


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
        sockets = _bind_tcp(host, port)
    except OSError as exc:
        raise IroncliwError(
            f"cannot serve HTTP on {host}:{port} ({exc.strerror or exc}); set [http] port or enabled = false"
        ) from None
    bound = address(sockets[0].getsockname()) or (host, port)
    slots = Slots(MAX_CONNECTIONS)
    live: set[Http1Connection] = set()
    loop = asyncio.get_running_loop()
    servers: list[asyncio.Server] = []
    try:
        for sock in sockets:
            servers.append(await loop.create_server(partial(Http1Connection, app, slots, max_body, live), sock=sock))
        async with anyio.create_task_group() as tg:
            tg.start_soon(slots.sweep)
            task_status.started(bound)
            await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await _stop(servers, sockets, live)


async def _stop(servers: list[asyncio.Server], sockets: list[socket.socket], live: set[Http1Connection]) -> None:
    """Stop listening, drop every connection, and give the requests being served SHUTDOWN_S to end."""
    for server in servers:
        server.close()
    for sock in sockets[len(servers) :]:  # bound but never served
        sock.close()
    tasks = [conn.task for conn in live if conn.task is not None]
    for conn in list(live):
        conn.abort()
    if tasks:
        await asyncio.wait(tasks, timeout=SHUTDOWN_S)


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


def _put_token_back(runtime_dir: str, token: str) -> None:
    try:
        write_token(runtime_dir, token)
    except OSError as exc:  # clients that kept the token go on; new ones ask again later
        log.warning("http_token_not_written", path=runtime_dir, error=exc.strerror or str(exc))


async def serve(supervisor: Supervisor, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    cfg = supervisor.config.http
    for module in ("starlette", "msgspec"):  # a broken install fails at `up`, not at the first request
        if importlib.util.find_spec(module) is None:
            raise IroncliwError(
                f"the HTTP API needs the `{module}` package; reinstall the project or set [http] enabled = false"
            )
    token = create_token(supervisor.paths.runtime_dir)
    supervisor.runtime_watch.restored.append(lambda: _put_token_back(supervisor.paths.runtime_dir, token))

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
