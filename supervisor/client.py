"""A small blocking client for the control socket: the CLI, the tests and components use it.

with ControlClient(path) as client:
    client.call("status")
    for event in client.stream("subscribe", topics=["state"]): ...
"""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Iterator
from typing import Any

import msgspec

from .errors import Busy, NotRunning, ProtocolError, RemoteError
from .protocol import HEADER, ErrorCode, Reply, Request, encode_frame, frame_length

_decoder = msgspec.msgpack.Decoder(Reply)
BUSY_RETRY_S = 1.0


class ControlClient:
    def __init__(self, path: str, timeout: float | None = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._sock: socket.socket | None = None
        self._buffer = bytearray()

    def connect(self) -> ControlClient:
        """Connect, retrying for up to BUSY_RETRY_S while the listen backlog is full."""
        deadline = time.monotonic() + BUSY_RETRY_S
        while True:
            try:
                return self._connect_once()
            except Busy:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def _connect_once(self) -> ControlClient:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except FileNotFoundError:
            sock.close()
            raise NotRunning(self.path, "no socket file") from None
        except (TimeoutError, ConnectionRefusedError) as exc:
            sock.close()
            raise NotRunning(self.path, str(exc) or type(exc).__name__) from None
        except BlockingIOError:  # EAGAIN on a Unix socket: its listen backlog is full
            sock.close()
            raise Busy(
                f"the supervisor on {self.path} is not accepting connections (its backlog is full); try again"
            ) from None
        self._sock = sock
        return self

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> ControlClient:
        return self.connect() if self._sock is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, op: str, timeout: float | None = None, **args: Any) -> Any:
        """Send one request and return its result; raise RemoteError on an error reply."""
        sock = self._require()
        if timeout is not None:
            sock.settimeout(timeout)
        request_id = next(self._ids)
        sock.sendall(encode_frame(Request(id=request_id, op=op, args=args)))
        reply = self._read_reply()
        if timeout is not None:
            sock.settimeout(self.timeout)
        return self._result(reply)

    def stream(self, op: str, **args: Any) -> Iterator[Any]:
        """Send a streaming request (`subscribe`, `logs` with follow): yield its first result, then each event."""
        sock = self._require()
        sock.sendall(encode_frame(Request(id=next(self._ids), op=op, args=args)))
        yield self._result(self._read_reply())
        sock.settimeout(None)
        while True:
            try:
                reply = self._read_reply()
            except ConnectionError:
                return
            if not reply.ok:
                self._result(reply)
            yield reply.event

    def _require(self) -> socket.socket:
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        return self._sock

    @staticmethod
    def _result(reply: Reply) -> Any:
        if not reply.ok:
            error = reply.error
            raise RemoteError(
                error.code if error else ErrorCode.INTERNAL, error.message if error else "error without a body"
            )
        return reply.result

    def _read_reply(self) -> Reply:
        length = frame_length(self._read_exactly(HEADER.size))
        return _decoder.decode(self._read_exactly(length))

    def _read_exactly(self, n: int) -> bytes:
        # Read whatever has arrived (usually header and body in one recv) and keep the rest.
        sock = self._require()
        while len(self._buffer) < n:
            chunk = sock.recv(max(65536, n - len(self._buffer)))
            if not chunk:
                raise ConnectionError("the supervisor closed the connection")
            self._buffer += chunk
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data


__all__ = ["ControlClient", "NotRunning", "RemoteError", "ProtocolError"]
