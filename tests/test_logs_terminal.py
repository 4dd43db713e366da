"""`logs` on a terminal shows a component's control sequences instead of obeying them: its
output must not clear the reader's screen, retitle the window or write the clipboard."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
from collections.abc import Callable

from tests.helpers import REPO, Stack, python_command

StackFactory = Callable[[str], Stack]

HOSTILE = r"""
import time
print("ready", flush=True)
print("\x1b[31mred\x1b[0m \x1b]52;c;cHduZWQ=\x07 \x1b[2J\x1b[H \x1b]0;title\x07 back\rover \x9b2J", flush=True)
time.sleep(600)
"""
RAW = "\x1b[31mred\x1b[0m \x1b]52;c;cHduZWQ=\x07 \x1b[2J\x1b[H \x1b]0;title\x07 back\rover \x9b2J"
SHOWN = "\x1b[31mred\x1b[0m \\x1b]52;c;cHduZWQ=\\x07 \\x1b[2J\\x1b[H \\x1b]0;title\\x07 back\\x0dover \\x9b2J"


def on_a_terminal(stack: Stack, *args: str) -> str:
    """What `ironcliw logs ...` writes when its stdout is a terminal (a pty)."""
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "supervisor", "-c", str(stack.config), "logs", "hostile", *args],
            env=stack.env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=follower,
            stderr=subprocess.PIPE,
            timeout=60,
        )
        os.close(follower)
        follower = -1
        assert done.returncode == 0, done.stderr
        out = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the writer's side is closed and everything was read
                break
            if not chunk:
                break
            out += chunk
        return out.decode().replace("\r\n", "\n")  # the pty's own newline translation
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)


def test_logs_on_a_terminal_shows_control_sequences_and_keeps_colour(make_stack: StackFactory) -> None:
    stack = make_stack(
        f'[components.hostile]\ncommand = {python_command(HOSTILE)}\nready = {{ log_pattern = "ready" }}\n'
    )
    stack.up()
    stack.wait_state("hostile", "READY")
    assert on_a_terminal(stack, "-n", "1") == SHOWN + "\n"
    assert on_a_terminal(stack, "-n", "1", "--raw") == RAW + "\n"
    piped = subprocess.run(  # into a pipe or a file: the bytes as they were
        [sys.executable, "-m", "supervisor", "-c", str(stack.config), "logs", "hostile", "-n", "1"],
        env=stack.env,
        cwd=REPO,
        capture_output=True,
        timeout=60,
    )
    assert piped.returncode == 0 and piped.stdout == (RAW + "\n").encode()
    assert json.loads(stack.cli("logs", "hostile", "-n", "1", "--json").stdout)["lines"] == [RAW]


def test_logs_follow_in_json_prints_the_past_lines_as_json_too(make_stack: StackFactory) -> None:
    """`logs -f --json` printed its first lines raw, and only the new ones as JSON."""
    stack = make_stack(
        f'[components.hostile]\ncommand = {python_command(HOSTILE)}\nready = {{ log_pattern = "ready" }}\n'
    )
    stack.up()
    stack.wait_state("hostile", "READY")
    command = [
        sys.executable,
        "-m",
        "supervisor",
        "-c",
        str(stack.config),
        "logs",
        "hostile",
        "-f",
        "-n",
        "1",
        "--json",
    ]
    follow = subprocess.Popen(command, env=stack.env, cwd=REPO, stdout=subprocess.PIPE, text=True)
    stack.reaper.track(follow.pid)
    try:
        first = follow.stdout.readline()  # type: ignore[union-attr]
    finally:
        follow.send_signal(signal.SIGINT)
        follow.wait(10)
        follow.stdout.close()  # type: ignore[union-attr]
    assert json.loads(first)["lines"] == [RAW]
