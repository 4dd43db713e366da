"""`ironcliw top` in a real pseudo-terminal: it draws the stack and quits on q or Ctrl-C."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from tests.helpers import REPO, Stack, python_command

StackFactory = Callable[[str], Stack]


def read_until(fd: int, needle: bytes, timeout: float = 10.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:
                break
    return seen


@pytest.mark.parametrize("quit_with", ["q", "ctrl-c"])
def test_top_draws_the_stack_and_quits_cleanly(make_stack: StackFactory, quit_with: str) -> None:
    stack = make_stack(
        f"[components.lonely]\ncommand = {python_command('import time; print(1, flush=True); time.sleep(600)')}\nready = {{ alive_s = 0.1 }}\n"
    )
    stack.up()
    stack.wait_state("lonely", "READY")
    master, slave = pty.openpty()
    env = {**stack.env, "TERM": "xterm", "LINES": "30", "COLUMNS": "120"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "-c", str(stack.config), "top"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        cwd=REPO,
        start_new_session=True,
    )
    os.close(slave)
    stack.reaper.track(proc.pid)
    try:
        screen = read_until(master, b"recent actions")  # drawn after the component rows
        assert b"lonely" in screen and b"HEALTHY" in screen and b"READY" in screen
        if quit_with == "q":
            os.write(master, b"q")
        else:
            os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(10) == 0
        rest = read_until(master, b"\x1b[?1049l", timeout=2)  # the terminal's normal screen is restored
        assert b"Traceback" not in screen + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_top_without_a_supervisor_says_how_to_start_one(make_stack: StackFactory) -> None:
    stack = make_stack('[components.x]\ncommand = ["true"]\n')
    proc = stack.cli("top")
    assert proc.returncode == 3 and "bin/ironcliw up" in proc.stderr
