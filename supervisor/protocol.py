"""The control socket's wire protocol.

A frame is a 4-byte big-endian length followed by that many bytes of msgpack. A request is
`{id, op, args}`, decoded into one Struct per op (a union tagged by `op`, so the server
dispatches with `match` on the type); the reply carries the same `id` and is either `{id, ok: true, result}` or
`{id, ok: false, error: {code, message}}`. After a `subscribe` (or `logs` with `follow`)
the server keeps sending `{id, ok: true, event}` frames with the subscription's id.

Error codes are stable: scripts match on them, so never rename one.
"""

from __future__ import annotations

import struct
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from .errors import ProtocolError

MAX_FRAME_BYTES = 1024 * 1024
HEADER = struct.Struct("!I")


class ErrorCode:
    BAD_FRAME = "BAD_FRAME"  # not msgpack, or not a map
    FRAME_TOO_LARGE = "FRAME_TOO_LARGE"  # length prefix over MAX_FRAME_BYTES; the connection is closed
    BAD_REQUEST = "BAD_REQUEST"  # msgpack, but not {id, op, args}
    UNKNOWN_OP = "UNKNOWN_OP"
    BAD_ARGS = "BAD_ARGS"
    UNKNOWN_COMPONENT = "UNKNOWN_COMPONENT"
    REFUSED = "REFUSED"
    SPAWN_FAILED = "SPAWN_FAILED"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    TOO_MANY_CLIENTS = "TOO_MANY_CLIENTS"
    INTERNAL = "INTERNAL"


class Request(msgspec.Struct, forbid_unknown_fields=True):
    """A request as the client sends it: `{id, op, args}`."""

    id: int
    op: str
    args: dict[str, Any] = {}


class ErrorBody(msgspec.Struct):
    code: str
    message: str


class Reply(msgspec.Struct, omit_defaults=True):
    id: int
    ok: bool
    result: Any = None
    error: ErrorBody | None = None
    event: Any = None


# --- the requests the server understands: one Struct per op, tagged by `op` ----------------


