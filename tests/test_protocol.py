"""Frames and messages of the control protocol, without sockets."""

from __future__ import annotations

import msgspec
import pytest

from supervisor.errors import ProtocolError
from supervisor.protocol import (
    HEADER,
    MAX_FRAME_BYTES,
    OPS,
    ErrorCode,
    Load,
    LoadArgs,
    Logs,
    LogsArgs,
    Request,
    Status,
    Subscribe,
    decode_request,
    encode_frame,
    frame_length,
    request_id,
)


def test_frame_roundtrip() -> None:
    frame = encode_frame(Request(id=7, op="status"))
    length = frame_length(frame[:4])
    assert length == len(frame) - 4
    assert decode_request(frame[4:]) == Status(id=7)


def test_oversized_frame_is_refused_from_its_header() -> None:
    with pytest.raises(ProtocolError) as info:
        frame_length(HEADER.pack(MAX_FRAME_BYTES + 1))
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE
    assert frame_length(HEADER.pack(MAX_FRAME_BYTES)) == MAX_FRAME_BYTES


@pytest.mark.parametrize(
    "payload, code",
    [
        (b"\xc1", ErrorCode.BAD_FRAME),
        (msgspec.msgpack.encode([1, 2]), ErrorCode.BAD_REQUEST),
        (msgspec.msgpack.encode({"id": "x", "op": "status"}), ErrorCode.BAD_REQUEST),
        (msgspec.msgpack.encode({"id": 1}), ErrorCode.BAD_REQUEST),
        (
            b"\x83\xa2id\x01\xa2op\xa4ping\xa4args\x81\xa1a" + b"\x91" * 100_000 + b"\x90",
            ErrorCode.BAD_FRAME,
        ),  # 100,000 deep
        (b"\x83\xa2id\x01\xa2op\xa4ping\xa4args" + b"\x81\xa1a" * 100_000 + b"\x80", ErrorCode.BAD_FRAME),
    ],
)
def test_bad_payloads(payload: bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_request(payload)
    assert info.value.code == code


@pytest.mark.parametrize(
    "op, args, code",
    [
        ("explode", {}, ErrorCode.UNKNOWN_OP),
        ("load", {}, ErrorCode.BAD_ARGS),
        ("load", {"name": 5}, ErrorCode.BAD_ARGS),
        ("load", {"name": "a", "extra": 1}, ErrorCode.BAD_ARGS),
        ("logs", {"name": "a", "lines": -1}, ErrorCode.BAD_ARGS),
        ("subscribe", {"topics": ["gossip"]}, ErrorCode.BAD_ARGS),
        ("status", {"verbose": True}, ErrorCode.BAD_ARGS),
    ],
)
def test_bad_arguments(op: str, args: dict, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_request(encode_frame(Request(id=1, op=op, args=args))[4:])
    assert info.value.code == code
    assert repr(op) in info.value.message  # the message names the op


def test_a_load_without_its_arguments_is_bad_arguments_not_a_bad_request() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_request(msgspec.msgpack.encode({"id": 1, "op": "load"}))
    assert info.value.code == ErrorCode.BAD_ARGS


def test_requests_decode_to_one_type_per_op() -> None:
    def decoded(op: str, **args: object) -> object:
        return decode_request(encode_frame(Request(id=3, op=op, args=args))[4:])

    assert decoded("load", name="nlp", make_room=True) == Load(id=3, args=LoadArgs(name="nlp", make_room=True))
    assert decoded("logs", name="a") == Logs(id=3, args=LogsArgs(name="a", lines=100, follow=False))
    assert decoded("subscribe").args.topics == ["state", "memory", "action", "warning"]  # type: ignore[attr-defined]
    assert isinstance(decoded("subscribe", topics=["log"]), Subscribe)
    assert set(OPS) == {
        "ping", "status", "components", "load", "unload", "restart", "touch", "forget", "logs", "shutdown",
        "subscribe", "memory", "report", "explain", "optimize", "emergency-cleanup",
    }  # fmt: skip


def test_request_id_is_recovered_when_possible() -> None:
    assert request_id(msgspec.msgpack.encode({"id": 42, "op": 3})) == 42
    assert request_id(b"\xc1\xc1") == 0
    assert request_id(b"\x91" * 100_000 + b"\x90") == 0
    assert request_id(msgspec.msgpack.encode({"id": True})) == 0
