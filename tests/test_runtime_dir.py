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


def test_state_files_nested_too_deeply_are_set_aside_and_up_goes_on(make_stack: StackFactory) -> None:
    """msgspec guards its depth with the interpreter's recursion limit: a RecursionError, not
    a DecodeError. A file nested past it is as corrupt as a truncated one."""
    stack = make_stack(f"[components.s]\ncommand = {SLEEPER}\n")
    deep = "[" * 5000 + "]" * 5000
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
