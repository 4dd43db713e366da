"""The control socket under abuse: every bad client gets an error or a closed connection,
and `status` still answers promptly afterwards."""

from __future__ import annotations

import os
import random
import select
import socket
import stat
import struct
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from supervisor.protocol import MAX_FRAME_BYTES, ErrorCode, Reply, Request, encode_frame, frame_length
from tests.helpers import SLEEPER, Stack, wait_until

StackFactory = Callable[[str], Stack]


@pytest.fixture
def stack(make_stack: StackFactory) -> Stack:
    s = make_stack(f"[components.s]\ncommand = {SLEEPER}\nready = {{ alive_s = 0.1 }}\n")
    s.up()
    s.wait_state("s", "READY")
    return s


def raw(stack: Stack) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(5)
    sock.connect(str(stack.socket))
    return sock


def read_reply(sock: socket.socket) -> Reply | None:
    """The next reply, or None if the server closed the connection."""
    header = recv_exactly(sock, 4)
    if header is None:
        return None
    body = recv_exactly(sock, frame_length(header))
    return msgspec.msgpack.decode(body, type=Reply) if body is not None else None


def recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        try:
            chunk = sock.recv(n - len(data))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        data += chunk
    return data


def assert_status_is_prompt(stack: Stack) -> None:
    started = time.monotonic()
    try:
        status = stack.call("status")
    except Exception:
        print(stack.output()[-4000:])
        raise
    # A generous bound that only a stalled supervisor misses; speed is measured in bench/.
    assert time.monotonic() - started < 2.0
    assert status["components"][0]["state"] == "READY"


def test_socket_is_private(stack: Stack) -> None:
    mode = stat.S_IMODE(os.stat(stack.socket).st_mode)
    assert mode == 0o600, oct(mode)
    assert stat.S_IMODE(os.stat(stack.runtime).st_mode) == 0o700


def test_random_bytes_get_an_error_or_a_close(stack: Stack) -> None:
    rng = random.Random(1)
    for _ in range(20):
        with raw(stack) as sock:
            junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
            sock.sendall(junk)
            sock.shutdown(socket.SHUT_WR)
            while (reply := read_reply(sock)) is not None:
                assert reply.ok is False and reply.error is not None
    assert_status_is_prompt(stack)


def test_truncated_frame_is_dropped(stack: Stack) -> None:
    with raw(stack) as sock:
        frame = encode_frame(Request(id=1, op="status"))
        sock.sendall(frame[:-3])
        sock.shutdown(socket.SHUT_WR)
        assert read_reply(sock) is None
    with raw(stack) as sock:
        sock.sendall(b"\x00\x00")  # half a header, then silence
        assert_status_is_prompt(stack)


def test_four_gigabyte_length_prefix_is_refused_without_reading(stack: Stack) -> None:
    with raw(stack) as sock:
        sock.sendall(struct.pack("!I", 0xFFFFFFFF) + b"x" * 100)
        reply = read_reply(sock)
        assert reply is not None and reply.error is not None
        assert reply.error.code == ErrorCode.FRAME_TOO_LARGE
        assert read_reply(sock) is None  # and the connection is closed
    assert_status_is_prompt(stack)


def test_a_thousand_bad_frames_in_a_row_each_get_an_error(stack: Stack) -> None:
    bad = [
        struct.pack("!I", 3) + b"\xc1\xc1\xc1",
        encode_frame({"id": 5, "op": "no-such-op", "args": {}}),
        encode_frame({"id": 6, "op": "load", "args": {"name": 17}}),
        encode_frame([1, 2, 3]),
    ]
    expected = [ErrorCode.BAD_FRAME, ErrorCode.UNKNOWN_OP, ErrorCode.BAD_ARGS, ErrorCode.BAD_REQUEST]
    with raw(stack) as sock:
        sock.sendall(b"".join(bad[i % 4] for i in range(1000)))
        codes = []
        for _ in range(1000):
            reply = read_reply(sock)
            assert reply is not None and reply.error is not None
            codes.append(reply.error.code)
        assert codes == [expected[i % 4] for i in range(1000)]
        # The same connection still serves a good request afterwards.
        sock.sendall(encode_frame(Request(id=99, op="ping")))
        reply = read_reply(sock)
        assert reply is not None and reply.ok and reply.id == 99
    assert_status_is_prompt(stack)


def test_a_frame_nested_100000_deep_gets_bad_frame_and_the_connection_stays(stack: Stack) -> None:
    deep = b"\x83\xa2id\x07\xa2op\xa4ping\xa4args" + b"\x81\xa1a" * 100_000 + b"\x80"
    with raw(stack) as sock:
        sock.sendall(struct.pack("!I", len(deep)) + deep)
        reply = read_reply(sock)
        assert reply is not None and reply.error is not None and reply.error.code == ErrorCode.BAD_FRAME
        sock.sendall(encode_frame(Request(id=8, op="ping")))
        reply = read_reply(sock)
        assert reply is not None and reply.ok and reply.id == 8
    assert "RecursionError" not in stack.output()


