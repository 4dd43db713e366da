"""No process escapes: a component that double-forks a `setsid` daemon has it stopped with
the component, at `down`, and by the next `up` after the supervisor was killed (Linux)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import psutil
import pytest

from tests.helpers import Stack, python_command, wait_until

StackFactory = Callable[[str], Stack]
pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="child subreapers are Linux only"),
]

# The classic daemon: fork, setsid, fork again, the middle one exits; the daemon reports its PID.
DAEMONIZER = """
import os, signal, sys, time
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.write(w, str(os.getpid()).encode())
        signal.signal(signal.SIGTERM, signal.SIG_IGN if "--stubborn" in sys.argv else signal.SIG_DFL)
        time.sleep(600)
    os._exit(0)
daemon = os.read(r, 32).decode()
print("ready", daemon, flush=True)
time.sleep(600)
"""


def daemon_stack(make_stack: StackFactory, *extra: str) -> Stack:
    return make_stack(
        f"""
        [components.forker]
        command = {python_command(DAEMONIZER)[:-1]}{"".join(f', "{e}"' for e in extra)}]
        ready = {{ log_pattern = "^ready" }}
        stop_grace_s = 1
        """
    )


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_the_daemon_is_attributed_and_stopped_with_its_component(make_stack: StackFactory) -> None:
    stack = daemon_stack(make_stack, "--stubborn")  # it ignores SIGTERM: SIGKILL after the grace
    stack.up()
    stack.wait_state("forker", "READY")
    (daemon,) = stack.ready_pids("forker")
    assert psutil.Process(daemon).ppid() == stack.proc.pid  # reparented to the supervisor, not to init
    assert wait_until(lambda: stack.component("forker")["processes"] == 2, 10, what="the daemon counted in the tree")
    stack.call("unload", name="forker")
    assert not alive(daemon)
    assert stack.call("status")["components"][0]["state"] == "STOPPED"


def test_down_leaves_no_daemon(make_stack: StackFactory) -> None:
    stack = daemon_stack(make_stack)
    stack.up()
    stack.wait_state("forker", "READY")
    (daemon,) = stack.ready_pids("forker")
    assert stack.cli("down").returncode == 0
    assert stack.proc is not None and stack.proc.wait(10) == 0
    wait_until(lambda: not alive(daemon), 5, what="the daemon to be gone")


def test_sigkill_of_the_supervisor_then_up_stops_the_daemon(make_stack: StackFactory) -> None:
    stack = daemon_stack(make_stack)
    first = stack.up()
    stack.wait_state("forker", "READY")
    (daemon,) = stack.ready_pids("forker")
    wait_until(lambda: any(r["pid"] == daemon for r in _record(stack)), 10, what="the daemon in the record")
    first.kill()
    first.wait(5)
    assert alive(daemon)  # the kernel's parent-death signal reaches only the direct child
    stack.up()
    wait_until(lambda: not alive(daemon), 15, what="the next up to stop the daemon")
    assert any(e.get("event") == "stopping_leftovers" for e in stack.log_events())
    stack.wait_state("forker", "READY")
    line = [x for x in stack.call("logs", name="forker", lines=50)["lines"] if x.startswith("ready")][-1]
    second = int(line.split()[1])
    stack.reaper.track(second)
    assert second != daemon and alive(second)
    assert stack.cli("down").returncode == 0
    wait_until(lambda: not alive(second), 5, what="the second daemon to be gone")


def _record(stack: Stack) -> list[dict]:
    import json

    try:
        return json.loads((stack.runtime / "children.json").read_text())
    except (OSError, ValueError):
        return []


def test_sigkill_during_a_stop_all_of_100_leaves_nothing_after_the_next_up(make_stack: StackFactory) -> None:
    """The batched record stays exact enough: whatever a killed `stop all` left is stopped."""
    # They ignore SIGTERM, so neither the stop nor the parent-death signal ends them: only
    # the record can, after the supervisor is killed in the middle of stopping them.
    stubborn = '["sh", "-c", "trap \'\' TERM; exec sleep 3600"]'
    stack = make_stack(
        "".join(
            f"[components.s{i:03d}]\ncommand = {stubborn}\nready = {{ alive_s = 0.2 }}\nstop_grace_s = 1\n"
            for i in range(100)
        )
    )
    first = stack.up()
    wait_until(lambda: all(c["state"] == "READY" for c in stack.call("status")["components"]), 60, what="100 READY")
    pids = [c["pid"] for c in stack.call("status")["components"]]
    first.send_signal(15)  # stop all ...
    wait_until(lambda: any(e.get("new") == "STOPPING" for e in stack.log_events()), 10, what="the stop to be under way")
    first.kill()  # ... killed in the middle of it
    assert all(alive(p) for p in pids)
    first.wait(5)
    stack.up()
    wait_until(
        lambda: all(c["state"] == "READY" for c in stack.call("status")["components"]), 60, what="100 READY again"
    )
    assert not [p for p in pids if alive(p)]  # every one of the first run's processes is gone
    second = [c["pid"] for c in stack.call("status")["components"]]
    assert stack.cli("down").returncode == 0
    wait_until(lambda: not any(alive(p) for p in second), 10, what="down to stop the second run")


# The middle process lives for microseconds and its parent never reaps it: no walk sees it
# alive, so nothing but the supervisor's own children list says an orphan arrived. (The
# walk at the start is over before the fork; nothing reads memory until the test asks.)
BRIEF_MIDDLE = """
import os, time
time.sleep(0.5)
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.write(w, str(os.getpid()).encode())
        time.sleep(600)
    os._exit(0)
daemon = os.read(r, 32).decode()
time.sleep(1)
print("ready", daemon, flush=True)
time.sleep(600)
"""


def test_an_orphan_whose_parent_no_walk_saw_is_found(make_stack: StackFactory) -> None:
    stack = make_stack(
        f"""
        [memory]
        sample_interval_s = 30
        [components.forker]
        command = {python_command(BRIEF_MIDDLE)}
        ready = {{ log_pattern = "^ready" }}
        stop_grace_s = 1
        """
    )
    stack.up()
    time.sleep(2.5)  # ready by now; a status poll would read memory while the middle is alive
    (daemon,) = stack.ready_pids("forker")
    assert stack.component("forker")["processes"] == 2  # the first reading after the fork counts it
    wait_until(lambda: any(r["pid"] == daemon for r in _record(stack)), 5, what="the daemon in the record")
    stack.call("unload", name="forker")
    assert not alive(daemon)
