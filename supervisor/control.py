"""The control socket server: a Unix socket, mode 0600, same-user peers only.

Robustness rules (each has a test in tests/test_control_abuse.py):
- a frame whose length prefix is over the cap gets FRAME_TOO_LARGE and the connection is
  closed (the stream cannot be resynchronised without reading the junk);
- a frame that is not msgpack, not a request, names an unknown op or carries wrong
  arguments gets an error reply, and the connection stays usable;
- a frame that starts but never finishes is dropped after `FRAME_TIMEOUT_S`;
- a client that stops reading is dropped once a send has waited `SEND_TIMEOUT_S`;
  (both deadlines are enforced by one watchdog task that cancels the connection's scope:
  a cancel scope per send would cost a quarter of a status round trip);
- a client idle (between requests) for `IDLE_TIMEOUT_S` is dropped, and at the cap of
  `MAX_CLIENTS` connections a new one takes the place of the longest-idle one, so idle
  connections can never lock the owner out of `status` or `shutdown` (subscribers and
  requests under way are never evicted; only if all are busy is the new one refused);
- each connection is its own task, so none of this stalls the supervisor or the other clients.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from typing import Any

import anyio
import anyio.lowlevel
import structlog
from anyio.abc import SocketAttribute

from . import procs
from .core import Supervisor
from .errors import IroncliwError, ProtocolError
from .protocol import (
    HEADER,
    MAX_FRAME_BYTES,
    Command,
    Components,
    EmergencyCleanup,
    ErrorCode,
    Explain,
    Forget,
    Load,
    Logs,
    Memory,
    Optimize,
    Ping,
    Reply,
    Report,
    Restart,
    Shutdown,
    Status,
    Subscribe,
    Touch,
    Unload,
    decode_request,
    encode_frame,
    error_reply,
    frame_length,
    request_id,
)
from .runtime import file_id

log = structlog.get_logger("ironcliw.control")

MAX_CLIENTS = 64
FRAME_TIMEOUT_S = 5.0
SEND_TIMEOUT_S = 5.0
IDLE_TIMEOUT_S = 600.0
WATCHDOG_SLACK_S = 0.05
YIELD_EVERY = 16
MAX_SOCKET_PATH = 104  # sun_path is 104 bytes on macOS, 108 on Linux
SOCKET_CHECK_S = 2.0  # while the socket cannot be bound again: the next try
ACCEPT_RETRY_S = 0.5  # after an accept that failed for want of descriptors
ACCEPT_RETRY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_AGAIN_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EINTR})  # that client's, not ours


def _bind_unix(path: str) -> socket.socket:
    """The listening socket, mode 0600 before it accepts anyone. Bound here rather than by
    anyio.create_unix_listener, which binds in a worker thread that then idles for the
    supervisor's whole life (a thread, its stack and its malloc arena: ~0.5 MB of RSS)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


