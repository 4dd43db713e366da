"""Shared helpers for the benchmarks: temp stacks, timing statistics, a supervisord venv."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "bench" / ".cache"


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def summary_ms(values: Sequence[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"p50 {statistics.median(ms):.3f} ms, p99 {pct(ms, 99):.3f} ms (n={len(ms)})"


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.01) -> float:
    """Seconds until `predicate()` is truthy; raises after `timeout`."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError("benchmark condition not reached")
        time.sleep(interval)
    return time.monotonic() - start


def short_tmpdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def supervisord_python() -> Path:
    """A throwaway venv with supervisord from PyPI (never installed into the project's venv:
    its import name `supervisor` would shadow ours)."""
    venv = CACHE / "supervisord-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        print("installing supervisord into a throwaway venv ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "supervisor==4.3.0"], check=True)
    return python


def supervisord_conf(work: Path, programs: str) -> Path:
    """A supervisord config in `work` with its control socket (`work/sd.sock`), logs and the
    XML-RPC interface, then `programs` (their [program:x] sections)."""
    import textwrap

    conf = work / "supervisord.conf"
    conf.write_text(
        textwrap.dedent(f"""\
        [unix_http_server]
        file={work / "sd.sock"}
        [supervisord]
        logfile={work}/supervisord.log
        pidfile={work}/supervisord.pid
        childlogdir={work}
        minfds=4096
        [rpcinterface:supervisor]
        supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
        """)
        + programs
    )
    return conf


def _cpu_ns(pid: int) -> int:
    """On-CPU time of every thread of a process, in ns (Linux schedstat), else from psutil
    (whose user/system times have a clock-tick resolution of 10 ms: too coarse for idle)."""
    try:
        total = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        return total
    except OSError:
        t = psutil.Process(pid).cpu_times()
        return int((t.user + t.system) * 1e9)


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 1048576


def kill_tree(pid: int) -> None:
    try:
        proc = psutil.Process(pid)
        kids = proc.children(recursive=True)
    except psutil.Error:
        return
    for p in [proc, *kids]:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs([proc, *kids], timeout=5)


def stop_gracefully(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM a supervisor we started and wait for it; its whole tree is killed if it hangs."""
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)


def env_without_pythonpath() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def free_port() -> int:
    """A loopback TCP port free right now (for a supervisor's HTTP API)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Slowloris:
    """`clients` connections to 127.0.0.1:`port`, each sending one byte of an endless request
    head every `byte_every_s` and reconnecting when dropped; in a thread, for `seconds` at
    most (loopback only, bounded in count and time). Counts connections and drops."""

    def __init__(self, port: int, clients: int = 100, byte_every_s: float = 1.0, seconds: float = 30.0) -> None:
        import threading

        self.port, self.clients, self.byte_every_s, self.seconds = port, clients, byte_every_s, seconds
        self.connects = self.drops = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Slowloris:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _connect(self) -> socket.socket | None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect_ex(("127.0.0.1", self.port))
        except OSError:
            sock.close()
            return None
        self.connects += 1
        return sock

    def _run(self) -> None:
        import itertools
        import socket

        head = itertools.cycle(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000)
        socks = [self._connect() for _ in range(self.clients)]
        deadline = time.monotonic() + self.seconds
        turn = 0
        while not self._stop.wait(self.byte_every_s / self.clients) and time.monotonic() < deadline:
            i, turn = turn % self.clients, turn + 1  # each connection gets a byte every byte_every_s
            sock = socks[i]
            try:
                if sock is None:
                    raise OSError("not connected")
                try:
                    if sock.recv(1, socket.MSG_PEEK) == b"":
                        raise OSError("closed by the server")
                except BlockingIOError:
                    pass  # nothing to read: still open
                sock.send(bytes([next(head)]))
            except OSError:
                if sock is not None:
                    sock.close()
                    self.drops += 1
                socks[i] = self._connect()
        for sock in socks:
            if sock is not None:
                sock.close()


def start_ironcliw(work: Path, config: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`ironcliw up` on `config`, its runtime and state dirs under `work`, output discarded."""
    base = dict(os.environ) if env is None else env
    env = {**base, "IRONCLIW_RUNTIME_DIR": str(work / "run"), "IRONCLIW_STATE_DIR": str(work / "state")}
    return subprocess.Popen(
        [sys.executable, "-m", "supervisor", "-c", str(config), "--log-format", "json", "up"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
