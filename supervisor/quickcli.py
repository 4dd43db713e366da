"""`ironcliw status` on a quick path: Python's start-up, one socket round trip and the table,
without argparse, msgspec or the config's schema (their imports are most of the command's
time: bench/bench_supervision.py's "CLI status" figure).

It takes only `status`, with `-c/--config FILE` before or after it. objectthing it is not sure
of falls back to the full CLI (`None`), which then does, and says, exactly what it always
does: another command or flag, a config that sets where the socket is, a supervisor that is
not running, an error reply, a byte of the reply it does not expect.

The wire format is the control socket's (protocol.py): a 4-byte big-endian length and a
msgpack map. The request is written by hand; the reply is read by `unpack`, which knows the
msgpack types the supervisor's replies use (nil, booleans, integers, floats, strings, arrays,
maps) and refuses the rest.
"""

from __future__ import annotations

import os
import socket
import struct
import sys

from . import locations
from .cliformat import format_memory, format_table

# {"id": 1, "op": "status", "args": {}}
STATUS_REQUEST = b"\x83\xa2id\x01\xa2op\xa6status\xa4args\x80"
TIMEOUT_S = 10.0


class Unexpected(Exception):
    """A reply the quick path does not read: the full CLI takes over."""


def run(argv: list[str]) -> int | None:
    """Print `status` and return 0, or return None for the full CLI to do it."""
    config = _config_of(argv)
    if config is None:
        return None
    where = _socket_of(config)
    if where is None:
        return None
    try:
        reply = _ask(where)
    except (OSError, Unexpected, struct.error, UnicodeDecodeError, RecursionError):
        return None
    result = reply.get("result") if isinstance(reply, dict) and reply.get("ok") is True else None
    if not isinstance(result, dict) or not isinstance(result.get("components"), list):
        return None
    try:
        text = format_memory(result) + "\n" + format_table(result["components"], "status") + "\n"
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    sys.stdout.write(text)
    return 0


def _socket_of(config: str) -> str | None:
    """The control socket's path as config.resolve_paths finds it, reading only the file's
    [supervisor] socket and runtime_dir (with tomllib, and only if the file names them)."""
    try:
        with open(config, "rb") as f:
            raw = f.read()
    except OSError:
        return None
    section: dict[str, object] = {}
    if b"socket" in raw or b"runtime_dir" in raw:
        import tomllib

        try:
            table = tomllib.loads(raw.decode("utf-8")).get("supervisor", {})
        except (UnicodeDecodeError, tomllib.TOMLDecodeError):
            return None  # the full CLI says what is wrong with it
        section = table if isinstance(table, dict) else {}
    configured_socket, configured_runtime = section.get("socket"), section.get("runtime_dir")
    if not isinstance(configured_socket, str | None) or not isinstance(configured_runtime, str | None):
        return None
    base = os.path.dirname(os.path.abspath(config))
    default_runtime = locations.default_runtime_dir(os.environ, os.getuid())
    runtime = locations.pick(os.environ, "IRONCLIW_RUNTIME_DIR", configured_runtime, base, default_runtime)
    return locations.socket_path(os.environ, base, runtime, configured_socket)


def _config_of(argv: list[str]) -> str | None:
    """The config file, if argv is `status` with at most -c/--config FILE around it."""
    config, command, args = None, None, list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-c", "--config") and args:
            config = args.pop(0)
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        elif arg == "status" and command is None:
            command = arg
        else:
            return None
    if command is None:
        return None
    return config or locations.default_config_path(os.environ)


def _ask(path: str) -> object:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT_S)
        sock.connect(path)
        sock.sendall(struct.pack(">I", len(STATUS_REQUEST)) + STATUS_REQUEST)
        (length,) = struct.unpack(">I", _read(sock, 4))
        if length > 64 << 20:
            raise Unexpected("reply too large")
        value, end = unpack(_read(sock, length), 0)
    return value


def _read(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise Unexpected("connection closed")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


_FIXED = {0xC0: None, 0xC2: False, 0xC3: True}
# type byte -> (struct format, size) for numbers; for str/array/map: the length's format
_NUMBERS = {
    0xCA: ">f", 0xCB: ">d", 0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q",
    0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q",
}  # fmt: skip
_LENGTHS = {0xD9: (">B", "str"), 0xDA: (">H", "str"), 0xDB: (">I", "str"),
            0xDC: (">H", "array"), 0xDD: (">I", "array"), 0xDE: (">H", "map"), 0xDF: (">I", "map")}  # fmt: skip


def unpack(data: bytes, at: int) -> tuple[object, int]:
    """One msgpack value from `data` at `at`: (value, the offset after it)."""
    if at >= len(data):
        raise Unexpected("truncated")
    kind = data[at]
    at += 1
    if kind <= 0x7F:
        return kind, at
    if kind >= 0xE0:
        return kind - 0x100, at
    if 0xA0 <= kind <= 0xBF:
        return _str(data, at, kind & 0x1F)
    if 0x90 <= kind <= 0x9F:
        return _array(data, at, kind & 0x0F)
    if 0x80 <= kind <= 0x8F:
        return _map(data, at, kind & 0x0F)
    if kind in _FIXED:
        return _FIXED[kind], at
    if kind in _NUMBERS:
        fmt = _NUMBERS[kind]
        return struct.unpack_from(fmt, data, at)[0], at + struct.calcsize(fmt)
    if kind in _LENGTHS:
        fmt, shape = _LENGTHS[kind]
        (n,) = struct.unpack_from(fmt, data, at)
        at += struct.calcsize(fmt)
        return _str(data, at, n) if shape == "str" else _array(data, at, n) if shape == "array" else _map(data, at, n)
    raise Unexpected(f"msgpack type 0x{kind:02x}")


def _str(data: bytes, at: int, n: int) -> tuple[str, int]:
    if at + n > len(data):
        raise Unexpected("truncated")
    return data[at : at + n].decode("utf-8"), at + n


def _array(data: bytes, at: int, n: int) -> tuple[list[object], int]:
    items = []
    for _ in range(n):
        item, at = unpack(data, at)
        items.append(item)
    return items, at


def _map(data: bytes, at: int, n: int) -> tuple[dict[object, object], int]:
    out = {}
    for _ in range(n):
        key, at = unpack(data, at)
        out[key], at = unpack(data, at)
    return out, at
