"""Lifecycle on real processes: start, stop, restart with backoff, escalation, leftovers."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from supervisor.logfiles import RotatingLog, tail_lines
from tests.helpers import REPO, SLEEPER, ProcessReaper, Stack, python_command, wait_until

StackFactory = Callable[[str], Stack]


def pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def default_stack_text() -> str:
    text = (REPO / "configs" / "ironcliw.toml").read_text()
    with socket.socket() as probe:  # the HTTP API on a free port, not 8000
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return text.replace('cwd = ".."', f"cwd = {json.dumps(str(REPO))}").replace("port = 8000", f"port = {port}")


@pytest.mark.timeout(90)
def test_default_stack_starts_reports_and_stops(make_stack: StackFactory, reaper: ProcessReaper) -> None:
    stack = make_stack(default_stack_text())
    stack.up()
    for name in ("chatbot", "nlp_engine", "voice_engine"):
        stack.wait_state(name, "READY", timeout=60)
    proc = stack.cli("status", "--json")
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    rows = {row["name"]: row for row in status["components"]}
    assert set(rows) == {"chatbot", "nlp_engine", "voice_engine"}
    for row in rows.values():
        assert row["state"] == "READY" and row["pid"] and row["restarts"] == 0
        assert row["rss_mb"] > 5, row  # a real Python process tree, measured
        reaper.track_tree(row["pid"])
    assert rows["chatbot"]["priority"] == "CRITICAL" and rows["voice_engine"]["priority"] == "MEDIUM"
    assert sum(r["rss_mb"] for r in rows.values()) < 1024  # the default stack fits comfortably in 1 GB

    table = stack.cli("status").stdout
    assert table.splitlines()[0].startswith("HEALTHY")  # the memory line, then the table
    assert table.splitlines()[1].split()[:4] == ["NAME", "STATE", "PID", "PRIORITY"]

    # The chatbot answers over its socket.
    with socket.socket(socket.AF_UNIX) as chat:
        chat.settimeout(5)
        chat.connect(str(stack.runtime / "chatbot.sock"))
        chat.sendall(b'{"message": "hello there"}\n')
        reply = json.loads(chat.makefile().readline())
    assert "Ironcliw" in reply["reply"]

    down = stack.cli("down")
    assert down.returncode == 0 and "stopped" in down.stdout, down.stderr
    assert stack.proc is not None and stack.proc.wait(10) == 0
    assert reaper.alive() == [], "processes left behind after down"
    assert not stack.socket.exists()


def test_crash_loop_backs_off_then_goes_fatal_while_others_run(make_stack: StackFactory) -> None:
    stack = make_stack(
        f"""
        [components.steady]
        command = {SLEEPER}
        ready = {{ alive_s = 0.2 }}
        [components.crasher]
        command = {python_command("import sys; sys.exit(3)")}
        backoff_initial_s = 0.05
        backoff_max_s = 0.2
        backoff_jitter = 0.0
        max_restarts = 3
        ready = {{ alive_s = 0.5 }}
        """
    )
    stack.up()
    steady = stack.wait_state("steady", "READY")
    crasher = stack.wait_state("crasher", "FATAL")
    assert crasher["restarts"] == 3 and crasher["pid"] is None
    assert "exited 3" in crasher["last_exit"]
    reasons = [
        e.get("reason") or ""
        for e in stack.log_events()
        if e.get("event") == "state_changed" and e.get("component") == "crasher"
    ]
    backoffs = [r for r in reasons if "restart " in r]
    assert [r.split(" in ")[-1] for r in backoffs] == ["0.05 s", "0.10 s", "0.20 s"], backoffs
    assert any("3 restarts within 60 s" in r for r in reasons), reasons
    again = stack.component("steady")
    assert again["pid"] == steady["pid"] and again["state"] == "READY" and again["restarts"] == 0

    # A manual load forgives the crash loop and tries again.
    proc = stack.cli("load", "crasher")
    assert proc.returncode == 1 and "did not become ready" in proc.stderr


GRACE_TEST = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
in_group = subprocess.Popen([sys.executable, "-c", stubborn])
own_session = subprocess.Popen([sys.executable, "-c", stubborn], start_new_session=True)
time.sleep(0.3)
print("ready", in_group.pid, own_session.pid, flush=True)
time.sleep(600)
"""


