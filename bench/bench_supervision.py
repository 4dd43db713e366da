"""Supervision figures side by side with supervisord 4.3, measured in the same run.

    .venv/bin/python bench/bench_supervision.py [--quick]

- time from `up` to all components ready (the default stack: chatbot, nlp_engine, voice_engine);
- status round trip over the control socket vs supervisord's XML-RPC getAllProcessInfo,
  and the CLIs (`ironcliw status` vs `supervisorctl status`) as whole commands;
- the supervisor's own RSS and idle CPU with the default stack and with 100 trivial programs.
  The default stack runs the config as shipped, HTTP API included (on a free port); its RSS
  is read again after the API has served the dashboard, /memory/status and /metrics (the web
  framework and prometheus_client load on first use). One more start reads the RSS without
  the API.

Idle CPU is measured for both supervisors over the same window, side by side, so that both
see the same noise of a shared machine; next to them runs a bare anyio loop that only sleeps
2 s at a time (what any anyio program that wakes every 2 s costs here, before doing any work).

Readiness differs by design: ironcliw's default stack waits for each component's "ready"
log line (nlp_engine builds its index first); supervisord calls a program RUNNING after
`startsecs` (1 s), whatever it is doing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    REPO,
    _cpu_ns,
    free_port,
    kill_tree,
    rss_mb,
    short_tmpdir,
    summary_ms,
    supervisord_python,
    wait_until,
)
from supervisor.client import ControlClient  # noqa: E402
from supervisor.errors import NotRunning  # noqa: E402

DEFAULT_PROGRAMS = {
    "chatbot": ["-m", "components.chatbot"],
    "nlp_engine": ["-m", "components.nlp_engine", "--docs", "20000", "--cache-mb", "40"],
    "voice_engine": ["-m", "components.voice_engine", "--cache-mb", "60"],
}


# --- ironcliw -------------------------------------------------------------------------------


def ironcliw_config(workdir: Path, trivial: int, http_port: int | None = None) -> Path:
    text = (REPO / "configs" / "ironcliw.toml").read_text().replace('cwd = ".."', f'cwd = "{REPO}"')
    if http_port is None:
        text = text.replace("[http]\nenabled = true", "[http]\nenabled = false")
    else:
        text = text.replace("port = 8000", f"port = {http_port}")
    if trivial:
        text = text.split("[components.")[0]
        for i in range(trivial):
            text += f'[components.t{i:03d}]\ncommand = ["sleep", "3600"]\nready = {{ alive_s = 1.0 }}\n'
    path = workdir / "ironcliw.toml"
    path.write_text(text)
    return path


class Managed:
    """A supervisor under test, started as a subprocess."""

    proc: subprocess.Popen[bytes] | None = None

    def stop(self) -> float:
        assert self.proc is not None
        t = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        return time.monotonic() - t


class Ironcliw(Managed):
    def __init__(self, trivial: int = 0, http_port: int | None = None) -> None:
        self.dir = short_tmpdir("icwb-")
        self.config = ironcliw_config(self.dir, trivial, http_port)
        self.env = {
            **os.environ,
            "IRONCLIW_RUNTIME_DIR": str(self.dir / "run"),
            "IRONCLIW_STATE_DIR": str(self.dir / "state"),
        }
        self.socket = str(self.dir / "run" / "control.sock")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "-c", str(self.config), "--log-format", "json", "up"],
            cwd=REPO,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self.all_ready, timeout=120, interval=0.02)
        return time.monotonic() - started

    def all_ready(self) -> bool:
        try:
            with ControlClient(self.socket, timeout=5) as c:
                return all(row["state"] == "READY" for row in c.call("status")["components"])
        except (NotRunning, OSError):
            return False

    def status_round_trips(self, n: int) -> list[float]:
        times = []
        with ControlClient(self.socket) as c:
            for _ in range(n):
                t = time.perf_counter()
                c.call("status")
                times.append(time.perf_counter() - t)
        return times

    def cli_status(self, n: int) -> list[float]:
        """`bin/ironcliw status`, the whole command a user types (bash, the venv check, Python).
        Bytecode is written as on a user's machine (this VM's PYTHONDONTWRITEBYTECODE=1 would
        have every run compile the modules again), and one run warms it first."""
        env = {k: v for k, v in self.env.items() if k != "PYTHONDONTWRITEBYTECODE"}
        command = [str(REPO / "bin" / "ironcliw"), "-c", str(self.config), "status"]
        subprocess.run(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, check=True)
        times = []
        for _ in range(n):
            t = time.perf_counter()
            subprocess.run(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, check=True)
            times.append(time.perf_counter() - t)
        return times


# --- supervisord ----------------------------------------------------------------------------


class Supervisord(Managed):
    def __init__(self, trivial: int = 0) -> None:
        self.python = supervisord_python()
        self.bin = self.python.parent
        self.dir = short_tmpdir("sdb-")
        self.sock = self.dir / "sd.sock"
        programs = ""
        if trivial:
            for i in range(trivial):
                programs += f"[program:t{i:03d}]\ncommand=sleep 3600\nstartsecs=1\n"
        else:
            for name, args in DEFAULT_PROGRAMS.items():
                programs += textwrap.dedent(f"""\
                    [program:{name}]
                    command={sys.executable} {" ".join(args)}
                    directory={REPO}
                    environment=IRONCLIW_RUNTIME_DIR="{self.dir}"
                    startsecs=1
                    stopasgroup=true
                    """)
        self.conf = self.dir / "supervisord.conf"
        self.conf.write_text(
            textwrap.dedent(f"""\
            [unix_http_server]
            file={self.sock}
            [supervisord]
            logfile={self.dir}/supervisord.log
            pidfile={self.dir}/supervisord.pid
            childlogdir={self.dir}
            [rpcinterface:supervisor]
            supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
            [supervisorctl]
            serverurl=unix://{self.sock}
            """)
            + programs
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [str(self.bin / "supervisord"), "-n", "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.dir,
        )
        wait_until(self.all_running, timeout=120, interval=0.02)
        return time.monotonic() - started

    def _rpc(self, code: str) -> str:
        script = textwrap.dedent(f"""\
            import json, time, xmlrpc.client
            from supervisor.xmlrpc import SupervisorTransport
            proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=SupervisorTransport(None, None, "unix://{self.sock}"))
            """) + textwrap.dedent(code)
        # cwd elsewhere: from the repo, `python -c` would import our `supervisor` package instead.
        return subprocess.run(
            [str(self.python), "-c", script], capture_output=True, text=True, check=True, cwd=self.dir
        ).stdout

    def all_running(self) -> bool:
        if not self.sock.exists():
            return False
        try:
            out = self._rpc("print(json.dumps([p['statename'] for p in proxy.supervisor.getAllProcessInfo()]))")
        except subprocess.CalledProcessError:
            return False
        return all(s == "RUNNING" for s in json.loads(out))

    def status_round_trips(self, n: int) -> list[float]:
        out = self._rpc(f"""
            proxy.supervisor.getAllProcessInfo()
            times = []
            for _ in range({n}):
                t = time.perf_counter(); proxy.supervisor.getAllProcessInfo(); times.append(time.perf_counter() - t)
            print(json.dumps(times))
            """)
        return json.loads(out)

    def cli_status(self, n: int) -> list[float]:
        times = []
        for _ in range(n):
            t = time.perf_counter()
            subprocess.run(
                [str(self.bin / "supervisorctl"), "-c", str(self.conf), "status"],
                stdout=subprocess.DEVNULL,
                cwd=self.dir,
            )
            times.append(time.perf_counter() - t)
        return times


BARE_LOOP = "import anyio\nasync def main():\n    while True:\n        await anyio.sleep(2.0)\nanyio.run(main)\n"


def use_http_api(port: int) -> None:
    import http.client

    for path in ("/memory_dashboard.html", "/memory/status", "/metrics"):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", path, headers={"Host": f"127.0.0.1:{port}"})
        assert conn.getresponse().read() and conn.sock is not None
        conn.close()


def measure_round(trivial: int, args: argparse.Namespace) -> tuple[dict[str, object], dict[str, object]]:
    """Both supervisors up at once: start-up and round trips one at a time, then idle CPU of
    both (and of a bare anyio loop) over one shared window."""
    port = free_port() if trivial == 0 else None
    ours, theirs = Ironcliw(trivial, http_port=port), Supervisord(trivial)
    bare: subprocess.Popen[bytes] | None = None
    out: tuple[dict[str, object], dict[str, object]] = ({}, {})
    try:
        for runner, row in ((ours, out[0]), (theirs, out[1])):
            row["ready_s"] = runner.start()
        for runner, row in ((ours, out[0]), (theirs, out[1])):
            row["rtt"] = runner.status_round_trips(args.calls)
            row["cli"] = runner.cli_status(args.cli_calls)
        bare = subprocess.Popen([sys.executable, "-c", BARE_LOOP])
        time.sleep(1.0 if args.quick else 3.0)  # let start-up work settle before measuring idle
        pids = {"ours": ours.proc.pid, "theirs": theirs.proc.pid, "bare": bare.pid}  # type: ignore[union-attr]
        before = {k: _cpu_ns(pid) for k, pid in pids.items()}
        started = time.monotonic()
        time.sleep(args.idle_s)
        elapsed = time.monotonic() - started
        cpu = {k: 100.0 * (_cpu_ns(pid) - before[k]) / 1e9 / elapsed for k, pid in pids.items()}
        out[0]["cpu"], out[1]["cpu"], out[0]["bare_cpu"] = cpu["ours"], cpu["theirs"], cpu["bare"]
        out[0]["rss"], out[1]["rss"] = rss_mb(pids["ours"]), rss_mb(pids["theirs"])
        if port is not None:
            use_http_api(port)
            time.sleep(0.5)
            out[0]["rss_after_http"] = rss_mb(pids["ours"])
        out[0]["stop_s"], out[1]["stop_s"] = ours.stop(), theirs.stop()
        return out
    finally:
        for proc in (ours.proc, theirs.proc, bare):
            if proc is not None and proc.poll() is None:
                kill_tree(proc.pid)


def rss_without_http() -> float:
    """The default stack with `[http] enabled = false`."""
    runner = Ironcliw(0, http_port=None)
    try:
        runner.start()
        time.sleep(3.0)
        assert runner.proc is not None
        return rss_mb(runner.proc.pid)
    finally:
        if runner.proc is not None and runner.proc.poll() is None:
            runner.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer calls and a shorter idle window")
    parser.add_argument("--trivial", type=int, default=100, help="trivial programs for the second round")
    args = parser.parse_args()
    args.calls = 300 if args.quick else 2000
    args.cli_calls = 5 if args.quick else 15
    args.idle_s = 10.0 if args.quick else 120.0  # long: the two supervisors differ by tens of microseconds a second

    no_http_rss = rss_without_http()
    rows = []
    for label, trivial in (
        ("default stack (3), config as shipped", 0),
        (f"{args.trivial} trivial, no HTTP", args.trivial),
    ):
        ours, theirs = measure_round(trivial, args)
        rows.append((label, ours, theirs))

    print(f"\n{'figure':44} {'ironcliw':>34}   {'supervisord 4.3':>34}")
    for label, ours, theirs in rows:
        print(f"-- {label}")
        print(f"{'  up -> all ready (s)':44} {ours['ready_s']:>34.2f}   {theirs['ready_s']:>34.2f}")
        print(
            f"{'  status round trip (socket / XML-RPC)':44} {summary_ms(ours['rtt']):>34}   {summary_ms(theirs['rtt']):>34}"
        )
        o50, t50 = statistics.median(ours["rtt"]), statistics.median(theirs["rtt"])
        print(f"{'  ... speed-up at p50':44} {t50 / o50:>33.1f}x")
        print(
            f"{'  CLI status, whole command (median ms)':44} {statistics.median(ours['cli']) * 1000:>34.1f}   {statistics.median(theirs['cli']) * 1000:>34.1f}"
        )
        print(f"{'  own RSS (MB)':44} {ours['rss']:>34.1f}   {theirs['rss']:>34.1f}")
        if "rss_after_http" in ours:
            print(f"{'  own RSS after the HTTP API was used (MB)':44} {ours['rss_after_http']:>34.1f}   {'-':>34}")
            print(f"{'  own RSS with [http] enabled = false (MB)':44} {no_http_rss:>34.1f}   {'-':>34}")
        print(
            f"{'  idle CPU (% of one core, same ' + str(int(args.idle_s)) + ' s)':44} {ours['cpu']:>34.4f}   {theirs['cpu']:>34.4f}"
        )
        print(f"{'  ... a bare anyio loop waking every 2 s':44} {ours['bare_cpu']:>34.4f}   {'-':>34}")
        print(f"{'  stop all (s)':44} {ours['stop_s']:>34.2f}   {theirs['stop_s']:>34.2f}")


if __name__ == "__main__":
    main()
