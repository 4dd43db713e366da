"""How start, stop and status grow with the number of components, beside supervisord 4.3.

    .venv/bin/python bench/bench_scale.py [--sizes 10,100,1000] [--idle-s 30]

For each size N, both supervisors manage N trivial programs (`sleep 3600`), one supervisor at
a time, measured the same way:
- up -> all ready: from starting the supervisor until every program counts as up (ironcliw:
  READY after `alive_s = 1`; supervisord: RUNNING after `startsecs = 1`), polled every 20 ms
  through each one's own status call;
- status round trip: ironcliw's `status` over the control socket, supervisord's XML-RPC
  `getAllProcessInfo` (median of 200, 50 at the largest size), from 3 s after all are up;
- stop all: from SIGTERM to the supervisor's exit with every program stopped (both stop all
  their programs on SIGTERM);
- idle CPU over `--idle-s` at the largest size (on-CPU time of the supervisor's threads).
The growth columns give each figure's ratio to the previous size: about 10x per 10x is
linear. Targets: up and stop no slower than supervisord at 100 and 1,000; status growth at
most linear.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    _cpu_ns,
    kill_tree,
    short_tmpdir,
    start_ironcliw,
    supervisord_conf,
    supervisord_python,
    wait_until,
)
from supervisor.client import ControlClient  # noqa: E402
from supervisor.errors import NotRunning  # noqa: E402

SETTLE_S = 3.0  # after all are up, before the status calls: both measured in their steady state


def run_ironcliw(n: int, calls: int, idle_s: float) -> dict[str, float]:
    work = short_tmpdir("icws-")
    (work / "c.toml").write_text(
        "[http]\nenabled = false\n"
        + "".join(
            f'[components.t{i:04d}]\ncommand = ["sleep", "3600"]\nestimated_mb = 1\nready = {{ alive_s = 1.0 }}\n'
            for i in range(n)
        )
    )
    started = time.monotonic()
    proc = start_ironcliw(work, work / "c.toml")
    client = ControlClient(str(work / "run" / "control.sock"), timeout=60)

    def all_ready() -> bool:
        try:
            return all(row["state"] == "READY" for row in client.call("status")["components"])
        except (NotRunning, OSError):
            client.close()
            return False

    try:
        wait_until(all_ready, timeout=300, interval=0.02)
        out = {"up_s": time.monotonic() - started}
        time.sleep(SETTLE_S)
        times = []
        for _ in range(calls):
            t = time.perf_counter()
            client.call("status")
            times.append(time.perf_counter() - t)
        out["status_ms"] = statistics.median(times) * 1000
        client.close()
        if idle_s:
            time.sleep(3.0)
            cpu0, t0 = _cpu_ns(proc.pid), time.monotonic()
            time.sleep(idle_s)
            out["idle_cpu"] = (_cpu_ns(proc.pid) - cpu0) / 1e9 / (time.monotonic() - t0) * 100
        t = time.monotonic()
        proc.terminate()
        proc.wait(300)
        out["stop_s"] = time.monotonic() - t
        return out
    finally:
        kill_tree(proc.pid)


def run_supervisord(n: int, calls: int, idle_s: float) -> dict[str, float]:
    python = supervisord_python()
    work = short_tmpdir("sds-")
    sock = work / "sd.sock"
    supervisord_conf(work, "".join(f"[program:t{i:04d}]\ncommand=sleep 3600\nstartsecs=1\n" for i in range(n)))
    # The poller runs in supervisord's venv (our package shadows its import name here); it
    # starts before supervisord and times `up` from the moment supervisord is launched.
    script = textwrap.dedent(f"""\
        import json, socket, subprocess, sys, time, xmlrpc.client
        from supervisor.xmlrpc import SupervisorTransport
        def connect():
            return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=SupervisorTransport(None, None, "unix://{sock}"))
        started = time.monotonic()
        proc = subprocess.Popen([{str(python.parent / "supervisord")!r}, "-n", "-c", {str(work / "supervisord.conf")!r}],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(proc.pid, flush=True)
        while True:
            proxy = connect()
            try:
                if all(p["statename"] == "RUNNING" for p in proxy.supervisor.getAllProcessInfo()): break
            except Exception: pass
            time.sleep(0.02)
        up = time.monotonic() - started
        time.sleep({SETTLE_S})
        times = []
        for _ in range({calls}):
            t = time.perf_counter(); proxy.supervisor.getAllProcessInfo(); times.append(time.perf_counter() - t)
        print(json.dumps({{"up_s": up, "times": times}}), flush=True)
        proc.wait()
        """)
    poller = subprocess.Popen([str(python), "-c", script], cwd=work, stdout=subprocess.PIPE, text=True)
    assert poller.stdout is not None
    pid = int(poller.stdout.readline())
    try:
        import json

        got = json.loads(poller.stdout.readline())
        out = {"up_s": got["up_s"], "status_ms": statistics.median(got["times"]) * 1000}
        if idle_s:
            time.sleep(3.0)
            cpu0, t0 = _cpu_ns(pid), time.monotonic()
            time.sleep(idle_s)
            out["idle_cpu"] = (_cpu_ns(pid) - cpu0) / 1e9 / (time.monotonic() - t0) * 100
        t = time.monotonic()
        os.kill(pid, 15)
        poller.wait(300)  # it waits for supervisord to exit
        out["stop_s"] = time.monotonic() - t
        return out
    finally:
        kill_tree(pid)
        poller.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--idle-s", type=float, default=30.0, help="idle CPU window at the largest size (0: skip)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[str, list[dict[str, float]]] = {"ironcliw": [], "supervisord 4.3": []}
    for n in sizes:
        calls = 200 if n < 1000 else 50
        idle = args.idle_s if n == sizes[-1] else 0.0
        results["ironcliw"].append(run_ironcliw(n, calls, idle))
        results["supervisord 4.3"].append(run_supervisord(n, calls, idle))
        print(f"  measured {n} components", file=sys.stderr, flush=True)
    print(
        f"{'figure':<28}{'supervisor':<18}"
        + "".join(f"{f'N={n}':>12}" for n in sizes)
        + "".join(f"{f'x{sizes[i + 1] // sizes[i]} growth':>14}" for i in range(len(sizes) - 1))
    )
    for key, label in (
        ("up_s", "up -> all ready (s)"),
        ("stop_s", "stop all (s)"),
        ("status_ms", "status round trip (ms)"),
    ):
        for who, rows in results.items():
            values = [r[key] for r in rows]
            growth = [values[i + 1] / values[i] if values[i] else float("nan") for i in range(len(values) - 1)]
            print(
                f"{label:<28}{who:<18}"
                + "".join(f"{v:>12.3f}" for v in values)
                + "".join(f"{g:>13.1f}x" for g in growth)
            )
    for who, rows in results.items():
        if "idle_cpu" in rows[-1]:
            print(f"{'idle CPU (% of a core)':<28}{who:<18}{'':>{12 * (len(sizes) - 1)}}{rows[-1]['idle_cpu']:>12.3f}")


if __name__ == "__main__":
    main()