def test_sigterm_ignorer_is_killed_after_grace_with_its_grandchildren(make_stack: StackFactory) -> None:
    stack = make_stack(
        f"""
        [components.stubborn]
        command = {python_command(GRACE_TEST)}
        stop_grace_s = 0.5
        ready = {{ log_pattern = "^ready" }}
        """
    )
    stack.up()
    row = stack.wait_state("stubborn", "READY")
    grandchildren = stack.ready_pids("stubborn")
    assert all(pid_alive(p) for p in [row["pid"], *grandchildren])
    assert stack.component("stubborn")["processes"] == 3  # the leader and both grandchildren: measured whole

    proc = stack.cli("unload", "stubborn")
    assert proc.returncode == 0, proc.stderr
    after = stack.component("stubborn")
    assert after["state"] == "STOPPED" and after["pid"] is None
    assert "SIGKILL after 0.5 s grace" in after["last_exit"]
    assert not any(pid_alive(p) for p in [row["pid"], *grandchildren])
    killed = next(e for e in stack.log_events() if e.get("event") == "killed_after_grace")
    assert set(grandchildren) <= set(killed["pids"])


LEAVES_GRANDCHILD = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print("ready", child.pid, flush=True)
time.sleep(600)
"""


def test_supervisor_killed_with_sigkill_is_cleaned_up_by_next_up(make_stack: StackFactory) -> None:
    stack = make_stack(
        f"""
        [components.parent]
        command = {python_command(LEAVES_GRANDCHILD)}
        ready = {{ log_pattern = "^ready" }}
        """
    )
    first = stack.up()
    row = stack.wait_state("parent", "READY")
    (grandchild,) = stack.ready_pids("parent")

    first.kill()
    first.wait(5)
    # The kernel's parent-death signal ends the direct child; the grandchild is left over.
    wait_until(lambda: not pid_alive(row["pid"]), 5, what="the child to get its parent-death signal")
    assert pid_alive(grandchild)

    stack.up()
    wait_until(lambda: not pid_alive(grandchild), 10, what="the next up to stop the leftover")
    assert any(e.get("event") == "stopping_leftovers" for e in stack.log_events())
    fresh = stack.wait_state("parent", "READY")
    assert fresh["pid"] != row["pid"]


def test_second_supervisor_on_the_same_runtime_dir_is_refused(make_stack: StackFactory) -> None:
    stack = make_stack(f"[components.s]\ncommand = {SLEEPER}\nready = {{ alive_s = 0.1 }}\n")
    first = stack.up()
    proc = stack.cli("up", timeout=20)
    assert proc.returncode == 1
    assert f"another supervisor (pid {first.pid}) is already running on {stack.runtime}" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr  # one clear line, not a crash
    assert stack.ping()


def test_client_commands_and_exit_codes(make_stack: StackFactory) -> None:
    stack = make_stack(
        f"""
        [components.web]
        command = {SLEEPER}
        ready = {{ alive_s = 0.1 }}
        [components.spare]
        command = {SLEEPER}
        autostart = false
        ready = {{ alive_s = 0.1 }}
        [components.missing]
        command = ["./no-such-program"]
        autostart = false
        restart = "never"
        """
    )
    not_running = stack.cli("status")
    assert not_running.returncode == 3 and "bin/ironcliw up" in not_running.stderr

    stack.up()
    web = stack.wait_state("web", "READY")
    assert stack.component("spare")["state"] == "STOPPED"
    cases = [
        (("load", "ghost"), 2, "UNKNOWN_COMPONENT"),
        (("unload", "ghost"), 2, "UNKNOWN_COMPONENT"),
        (("load", "spare"), 0, "spare: READY"),
        (("restart", "web"), 0, "web: READY"),
        (("unload", "spare"), 0, "spare: STOPPED"),
        (("components", "--json"), 0, '"command"'),
        (("load", "missing"), 1, "SPAWN_FAILED: cannot start missing: './no-such-program': No such file"),
    ]
    for args, code, text in cases:
        proc = stack.cli(*args)
        assert proc.returncode == code, (args, proc.stdout, proc.stderr)
        assert text in proc.stdout + proc.stderr, (args, proc.stdout, proc.stderr)
    restarted = stack.component("web")
    assert restarted["pid"] != web["pid"] and restarted["restarts"] == 0
    components = json.loads(stack.cli("components", "--json").stdout)["components"]
    for row in components:
        assert {"name", "state", "pid", "priority", "rss_mb", "restarts"} <= set(row)


CHATTY = """
import itertools, time
print("ready", flush=True)
for i in itertools.count():
    print(f"line {i}", flush=True)
    time.sleep(0.05)
