"""Test helpers: a real supervisor in a subprocess on a private runtime dir, and cleanup by PID.

Every process a test starts is remembered by identity (pid + create time) and killed at the
end if it is still there, so a failing test leaves nothing running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from supervisor.client import ControlClient
from supervisor.errors import NotRunning

REPO = Path(__file__).resolve().parent.parent


def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "condition"
) -> Any:
    """Poll `predicate` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def short_tmpdir() -> Path:
    # Unix socket paths are limited to ~104 bytes; pytest's tmp_path can be longer.
    return Path(tempfile.mkdtemp(prefix="icw-", dir="/tmp"))


class ProcessReaper:
    """Remembers processes by identity and kills the ones still alive at the end."""

    def __init__(self) -> None:
        self.seen: dict[int, float] = {}

    def track(self, pid: int | None) -> None:
        if not pid:
            return
        try:
            self.seen.setdefault(pid, psutil.Process(pid).create_time())
        except psutil.Error:
            pass

    def track_tree(self, pid: int | None) -> None:
        self.track(pid)
        if pid:
            try:
                for child in psutil.Process(pid).children(recursive=True):
                    self.track(child.pid)
            except psutil.Error:
                pass

    def alive(self) -> list[int]:
        out = []
        for pid, created in self.seen.items():
            try:
                proc = psutil.Process(pid)
                if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                    out.append(pid)
            except psutil.Error:
                pass
        return out

    def kill_all(self) -> list[int]:
        survivors = self.alive()
        for pid in survivors:
            try:
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        return survivors


class Stack:
    """A config in a private temp dir and a supervisor (`ironcliw up`) running it as a subprocess."""

    def __init__(self, config_text: str, reaper: ProcessReaper, root: Path | None = None) -> None:
        self.root = root or short_tmpdir()
        self.config = self.root / "ironcliw.toml"
        text = textwrap.dedent(config_text)
        if "[http]" not in text:
            # The API is on by default, on port 8000: a test that does not ask for it must not
            # take that port from (or fail against) a stack the developer is running.
            text += "\n[http]\nenabled = false\n"
        self.config.write_text(text)
        self.runtime = self.root / "run"
        self.state = self.root / "state"
        self.socket = self.runtime / "control.sock"
        self.reaper = reaper
        self.proc: subprocess.Popen[bytes] | None = None
        self.out_path = self.root / "supervisor.out"
        self.env = {
            **os.environ,
            "IRONCLIW_RUNTIME_DIR": str(self.runtime),
            "IRONCLIW_STATE_DIR": str(self.state),
            "PYTHONPATH": str(REPO),
        }

    # --- the supervisor ---------------------------------------------------------------
    def up(self, wait: bool = True, timeout: float = 20.0, stdout: Any = None, **popen: Any) -> subprocess.Popen[bytes]:
        """Start `up`; its stderr (the JSON log) goes to `out_path`, and so does its stdout
        unless `stdout` names another target (a pipe nobody reads, say)."""
        out = open(self.out_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "-c", str(self.config), "--log-format", "json", "up"],
            env=self.env,
            cwd=REPO,
            stdout=out if stdout is None else stdout,
            stderr=out if stdout is not None else subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            **popen,
        )
        out.close()
        self.reaper.track(self.proc.pid)
        if wait:
            wait_until(self.ping, timeout, what="the supervisor's control socket")
        return self.proc

    def ping(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"supervisor exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
        try:
            with ControlClient(str(self.socket), timeout=2.0) as client:
                client.call("ping")
            return True
        except (NotRunning, OSError):
            return False

    def output(self) -> str:
        return self.out_path.read_text(errors="replace") if self.out_path.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.output().splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except ValueError:
                    pass
        return events

    def client(self, timeout: float = 30.0) -> ControlClient:
        return ControlClient(str(self.socket), timeout=timeout).connect()

    def call(self, op: str, **args: Any) -> Any:
        with self.client() as client:
            result = client.call(op, **args)
        if op == "status":
            for row in result["components"]:
                self.reaper.track_tree(row["pid"])
        return result

    def component(self, name: str) -> dict[str, Any]:
        return next(c for c in self.call("status")["components"] if c["name"] == name)

    def wait_state(self, name: str, *states: str, timeout: float = 15.0) -> dict[str, Any]:
        return wait_until(
            lambda: (c := self.component(name))["state"] in states and c,
            timeout,
            what=f"{name} to reach {'/'.join(states)}",
        )

    def ready_pids(self, name: str) -> list[int]:
        """The PIDs a test component printed on its `ready PID ...` line, tracked for cleanup."""
        line = next(x for x in self.call("logs", name=name, lines=50)["lines"] if x.startswith("ready"))
        pids = [int(p) for p in line.split()[1:]]
        for pid in pids:
            self.reaper.track(pid)
        return pids

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "supervisor", "-c", str(self.config), *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def stop(self, timeout: float = 30.0) -> int | None:
        """Ask the supervisor to shut down and wait for it; returns its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def close(self) -> list[int]:
        """Stop the supervisor and kill anything it left; returns the PIDs that had to be killed."""
        self.stop()
        return self.reaper.kill_all()


def python_command(code: str) -> str:
    """A TOML array for `python -c CODE` (the supervisor's own interpreter)."""
    return json.dumps(["python", "-c", textwrap.dedent(code)])


# A component that says it is ready and then sleeps; HOG holds `mb` MB first.
SLEEPER_CODE = "import time; print('ready', flush=True); time.sleep(600)"
SLEEPER_ARGV = [sys.executable, "-c", SLEEPER_CODE]
SLEEPER = python_command(SLEEPER_CODE)  # as a TOML array
HOG_CODE = "import time; data = b'x' * ({mb} << 20); print('ready', flush=True); time.sleep(600)"


async def wait_async(predicate: Callable[[], Any], what: str, timeout: float = 20.0) -> None:
    """`wait_until` for async tests: polls without blocking the event loop."""
    import anyio

    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.05)
