"""The runtime dir is never a trap: a symlink, someone else's dir or an open one is refused
with one line and exit 1, and nothing is changed at the place it points to."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import SLEEPER, Stack, wait_until

StackFactory = Callable[[str], Stack]


def refused_up(stack: Stack) -> str:
    proc = stack.cli("up", timeout=30)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    return proc.stderr


def test_a_symlinked_runtime_dir_is_refused_and_its_target_untouched(make_stack: StackFactory, tmp_path: Path) -> None:
    stack = make_stack(f"[components.s]\ncommand = {SLEEPER}\n")
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o755)
    target.chmod(0o755)
    stack.runtime.symlink_to(target)
    err = refused_up(stack)
    assert f"the runtime dir {stack.runtime} is a symlink" in err and "IRONCLIW_RUNTIME_DIR" in err
    assert stat.S_IMODE(target.stat().st_mode) == 0o755  # not chmodded through the link
    assert list(target.iterdir()) == []  # no lock, socket or token written there


def test_a_runtime_dir_open_to_others_is_refused_with_the_fix(make_stack: StackFactory) -> None:
    stack = make_stack(f"[components.s]\ncommand = {SLEEPER}\n")
    stack.runtime.mkdir()
    stack.runtime.chmod(0o777)
    err = refused_up(stack)
    assert "mode 0o777" in err and f"chmod 700 {stack.runtime}" in err
    assert stat.S_IMODE(stack.runtime.stat().st_mode) == 0o777


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a dir to another user needs root (CI runs as root)")
def test_a_runtime_dir_of_another_user_is_refused(make_stack: StackFactory) -> None:
    stack = make_stack(f"[components.s]\ncommand = {SLEEPER}\n")
    stack.runtime.mkdir(mode=0o700)
    os.chown(stack.runtime, 65534, 65534)
    err = refused_up(stack)
    assert "belongs to uid 65534" in err


def test_a_file_where_the_runtime_dir_should_be_is_refused(make_stack: StackFactory) -> None:
    stack = make_stack(f"[components.s]\ncommand = {SLEEPER}\n")
    stack.runtime.write_text("not a dir")
    err = refused_up(stack)
    assert f"the runtime dir {stack.runtime} is not a usable directory" in err


def test_a_fresh_runtime_dir_is_created_private(make_stack: StackFactory) -> None:
    stack = make_stack(f"[components.s]\ncommand = {SLEEPER}\nready = {{ alive_s = 0.1 }}\n")
    stack.up()
    assert stat.S_IMODE(stack.runtime.stat().st_mode) == 0o700
    assert stat.S_IMODE((stack.runtime / "supervisor.lock").stat().st_mode) == 0o600
    # Held with a shared lock, so systemd-tmpfiles' aging leaves it alone (it tries LOCK_EX).
    import fcntl

    fd = os.open(stack.runtime, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_state_files_nested_too_deeply_are_set_aside_and_up_goes_on(make_stack: StackFactory) -> None:
    """msgspec guards its depth with the interpreter's recursion limit: a RecursionError, not
    a DecodeError. A file nested past it is as corrupt as a truncated one."""
    stack = make_stack(f"[components.s]\ncommand = {SLEEPER}\n")
    deep = "[" * 100_000 + "]" * 100_000  # past the limit on 3.13 too (5,000 decodes there)
    stack.state.mkdir(parents=True, exist_ok=True)
    stack.runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
    (stack.state / "history.json").write_text(f'{{"schema": 1, "components": {{"s": [{{"junk": {deep}}}]}}}}')
    (stack.state / "registered.json").write_text(f'{{"schema": 1, "components": {{"w": {{"junk": {deep}}}}}}}')
    (stack.runtime / "children.json").write_text(f'[{{"junk": {deep}}}]')
    stack.up()
    wait_until(lambda: stack.component("s")["state"] == "READY", timeout=15)
    assert list(stack.state.glob("history.corrupt-*.json")) and list(stack.state.glob("registered.corrupt-*.json"))
    assert list(stack.runtime.glob("children.corrupt-*.json"))
    assert stack.stop() == 0


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory", "too-large"])
def test_state_files_that_are_not_small_regular_files_are_set_aside_unread(make_stack: StackFactory, kind: str) -> None:
    """A FIFO would block `up` for ever, a link to /dev/zero would read until memory ran out, a
    directory raised IsADirectoryError out of `up` (children.json), a huge file would be read
    whole: each is set aside, unread, like a corrupt file."""
    from supervisor import statefile

    stack = make_stack(f"[components.s]\ncommand = {SLEEPER}\n")
    stack.state.mkdir(parents=True, exist_ok=True)
    stack.runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths = (stack.state / "history.json", stack.state / "registered.json", stack.runtime / "children.json")
    for path in paths:
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "dev-zero":
            path.symlink_to("/dev/zero")
        elif kind == "directory":
            path.mkdir()
        else:
            with open(path, "wb") as f:  # sparse: no disk taken
                f.truncate(statefile.MAX_STATE_BYTES + 1)
    stack.up()
    wait_until(lambda: stack.component("s")["state"] == "READY", timeout=15)
    for path in paths:
        assert list(path.parent.glob(f"{path.stem}.corrupt-*.json")), path
        assert not path.exists() or path.is_file() and path.stat().st_size < 1000  # a new, real one
    assert stack.stop() == 0


def test_a_runtime_dir_removed_under_a_running_stack_is_made_again(make_stack: StackFactory, tmp_path: Path) -> None:
    """What /tmp cleaners (macOS's periodic scripts, systemd-tmpfiles) or an `rm -rf` do to a
    long-running stack: the dir, lock, socket, token and record come back within seconds,
    the CLI reaches the same supervisor, a second `up` is still refused, and a connection
    made before goes on. A symlink put in the dir's place is never followed, only reported."""
    import shutil
    import socket as socketlib

    from supervisor.client import ControlClient

    with socketlib.socket() as probe:  # the HTTP API on a free port: it reports while the socket cannot
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stack = make_stack(f"[components.s]\ncommand = {SLEEPER}\nready = {{ alive_s = 0.1 }}\n[http]\nport = {port}\n")
    stack.up()
    stack.wait_state("s", "READY")
    assert stack.proc is not None
    token = (stack.runtime / "http.token").read_text()
    with ControlClient(str(stack.socket), timeout=10).connect() as before:
        shutil.rmtree(stack.runtime)
        names = ("supervisor.lock", "control.sock", "http.token", "children.json")
        wait_until(lambda: all((stack.runtime / n).exists() for n in names), 15, what="the runtime dir back")
        assert before.call("ping")["pid"] == stack.proc.pid  # the old connection goes on
    assert stat.S_IMODE(stack.runtime.lstat().st_mode) == 0o700
    assert stat.S_ISSOCK((stack.runtime / "control.sock").lstat().st_mode)
    assert (stack.runtime / "http.token").read_text() == token
    assert (stack.runtime / "supervisor.lock").read_text().strip() == str(stack.proc.pid)
    assert (
        "children.json" in os.listdir(stack.runtime) and '"name":"s"' in (stack.runtime / "children.json").read_text()
    )
    assert stack.call("ping")["pid"] == stack.proc.pid
    second = stack.cli("up", timeout=30)
    assert second.returncode == 1 and f"pid {stack.proc.pid}" in second.stderr, second.stderr
    assert any(e["event"] == "runtime_dir_restored" for e in stack.log_events())

    # Now a symlink in its place (another user's trap): nothing is written through it.
    target = tmp_path / "trap"
    target.mkdir()
    shutil.rmtree(stack.runtime)
    stack.runtime.symlink_to(target)
    wait_until(lambda: _warnings(port, token.strip()), 15, what="the warning")
    (warning,) = _warnings(port, token.strip())
    assert warning.startswith(
        f"runtime_dir: removed, and not safe to make again: the runtime dir {stack.runtime} is a symlink"
    )
    assert list(target.iterdir()) == [] and stack.proc.poll() is None
    stack.runtime.unlink()  # the trap removed: the dir comes back
    wait_until(lambda: (stack.runtime / "control.sock").exists() and stack.ping(), 15, what="the socket back")
    with socketlib.socket(socketlib.AF_UNIX) as probe:
        probe.connect(str(stack.socket))
    assert stack.call("status")["warnings"] == []


def _warnings(port: int, token: str) -> list[str]:
    import httpx

    answer = httpx.get(
        f"http://127.0.0.1:{port}/memory/report", headers={"Authorization": f"Bearer {token}"}, timeout=5
    )
    return list(answer.json()["warnings"])


def test_a_control_socket_removed_alone_is_bound_again(make_stack: StackFactory) -> None:
    stack = make_stack(f"[components.s]\ncommand = {SLEEPER}\nready = {{ alive_s = 0.1 }}\n")
    stack.up()
    assert stack.proc is not None
    stack.socket.unlink()
    assert stack.cli("status").returncode == 3  # not running, as far as the CLI can tell ...
    wait_until(lambda: stack.socket.exists() and stack.ping(), 15, what="the socket back")  # ... for 2 s at most
    assert stack.call("ping")["pid"] == stack.proc.pid
    assert [e["event"] for e in stack.log_events()].count("control_socket_restored") == 1
    assert stack.stop() == 0 and not stack.socket.exists()


def test_the_children_record_is_never_written_through_a_symlink_put_in_the_dirs_place(tmp_path: Path) -> None:
    """In /tmp another user can put a symlink where a removed runtime dir was, and plant a
    link in its target: a write by path would follow both and overwrite the file it names."""
    from supervisor.runtime import ChildRecord, RuntimeDir

    runtime_path = tmp_path / "run"
    runtime = RuntimeDir(str(runtime_path))
    runtime.acquire()
    try:
        record = [ChildRecord(name="s", pid=os.getpid(), create_time=1.0)]
        runtime.write_children(record)
        assert runtime.read_children() == record
        for name in os.listdir(runtime_path):
            (runtime_path / name).unlink()
        runtime_path.rmdir()
        trap, victim = tmp_path / "trap", tmp_path / "victim"
        trap.mkdir()
        victim.write_text("precious")
        (trap / "children.tmp").symlink_to(victim)
        runtime_path.symlink_to(trap)
        with pytest.raises(OSError):
            runtime.write_children(record)
        assert victim.read_text() == "precious" and os.listdir(trap) == ["children.tmp"]
        runtime_path.unlink()
        runtime.restore()
        runtime.write_children(record)
        assert runtime.read_children() == record and not (runtime_path / "children.tmp").exists()
    finally:
        runtime.release()
