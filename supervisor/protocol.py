"""The control socket's wire protocol.

A frame is a 4-byte big-endian length followed by that many bytes of msgpack. A request is
`{id, op, args}`; the reply carries the same `id` and is either `{id, ok: true, result}` or
`{id, ok: false, error: {code, message}}`. After a `subscribe` (or `logs` with `follow`)
the server keeps sending `{id, ok: true, event}` frames with the subscription's id.

Error codes are stable: scripts match on them, so never rename one.
"""

from __future__ import annotations

import struct
from typing import Annotated, Any

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


# --- arguments of each op -------------------------------------------------------------


class _Args(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class NoArgs(_Args):
    pass


class NameArgs(_Args):
    name: str


class LoadArgs(_Args):
    name: str
    make_room: bool = False


class LogsArgs(_Args):
    name: str
    lines: Annotated[int, Meta(ge=0, le=10_000)] = 100
    follow: bool = False


TOPICS = ("state", "memory", "log", "action", "warning")


class SubscribeArgs(_Args):
    topics: list[str] = msgspec.field(default_factory=lambda: ["state", "memory", "action", "warning"])


OP_ARGS: dict[str, type[_Args]] = {
    "ping": NoArgs,
    "status": NoArgs,
    "components": NoArgs,
    "load": LoadArgs,
    "unload": NameArgs,
    "restart": NameArgs,
    "logs": LogsArgs,
    "shutdown": NoArgs,
    "subscribe": SubscribeArgs,
    "memory": NoArgs,
    "report": NoArgs,
    "optimize": NoArgs,
    "emergency-cleanup": NoArgs,
    "explain": NoArgs,
    "touch": NameArgs,
}

_decoder = msgspec.msgpack.Decoder(Request)
_encoder = msgspec.msgpack.Encoder()


def frame_length(header: bytes) -> int:
    """The payload length from a 4-byte header; refuses frames over the cap before reading them."""
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME_BYTES:
        raise ProtocolError(
            ErrorCode.FRAME_TOO_LARGE, f"frame of {length} bytes is over the {MAX_FRAME_BYTES}-byte cap"
        )
    return length


def decode_request(payload: bytes) -> Request:
    try:
        return _decoder.decode(payload)
    except msgspec.ValidationError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"a request is {{id, op, args}}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"not a msgpack message: {exc}") from None
    except RecursionError:
        # msgspec guards its recursion with the interpreter's limit, so a deep message fails
        # cleanly here; `args` is the only field that nests, and no op needs depth beyond a few.
        raise ProtocolError(ErrorCode.BAD_FRAME, "a msgpack message nested too deeply") from None


def request_id(payload: bytes) -> int:
    """Best effort: the `id` of a request that failed to decode, so the error reply can name it."""
    try:
        value = msgspec.msgpack.decode(payload)
    except (msgspec.DecodeError, RecursionError):
        return 0
    if isinstance(value, dict) and isinstance(value.get("id"), int) and not isinstance(value.get("id"), bool):
        return value["id"]
    return 0


def parse_args(request: Request) -> _Args:
    args_type = OP_ARGS.get(request.op)
    if args_type is None:
        raise ProtocolError(ErrorCode.UNKNOWN_OP, f"unknown op {request.op!r}; known: {', '.join(sorted(OP_ARGS))}")
    try:
        args = msgspec.convert(request.args, args_type)
    except msgspec.ValidationError as exc:
        raise ProtocolError(ErrorCode.BAD_ARGS, f"bad arguments for {request.op!r}: {exc}") from None
    if isinstance(args, SubscribeArgs):
        unknown = sorted(set(args.topics) - set(TOPICS))
        if unknown:
            raise ProtocolError(ErrorCode.BAD_ARGS, f"unknown topics {unknown}; known: {', '.join(TOPICS)}")
    return args


def encode_frame(message: Any) -> bytes:
    body = _encoder.encode(message)
    return HEADER.pack(len(body)) + body


def error_reply(request_id: int, code: str, message: str) -> Reply:
    return Reply(id=request_id, ok=False, error=ErrorBody(code=code, message=message))