async def serve(supervisor: Supervisor, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    path = supervisor.paths.socket
    if len(os.fsencode(path)) >= MAX_SOCKET_PATH:
        raise IroncliwError(
            f"control socket path is {len(path)} bytes, over the {MAX_SOCKET_PATH - 1}-byte limit: {path}"
        )
    # We hold the runtime dir's lock, so a socket file here is a dead supervisor's leftover.
    if os.path.exists(path):
        os.unlink(path)
    sock = _bind_unix(path)
    server = ControlServer(supervisor)
    task_status.started()
    bound = file_id(path)
    try:
        # Connections live in `handlers`, whichever listening socket took them: when the
        # socket file was removed and is bound again, clients connected meanwhile stay.
        async with anyio.create_task_group() as handlers:
            handlers.start_soon(server.watchdog)
            while True:
                listener = await anyio.abc.SocketListener.from_socket(sock)
                async with listener, anyio.create_task_group() as accepting:
                    accepting.start_soon(_accept, listener, server, handlers)
                    await _until_removed(path, supervisor)
                    accepting.cancel_scope.cancel()
                sock = await _bind_again(path)
                bound = file_id(path)
                log.warning("control_socket_restored", path=path)
    finally:
        with anyio.CancelScope(shield=True):
            if file_id(path) == bound:  # ours: not one another supervisor made after ours was removed
                os.unlink(path)


async def _accept(listener: anyio.abc.SocketListener, server: ControlServer, handlers: anyio.abc.TaskGroup) -> None:
    """Accept for ever. Out of file descriptors (EMFILE, ENFILE, ENOBUFS: a flood of clients,
    a low `ulimit -n`) the accept fails, and anyio's `serve` would end with it, taking the
    supervisor down: instead it waits and tries again, as asyncio's own servers do, while
    the connections it has are served and leave."""
    failing = False
    while True:
        try:
            stream = await listener.accept()
        except anyio.BrokenResourceError as exc:
            cause = exc.__cause__
            if isinstance(cause, OSError) and cause.errno in ACCEPT_AGAIN_ERRNOS:
                continue
            if not isinstance(cause, OSError) or cause.errno not in ACCEPT_RETRY_ERRNOS:
                raise
            if not failing:
                log.warning("control_accept_failed", error=cause.strerror, retry_in_s=ACCEPT_RETRY_S)
            failing = True
            await anyio.sleep(ACCEPT_RETRY_S)
            continue
        failing = False
        handlers.start_soon(server.handle, stream)


async def _until_removed(path: str, supervisor: Supervisor) -> None:
    """Until the socket file is gone and its dir is ours again (runtimewatch.py makes a
    removed runtime dir again first; a file someone else put at the path is left alone)."""
    in_runtime_dir = os.path.dirname(path) == supervisor.paths.runtime_dir
    # Looked at in the sampler's thread at each reading (2 s): waiting wakes nothing (offloop.py).
    await supervisor.memory.sampler.off_loop.until(
        lambda: not os.path.lexists(path) and (not in_runtime_dir or supervisor.runtime.intact())
    )


async def _bind_again(path: str) -> socket.socket:
    while True:
        try:
            return _bind_unix(path)
        except OSError as exc:  # its dir went again, say: the next check
            log.warning("control_socket_not_bound", path=path, error=exc.strerror or str(exc))
            await anyio.sleep(SOCKET_CHECK_S)


_DISCONNECTS = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, TimeoutError, ConnectionError)


