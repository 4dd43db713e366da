"""The door's connections to model servers: httpcore over anyio, with two changes.

- Before each request and after each answer, httpcore's pool asks every idle connection
  whether the server closed it (`get_extra_info("is_readable")`). Its anyio stream answers
  by building all of the socket's attributes first (getsockname, getpeername, ... :
  syscalls). The stream here looks the raw socket up once, at connect, and only polls it.
- The pool's bookkeeping walks every request against every connection at each request's
  start and end: with 16 requests at once that walk cost more than the HTTP itself.
  `UpstreamPool` keeps one single-connection httpcore pool per kept-alive connection
  instead, taken by one request at a time, so each walk is over one.

bench/bench_door.py measures both against httpcore's stock pool ("the client alone").
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import time
import typing
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpcore

SocketOption = tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]


class KeptSocketStream(httpcore.AsyncNetworkStream):
    """httpcore's anyio stream, with its raw socket kept for the readable check."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._socket = inner.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        return await self._inner.start_tls(ssl_context, server_hostname, timeout)

    def get_extra_info(self, info: str) -> typing.Any:
        if info == "is_readable":
            return _readable(self._socket)
        return self._inner.get_extra_info(info)


def _readable(sock: socket.socket | None) -> bool:
    """As httpcore's check: a socket gone counts as readable (its next read is the end)."""
    fd = -1 if sock is None else sock.fileno()
    if fd < 0:
        return True
    poll = select.poll()
    poll.register(fd, select.POLLIN)
    return bool(poll.poll(0))


class KeptSocketBackend(httpcore.AnyIOBackend):
    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return KeptSocketStream(await super().connect_tcp(host, port, timeout, local_address, socket_options))


KEEP_IDLE = 64  # kept-alive connections per upstream; more are closed when their request ends
SWEEP_EVERY_S = 5.0  # at most this often a request first closes the dead kept connections


class UpstreamPool:
    """Kept-alive connections to each upstream (scheme, host, port), one request on each at a
    time: a request takes an idle connection (a single-connection httpcore pool) or opens a
    new one, and gives it back when its answer has been read or dropped."""

    def __init__(self) -> None:
        self._backend = KeptSocketBackend()
        self._idle: dict[bytes, list[httpcore.AsyncConnectionPool]] = {}
        self._closed = False
        self._sweep_at = 0.0

    @contextlib.asynccontextmanager
    async def stream(self, method: str, url: bytes, **options: Any) -> AsyncIterator[httpcore.Response]:
        origin = _origin(url)
        if time.monotonic() >= self._sweep_at:
            await self._sweep()
        idle = self._idle.setdefault(origin, [])
        pool = idle.pop() if idle else httpcore.AsyncConnectionPool(max_connections=1, network_backend=self._backend)
        try:
            async with pool.stream(method, url, **options) as answer:
                yield answer
        finally:
            idle = self._idle.setdefault(origin, [])  # a sweep meanwhile may have dropped the list
            if self._closed or len(idle) >= KEEP_IDLE or not pool.connections:
                await pool.aclose()
            else:
                idle.append(pool)

    async def _sweep(self) -> None:
        """Close kept connections the server closed or that expired, whatever their upstream:
        a model server restarted on a new ${PORT} is never asked again at its old address."""
        self._sweep_at = time.monotonic() + SWEEP_EVERY_S
        for origin, idle in list(self._idle.items()):
            dead = [p for p in idle if not p.connections or p.connections[0].has_expired()]
            for pool in dead:
                idle.remove(pool)
                await pool.aclose()
            if not idle:
                del self._idle[origin]

    async def aclose(self) -> None:
        self._closed = True
        pools = [pool for idle in self._idle.values() for pool in idle]
        self._idle.clear()
        for pool in pools:
            await pool.aclose()


def _origin(url: bytes) -> bytes:
    scheme, _, rest = url.partition(b"://")
    return scheme + b"://" + rest.split(b"/", 1)[0]
