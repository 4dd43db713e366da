"""A component that floods its output: the supervisor's CPU and status latency, beside supervisord.

    .venv/bin/python bench/bench_flood.py [--seconds 10]

Each run starts one supervisor managing one flooding program, lets it settle for 2 s, then
over `--seconds` measures the supervisor's own on-CPU time (all its threads, from
/proc/PID/task/*/schedstat) and, meanwhile, status round trips every 20 ms (ironcliw: the
control socket; supervisord: XML-RPC getAllProcessInfo over its Unix socket). The floods:
`yes` (as fast as the pipe takes it) and a Python program writing 100-byte lines at 100 MB/s.
ironcliw runs with its default output limit (4 MB/s, bursts of 16 MB, `block`), with `drop`,
and with the limit off (what it cost before the limit existed); `up`'s stdout goes to
/dev/null, the logs to files, as supervisord's do. supervisord 4.3 is installed into a
throwaway venv by bench/common.py. A first pair of runs manages `sleep`: the cost of the
status polling itself. Target: ironcliw <= 10 % of a core on a flood, status p50 <= 5 ms
during it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    _cpu_ns,
    kill_tree,
    pct,
    short_tmpdir,
    start_ironcliw,  # noqa: E402
    stop_gracefully,
    supervisord_conf,
    supervisord_python,
    wait_until,
)
from supervisor.client import ControlClient  # noqa: E402

LINES_100MB_S = textwrap.dedent("""\
    import os, time
    line = b"x" * 99 + b"\\n"
    block = line * 10486  # ~1 MiB of 100-byte lines
    start = time.monotonic(); sent = 0
    while True:
        os.write(1, block); sent += len(block)
        delay = start + sent / 100e6 - time.monotonic()
        if delay > 0: time.sleep(delay)
    """)


def measure(pid: int, seconds: float, status_call: callable) -> tuple[float, list[float]]:
    """(% of one core over the window, status round trips during it)."""
    times: list[float] = []
    cpu0, t0 = _cpu_ns(pid), time.monotonic()
    while time.monotonic() - t0 < seconds:
        started = time.perf_counter()
        status_call()
        times.append(time.perf_counter() - started)
        time.sleep(0.02)
    cpu = (_cpu_ns(pid) - cpu0) / 1e9 / (time.monotonic() - t0) * 100
    return cpu, times


def run_ironcliw(command: list[str], limit: str, seconds: float) -> tuple[float, list[float]]:
    work = short_tmpdir("ibf-")
    (work / "ironcliw.toml").write_text(
        textwrap.dedent(f"""\
        [http]
        enabled = false
        [components.flood]
        command = {json.dumps(command)}
        ready = {{ alive_s = 0.5 }}
        {limit}
        """)
    )
    proc = start_ironcliw(work, work / "ironcliw.toml", env={"PATH": "/usr/bin:/bin"})
    try:
        client = ControlClient(str(work / "run" / "control.sock"), timeout=30)
        wait_until(lambda: _ready(client), 30)
        time.sleep(2.0)
        return measure(proc.pid, seconds, lambda: client.call("status"))
    finally:
        stop_gracefully(proc, 30)


def _ready(client: ControlClient) -> bool:
    try:
        return all(c["state"] == "READY" for c in client.call("status")["components"])
    except Exception:
        client.close()
        return False


def run_supervisord(command: list[str], seconds: float) -> tuple[float, list[float]]:
    python = supervisord_python()
    work = short_tmpdir("sbf-")
    sock = work / "sd.sock"
    supervisord_conf(work, f"[program:flood]\ncommand={' '.join(command)}\nstartsecs=1\nstopasgroup=true\n")
    proc = subprocess.Popen(
        [str(python.parent / "supervisord"), "-n", "-c", str(work / "supervisord.conf")],
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # The XML-RPC client runs in supervisord's venv (our package shadows its import name here).
    script = textwrap.dedent(f"""\
        import json, socket, sys, time, xmlrpc.client
        from supervisor.xmlrpc import SupervisorTransport
        socket.setdefaulttimeout(5.0)  # a starved supervisord: a call that takes longer counts as 5 s
        def connect():
            return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=SupervisorTransport(None, None, "unix://{sock}"))
        while True:
            proxy = connect()  # a failed call leaves the transport unusable: a new one each try
            try:
                if all(p["statename"] == "RUNNING" for p in proxy.supervisor.getAllProcessInfo()): break
            except Exception: pass
            time.sleep(0.05)
        time.sleep(2.0)
        print("go", flush=True)
        times = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < {seconds}:
            t = time.perf_counter()
            try:
                proxy.supervisor.getAllProcessInfo()
            except Exception:
                proxy = connect()
            times.append(time.perf_counter() - t)
            time.sleep(0.02)
        print(json.dumps(times), flush=True)
        """)
    try:
        rpc = subprocess.Popen([str(python), "-c", script], cwd=work, stdout=subprocess.PIPE, text=True)
        assert rpc.stdout is not None
        rpc.stdout.readline()  # "go": the window starts
        cpu0, t0 = _cpu_ns(proc.pid), time.monotonic()
        times = json.loads(rpc.stdout.readline())
        cpu = (_cpu_ns(proc.pid) - cpu0) / 1e9 / (time.monotonic() - t0) * 100
        rpc.wait(10)
        return cpu, times
    finally:
        stop_gracefully(proc, 30)
        kill_tree(proc.pid)


def row(label: str, result: tuple[float, list[float]]) -> str:
    cpu, times = result
    ms = [t * 1000 for t in times]
    return f"  {label:<44} {cpu:8.1f}   {statistics.median(ms):9.2f}   {pct(ms, 99):9.2f}   {len(ms):5d}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    script = short_tmpdir("flood-") / "lines_100mb_s.py"
    script.write_text(LINES_100MB_S)
    floods = {"yes": ["/usr/bin/yes"], "100 MB/s of lines": [sys.executable, str(script)]}
    print(f"  {'supervisor, flood':<44} {'CPU %':>8}   {'status p50':>9}   {'p99 (ms)':>9}   {'n':>5}")
    print("-- no flood (`sleep`): what polling status every 20 ms costs by itself")
    print(row("ironcliw", run_ironcliw(["/bin/sleep", "3600"], "", args.seconds)), flush=True)
    print(row("supervisord 4.3", run_supervisord(["/bin/sleep", "3600"], args.seconds)), flush=True)
    for flood, command in floods.items():
        print(f"-- {flood}")
        print(row("ironcliw, default limit (4 MB/s, block)", run_ironcliw(command, "", args.seconds)), flush=True)
        print(
            row("ironcliw, output_overflow = drop", run_ironcliw(command, 'output_overflow = "drop"', args.seconds)),
            flush=True,
        )
        print(
            row(
                "ironcliw, no limit (output_limit_mb_s = 0)",
                run_ironcliw(command, "output_limit_mb_s = 0", args.seconds),
            ),
            flush=True,
        )
        print(row("supervisord 4.3", run_supervisord(command, args.seconds)), flush=True)


if __name__ == "__main__":
    main()