def _is_disconnect(exc: BaseException) -> bool:
    """The client went away or stopped reading (possibly reported from inside a task group)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_disconnect(e) for e in exc.exceptions)
    return isinstance(exc, _DISCONNECTS)


class ControlServer:
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.clients = 0
        # Each connection's cancel scope -> the monotonic time by which its current send or
        # frame must finish (None while it waits for the client's next request).
        self._deadlines: dict[anyio.CancelScope, float | None] = {}
        # The raw socket of each connection: looked up once (stream.extra builds a dict per call).
        self._sockets: dict[anyio.CancelScope, socket.socket] = {}
        self._watchdog_asleep: anyio.Event | None = None
        self._watchdog_wakes_at = float("inf")
        # Connections waiting for their next request (nothing half-sent): scope -> since when.
        self._idle_since: dict[anyio.CancelScope, float] = {}

    def _arm(self, scope: anyio.CancelScope, deadline: float | None) -> None:
        self._deadlines[scope] = deadline
        if deadline is not None and deadline < self._watchdog_wakes_at and self._watchdog_asleep is not None:
            self._watchdog_asleep.set()  # earlier than it planned to look: look again now

    def _idle(self, scope: anyio.CancelScope, since: float | None) -> None:
        """Mark a connection idle (waiting for its next request, nothing half-sent) or not."""
        if since is None:  # a request began: no idle deadline while it is read and served
            self._idle_since.pop(scope, None)
            self._deadlines[scope] = None
        else:
            self._idle_since[scope] = since
            self._arm(scope, since + IDLE_TIMEOUT_S)

    async def watchdog(self) -> None:
        """Cancel connections past their deadline; sleeps until the earliest one (or, while
        none has one, until woken), so an idle supervisor does not tick for its clients."""
        while True:
            pending = [d for d in self._deadlines.values() if d is not None]
            self._watchdog_asleep = anyio.Event()
            self._watchdog_wakes_at = min(pending) + WATCHDOG_SLACK_S if pending else float("inf")
            with anyio.move_on_after(self._watchdog_wakes_at - time.monotonic()):
                await self._watchdog_asleep.wait()
            self._watchdog_asleep = None
            now = time.monotonic()
            for scope, deadline in list(self._deadlines.items()):
                if deadline is not None and now > deadline:
                    idle = scope in self._idle_since
                    log.warning(
                        "client_dropped",
                        reason=f"idle for {IDLE_TIMEOUT_S:g} s" if idle else "a send or a frame took too long",
                    )
                    scope.cancel()

    def _evict_idlest(self) -> bool:
        """Make room for a new connection at the cap: close the longest-idle one (never a
        subscriber, nor one in the middle of a request). False if none is idle."""
        if not self._idle_since:
            return False
        scope = min(self._idle_since, key=self._idle_since.__getitem__)
        idle_s = time.monotonic() - self._idle_since.pop(scope)
        log.info("client_evicted", reason=f"a new connection at the cap of {MAX_CLIENTS}", idle_s=round(idle_s, 1))
        scope.cancel()
        return True

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        self.clients += 1
        scope = anyio.CancelScope()
        self._deadlines[scope] = None
        try:
            with scope:
                await self._handle(stream, scope)
        finally:
            self.clients -= 1
            del self._deadlines[scope]
            self._sockets.pop(scope, None)
            self._idle_since.pop(scope, None)

    async def _handle(self, stream: anyio.abc.SocketStream, scope: anyio.CancelScope) -> None:
        try:
            async with stream:
                if self.clients > MAX_CLIENTS and not self._evict_idlest():
                    await self._send(
                        stream,
                        scope,
                        error_reply(0, ErrorCode.TOO_MANY_CLIENTS, f"over {MAX_CLIENTS} connections, none idle"),
                    )
                    return
                uid = procs.peer_uid(stream.extra(SocketAttribute.raw_socket))
                if uid is not None and uid != os.getuid():
                    log.warning("peer_refused", peer_uid=uid, reason="another user")
                    await self._send(
                        stream, scope, error_reply(0, ErrorCode.REFUSED, "only the supervisor's own user may connect")
                    )
                    return
                await self._serve_connection(stream, scope)
        except Exception as exc:  # one connection's trouble must never reach the listener's task group
            if not _is_disconnect(exc):
                log.exception("connection_failed")

    async def _serve_connection(self, stream: anyio.abc.SocketStream, scope: anyio.CancelScope) -> None:
        # The hot path works on the raw non-blocking socket with our own frame buffer: each
        # anyio stream call is one or more event-loop round trips (checkpoints), which were
        # most of a status call's cost. Waiting for data yields to the loop; a client that
        # keeps the socket full gets a checkpoint every YIELD_EVERY frames so it cannot hog it.
        sock: socket.socket = stream.extra(SocketAttribute.raw_socket)
        self._sockets[scope] = sock
        buffer = bytearray()
        served = 0
        while True:
            while len(buffer) >= HEADER.size:
                served += 1
                if served % YIELD_EVERY == 0:
                    await anyio.lowlevel.checkpoint()
                try:
                    length = frame_length(bytes(buffer[: HEADER.size]))
                except ProtocolError as exc:
                    await self._send(stream, scope, error_reply(0, exc.code, exc.message))
                    return
                end = HEADER.size + length
                if len(buffer) < end:
                    break
                payload = bytes(buffer[HEADER.size : end])
                del buffer[:end]
                try:
                    command = decode_request(payload)
                except ProtocolError as exc:
                    await self._send(stream, scope, error_reply(request_id(payload), exc.code, exc.message))
                    continue
                if isinstance(command, Subscribe) or (isinstance(command, Logs) and command.args.follow):
                    await self._stream_events(stream, scope, command)
                    return
                await self._send(stream, scope, await self._dispatch(command))
            # A partial frame must be finished within FRAME_TIMEOUT_S; between frames a client
            # may idle for IDLE_TIMEOUT_S (and is the first to go when the connections run out).
            if buffer:
                self._arm(scope, time.monotonic() + FRAME_TIMEOUT_S)
            else:
                self._idle(scope, time.monotonic())
            while True:
                try:
                    chunk = sock.recv(MAX_FRAME_BYTES)
                    break
                except BlockingIOError:
                    await anyio.wait_readable(sock)
            if not chunk:
                return
            if not buffer:
                self._idle(scope, None)
            buffer += chunk

    async def _dispatch(self, command: Command) -> Reply:
        sup = self.supervisor
        result: Any
        try:
            match command:
                case Ping():
                    result = {"pong": True, "pid": os.getpid()}
                case Status():
                    result = sup.status(msgpack_rows=True)
                case Components():
                    result = sup.components()
                case Load(args=args):
                    result = await sup.load(args.name, make_room=args.make_room)
                case Unload(args=args):
                    result = await sup.unload(args.name)
                case Restart(args=args):
                    result = await sup.restart(args.name)
                case Touch(args=args):
                    result = sup.touch(args.name)
                case Forget(args=args):
                    result = sup.forget(args.name)
                case Logs(args=args):
                    result = {"lines": await sup.logs(args.name, args.lines)}
                case Shutdown():
                    sup.shutdown()
                    result = {"stopping": True}
                case Memory():
                    result = sup.memory_status()
                case Report():
                    result = sup.report()
                case Explain():
                    result = sup.explain()
                case Optimize():
                    result = await sup.optimize()
                case EmergencyCleanup():
                    result = await sup.emergency_cleanup()
                case Subscribe():  # streams: answered by _stream_events, never dispatched
                    raise ProtocolError(ErrorCode.BAD_REQUEST, "subscribe is a stream")
        except IroncliwError as exc:
            return error_reply(command.id, exc.code, exc.message)
        except Exception as exc:  # a bug must not take the supervisor down with it
            log.exception("request_failed", op=type(command).__struct_config__.tag)
            return error_reply(command.id, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        return Reply(id=command.id, ok=True, result=result)

    async def _stream_events(
        self,
        stream: anyio.abc.SocketStream,
        scope: anyio.CancelScope,
        request: Subscribe | Logs,
    ) -> None:
        """Reply once, then forward events until the client hangs up or falls behind."""
        if isinstance(request, Logs):
            name = request.args.name
            try:
                self.supervisor.runner(name)
            except IroncliwError as exc:
                await self._send(stream, scope, error_reply(request.id, exc.code, exc.message))
                return
            sub = self.supervisor.bus.subscribe(["log"], components=[name])
            first: Any = {"lines": await self.supervisor.logs(name, request.args.lines)}
        else:
            topics: list[str] = list(request.args.topics)
            sub = self.supervisor.bus.subscribe(topics)
            first = {"subscribed": topics}
        with sub:
            await self._send(stream, scope, Reply(id=request.id, ok=True, result=first))
            async with anyio.create_task_group() as tg:

                async def until_hangup() -> None:
                    try:
                        while True:
                            await stream.receive()
                    except _DISCONNECTS:
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(until_hangup)
                async for event in sub.receive:
                    await self._send(stream, scope, Reply(id=request.id, ok=True, event=event))
                tg.cancel_scope.cancel()

    async def _send(self, stream: anyio.abc.SocketStream, scope: anyio.CancelScope, reply: Reply) -> None:
        sock = self._sockets.get(scope) or stream.extra(SocketAttribute.raw_socket)
        view = memoryview(encode_frame(reply))
        while view:
            try:
                view = view[sock.send(view) :]
            except BlockingIOError:  # the client is not reading: wait, but not for ever
                self._arm(scope, time.monotonic() + SEND_TIMEOUT_S)
                await anyio.wait_writable(sock)
        self._arm(scope, None)