class _Args(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class NoArgs(_Args, frozen=True):
    pass


class NameArgs(_Args, frozen=True):
    name: str


class LoadArgs(_Args, frozen=True):
    name: str
    make_room: bool = False


class LogsArgs(_Args, frozen=True):
    name: str
    lines: Annotated[int, Meta(ge=0, le=10_000)] = 100
    follow: bool = False


Topic = Literal["state", "memory", "log", "action", "warning"]
TOPICS: tuple[Topic, ...] = ("state", "memory", "log", "action", "warning")


class SubscribeArgs(_Args, frozen=True):
    topics: list[Topic] = msgspec.field(default_factory=lambda: ["state", "memory", "action", "warning"])


class _Op(msgspec.Struct, tag_field="op", forbid_unknown_fields=True, frozen=True):
    id: int


class Ping(_Op, tag="ping", frozen=True):
    args: NoArgs = NoArgs()


class Status(_Op, tag="status", frozen=True):
    args: NoArgs = NoArgs()


class Components(_Op, tag="components", frozen=True):
    args: NoArgs = NoArgs()


class Load(_Op, tag="load", frozen=True):
    args: LoadArgs


class Unload(_Op, tag="unload", frozen=True):
    args: NameArgs


class Restart(_Op, tag="restart", frozen=True):
    args: NameArgs


class Touch(_Op, tag="touch", frozen=True):
    args: NameArgs


class Forget(_Op, tag="forget", frozen=True):
    args: NameArgs


class Logs(_Op, tag="logs", frozen=True):
    args: LogsArgs


class Shutdown(_Op, tag="shutdown", frozen=True):
    args: NoArgs = NoArgs()


class Subscribe(_Op, tag="subscribe", frozen=True):
    args: SubscribeArgs = SubscribeArgs()


class Memory(_Op, tag="memory", frozen=True):
    args: NoArgs = NoArgs()


class Report(_Op, tag="report", frozen=True):
    args: NoArgs = NoArgs()


class Explain(_Op, tag="explain", frozen=True):
    args: NoArgs = NoArgs()


class Optimize(_Op, tag="optimize", frozen=True):
    args: NoArgs = NoArgs()


class EmergencyCleanup(_Op, tag="emergency-cleanup", frozen=True):
    args: NoArgs = NoArgs()


Command = (
    Ping
    | Status
    | Components
    | Load
    | Unload
    | Restart
    | Touch
    | Forget
    | Logs
    | Shutdown
    | Subscribe
    | Memory
    | Report
    | Explain
    | Optimize
    | EmergencyCleanup
)
OPS = tuple(sorted(str(t.__struct_config__.tag) for t in Command.__args__))

_decoder = msgspec.msgpack.Decoder(Command)
_encoder = msgspec.msgpack.Encoder()


def frame_length(header: bytes) -> int:
    """The payload length from a 4-byte header; refuses frames over the cap before reading them."""
    length: int = HEADER.unpack(header)[0]
    if length > MAX_FRAME_BYTES:
        raise ProtocolError(
            ErrorCode.FRAME_TOO_LARGE, f"frame of {length} bytes is over the {MAX_FRAME_BYTES}-byte cap"
        )
    return length


def decode_request(payload: bytes) -> Command:
    """The typed request in a frame's payload, or a ProtocolError with the stable code:
    BAD_FRAME (not msgpack), BAD_REQUEST (not `{id, op, args}`), UNKNOWN_OP, BAD_ARGS."""
    try:
        return _decoder.decode(payload)
    except msgspec.ValidationError as exc:
        raise _invalid(str(exc), payload) from None
    except msgspec.DecodeError as exc:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"not a msgpack message: {exc}") from None
    except RecursionError:
        # msgspec guards its recursion with the interpreter's limit, so a deep message fails
        # cleanly here; `args` is the only field that nests, and no op needs depth beyond a few.
        raise ProtocolError(ErrorCode.BAD_FRAME, "a msgpack message nested too deeply") from None


def _invalid(problem: str, payload: bytes) -> ProtocolError:
    """Which part of `{id, op, args}` msgspec found wrong (its message ends with the path).
    A message nested too deeply is BAD_FRAME wherever the typed decoder stopped (it stops at
    the first field it does not expect, before the depth): the generic decoder tells."""
    try:
        msgspec.msgpack.decode(payload)
    except RecursionError:
        return ProtocolError(ErrorCode.BAD_FRAME, "a msgpack message nested too deeply")
    if problem.startswith("Invalid value") and problem.endswith("- at `$.op`"):
        return ProtocolError(ErrorCode.UNKNOWN_OP, f"unknown op {_op_of(payload)!r}; known: {', '.join(OPS)}")
    if "`$.args" in problem or problem == "Object missing required field `args`":
        return ProtocolError(ErrorCode.BAD_ARGS, f"bad arguments for {_op_of(payload)!r}: {problem}")
    return ProtocolError(ErrorCode.BAD_REQUEST, f"a request is {{id, op, args}}: {problem}")


class _Envelope(msgspec.Struct):
    op: Any = None
    id: Any = None


def _envelope(payload: bytes) -> _Envelope:
    """Best effort: `op` and `id` of a request that failed to decode (`args` is skipped)."""
    try:
        return msgspec.msgpack.decode(payload, type=_Envelope)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return _Envelope()


def _op_of(payload: bytes) -> Any:
    return _envelope(payload).op


def request_id(payload: bytes) -> int:
    """Best effort: the `id` of a request that failed to decode, so the error reply can name it."""
    value = _envelope(payload).id
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def encode_frame(message: Any) -> bytes:
    body = _encoder.encode(message)
    return HEADER.pack(len(body)) + body


def error_reply(request_id: int, code: str, message: str) -> Reply:
    return Reply(id=request_id, ok=False, error=ErrorBody(code=code, message=message))