"""


def test_logs_tail_and_follow(make_stack: StackFactory) -> None:
    stack = make_stack(
        f'[components.chatty]\ncommand = {python_command(CHATTY)}\nready = {{ log_pattern = "ready" }}\n'
    )
    stack.up()
    stack.wait_state("chatty", "READY")
    wait_until(lambda: len(stack.call("logs", name="chatty", lines=5)["lines"]) == 5, what="five lines")
    tail = stack.cli("logs", "chatty", "-n", "2")
    lines = tail.stdout.splitlines()
    assert len(lines) == 2 and all(x.startswith("line ") for x in lines)

    follow = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "-c", str(stack.config), "logs", "chatty", "-f", "-n", "0"],
        env=stack.env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    stack.reaper.track(follow.pid)
    try:
        seen = [follow.stdout.readline() for _ in range(3)]  # type: ignore[union-attr]
        numbers = [int(x.split()[1]) for x in seen]
        assert numbers == sorted(numbers) and numbers[0] > int(lines[-1].split()[1]) - 1
    finally:
        follow.send_signal(signal.SIGINT)
        follow.wait(10)
        follow.stdout.close()  # type: ignore[union-attr]
    assert follow.returncode == 0  # Ctrl-C ends `logs -f` quietly


def test_port_readiness_and_readiness_timeout(make_stack: StackFactory) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = f"""
    import socket, time
    time.sleep(0.3)
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", {port})); s.listen()
    time.sleep(600)
    """
    stack = make_stack(
        f"""
        [components.server]
        command = {python_command(server)}
        ready = {{ port = {port}, timeout_s = 10 }}
        [components.mute]
        command = {SLEEPER}
        max_restarts = 0
        ready = {{ log_pattern = "never printed", timeout_s = 0.5 }}
        """
    )
    stack.up()
    stack.wait_state("server", "READY")
    mute = stack.wait_state("mute", "FATAL")
    assert "not ready within 0.5 s" in mute["last_exit"]


def test_start_follows_after_and_stop_goes_in_reverse(make_stack: StackFactory) -> None:
    stack = make_stack(
        f"""
        [components.db]
        command = {SLEEPER}
        ready = {{ alive_s = 0.4 }}
        [components.app]
        command = {SLEEPER}
        after = ["db"]
        ready = {{ alive_s = 0.1 }}
        """
    )
    stack.up()
    stack.wait_state("app", "READY")
    assert stack.stop() == 0
    changes = [(e["component"], e["new"]) for e in stack.log_events() if e.get("event") == "state_changed"]
    assert changes.index(("db", "READY")) < changes.index(("app", "STARTING"))
    assert changes.index(("app", "STOPPED")) < changes.index(("db", "STOPPING"))


def test_log_file_rotates_by_size(tmp_path: Path) -> None:
    log = RotatingLog(tmp_path / "c.log", max_bytes=100, backups=2)
    for i in range(30):
        log.write(f"line {i:02d} ........\n".encode())
    log.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["c.log", "c.log.1", "c.log.2"]
    assert all(p.stat().st_size <= 100 for p in tmp_path.iterdir())
    assert tail_lines(tmp_path / "c.log", 1) == ["line 29 ........"]


@pytest.mark.skipif(not Path("/proc/self/oom_score_adj").exists(), reason="Linux only")
def test_children_get_an_oom_score_adj_by_priority(make_stack: StackFactory) -> None:
    base = int(Path("/proc/self/oom_score_adj").read_text())
    stack = make_stack(
        "".join(
            f'[components.{p.lower()}]\ncommand = {SLEEPER}\npriority = "{p}"\nready = {{ alive_s = 0.1 }}\n'
            for p in ("CRITICAL", "HIGH", "MEDIUM", "LOW")
        )
    )
    stack.up()
    adj = {}
    for p in ("critical", "high", "medium", "low"):
        pid = stack.wait_state(p, "READY")["pid"]
        adj[p] = int(Path(f"/proc/{pid}/oom_score_adj").read_text())
    assert adj == {"critical": base, "high": min(1000, base + 300), "medium": min(1000, base + 600), "low": 1000}


def test_a_load_during_shutdown_is_refused_with_its_own_code(make_stack: StackFactory) -> None:
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"
    stack = make_stack(
        f"""
        [components.slow]
        command = {python_command(stubborn)}
        ready = {{ log_pattern = "ready" }}
        stop_grace_s = 3
        [components.spare]
        command = {SLEEPER}
        autostart = false
        """
    )
    stack.up()
    stack.wait_state("slow", "READY")
    assert stack.call("shutdown") == {"stopping": True}
    proc = stack.cli("load", "spare")  # `slow` holds the shutdown for its 3 s grace
    assert proc.returncode == 1 and "SHUTTING_DOWN: the supervisor is shutting down" in proc.stderr, proc.stderr
    assert stack.proc is not None and stack.proc.wait(15) == 0