def test_client_that_never_reads_does_not_stall_the_supervisor(stack: Stack) -> None:
    hogs = []
    try:
        for _ in range(3):
            sock = raw(stack)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            # Many requests whose replies it never reads: the server's sends back up.
            frame = encode_frame(Request(id=1, op="components"))
            sock.setblocking(False)
            try:
                for _ in range(20000):
                    sock.send(frame)
            except BlockingIOError:
                pass
            hogs.append(sock)
        idle = raw(stack)  # and one that connects and says nothing
        hogs.append(idle)
        assert_status_is_prompt(stack)
        # A subscriber that never reads holds up nobody (its buffer is bounded; see events.py).
        sub = raw(stack)
        sub.sendall(encode_frame(Request(id=1, op="subscribe", args={"topics": ["memory", "state"]})))
        hogs.append(sub)
        assert_status_is_prompt(stack)
    finally:
        for sock in hogs:
            sock.close()
    assert_status_is_prompt(stack)


def test_oversized_valid_frame_limit_is_exact(stack: Stack) -> None:
    with raw(stack) as sock:
        sock.sendall(struct.pack("!I", MAX_FRAME_BYTES + 1))
        reply = read_reply(sock)
        assert reply is not None and reply.error is not None and reply.error.code == ErrorCode.FRAME_TOO_LARGE


def test_subscribe_streams_state_changes(stack: Stack) -> None:
    with stack.client() as client:
        events = client.stream("subscribe", topics=["state"])
        assert next(events) == {"subscribed": ["state"]}
        stack.cli("restart", "s")
        seen = []
        for event in events:
            seen.append((event["component"], event["state"]))
            if seen[-1] == ("s", "READY"):
                break
    assert seen[:2] == [("s", "STOPPING"), ("s", "STOPPED")]


def test_64_idle_clients_cannot_lock_the_owner_out(stack: Stack) -> None:
    """Before: 64 idle same-user connections made `status` and `down` refuse for ever."""
    idle = [raw(stack) for _ in range(70)]
    try:
        time.sleep(0.5)
        assert_status_is_prompt(stack)  # a new connection takes the longest-idle one's place
        proc = stack.cli("status")
        assert proc.returncode == 0, proc.stderr
        readable, _, _ = select.select(idle, [], [], 2.0)
        closed = sum(1 for sock in readable if sock.recv(1) == b"")
        assert closed >= 6  # the oldest idle ones went, and said so by closing
        # A subscriber is not idle: it is never evicted for a newcomer.
        with stack.client() as sub:
            events = sub.stream("subscribe", topics=["state"])
            assert next(events) == {"subscribed": ["state"]}
            for _ in range(80):
                assert_status_is_prompt(stack)
            stack.call("restart", name="s")
            assert next(events)["component"] == "s"  # still subscribed
    finally:
        for sock in idle:
            sock.close()


def test_a_full_listen_backlog_is_a_one_line_error_with_exit_1(stack: Stack, tmp_path: Path) -> None:
    """A socket whose backlog is full (here one that never accepts): EAGAIN, not a traceback."""
    path = str(tmp_path / "full.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(0)
    fillers = []
    try:
        for _ in range(8):  # fill the backlog (0 admits one or two, by kernel)
            s = socket.socket(socket.AF_UNIX)
            s.setblocking(False)
            try:
                s.connect(path)
            except BlockingIOError:
                s.close()
                break
            fillers.append(s)
        proc = stack.cli("--socket", path, "status")
        assert proc.returncode == 1, (proc.returncode, proc.stderr)
        assert "backlog is full" in proc.stderr and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    finally:
        for s in fillers:
            s.close()
        listener.close()


def test_running_out_of_file_descriptors_on_accept_is_ridden_out(make_stack: StackFactory) -> None:
    """Past `ulimit -n`, accept() fails with EMFILE; anyio's serve() ended on it and took the
    whole stack with it. Now it waits and accepts again once the connections have gone."""
    import resource

    stack = make_stack(f"[components.s]\ncommand = {SLEEPER}\nready = {{ alive_s = 0.1 }}\n")

    def few_descriptors() -> None:  # the hard limit too: `up` raises its soft one as far as that (fdlimit.py)
        resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))

    stack.up(preexec_fn=few_descriptors)
    stack.wait_state("s", "READY")
    assert stack.proc is not None
    flood = [raw(stack) for _ in range(80)]  # the backlog takes what the supervisor cannot
    try:
        time.sleep(1.5)
        assert stack.proc.poll() is None, stack.output()[-3000:]
        assert any(e["event"] == "control_accept_failed" for e in stack.log_events())
    finally:
        for sock in flood:
            sock.close()
    wait_until(stack.ping, 10, what="the socket answering again")
    assert_status_is_prompt(stack)
    assert stack.stop() == 0
