"""The door's connections to model servers: httpcore's pool over anyio, with one change.

Before each request and after each answer, httpcore's pool asks every idle connection whether
the server closed it (`get_extra_info("is_readable")`). Its anyio stream answers by building
all of the socket's attributes first (getsockname, getpeername, ... : syscalls), so with 16
kept-alive connections that check was the door's largest single cost under load
(bench/bench_door.py). The stream here looks the raw socket up once, at connect, and only polls it.
"""

from __future__ import annotations

import select
import socket
import ssl
import typing
from collections.abc import Iterable

import httpcore

SocketOption = tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]


class KeptSocketStream(httpcore.AsyncNetworkStream):
    """httpcore's anyio stream, with its raw socket kept for the readable check."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._socket = inner.get_extra_info("socket")
        self.read = inner.read  # type: ignore[method-assign]  # no extra frame per read and write
        self.write = inner.write  # type: ignore[method-assign]

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)  # replaced per instance in __init__

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)  # replaced per instance in __init__

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


def connection_pool() -> httpcore.AsyncConnectionPool:
    return httpcore.AsyncConnectionPool(
        max_connections=256, max_keepalive_connections=64, network_backend=KeptSocketBackend()
    )
