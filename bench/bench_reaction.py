"""Reaction latency: from a balloon crossing the EMERGENCY threshold to its SIGSTOP.

    .venv/bin/python bench/bench_reaction.py [--runs 20] [--rates 200,1000]

Budget mode, so the machine's real memory is never at risk: the supervisor judges memory by
its own tree sum against `budget_mb`, and so does this benchmark's ground truth. For each
run a fresh `ironcliw up` starts one balloon (priority HIGH, so that CRITICAL's rules leave it
alone and EMERGENCY's freeze is what stops it); the balloon logs every allocation step with
both clocks. The crossing is the start of the first step after which the balloon's own
RSS (read by the balloon from /proc/self/statm right after the step, as the supervisor reads
it) reaches 95 % of the budget (the true crossing is later, inside that step); the SIGSTOP is the supervisor's
`memory_action` FREEZE event's `sigstop_unix`, the moment the signal was sent (the event
is logged once the kernel confirmed the stop). Overshoot is how far past the threshold the balloon got before it stopped.
The achieved fill rate near the threshold is reported, not the rate asked for.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, pct, short_tmpdir, stop_gracefully, wait_until  # noqa: E402
from supervisor.client import ControlClient  # noqa: E402
from supervisor.errors import NotRunning  # noqa: E402

STEP_MB = 4.0


def warm_up(total_mb: int) -> None:
    """Memory the VM handed out before fills 5x faster than new memory (measured on this VM); freed
    pages drift back to the host, so the fast rate is warmed again before each run."""
    subprocess.run([sys.executable, "-c", f"x = [b'w' * (64 << 20) for _ in range({total_mb // 64})]"], check=True)


def config(budget_mb: int, rate: float, cap_mb: int) -> str:
    return f"""
[memory]
budget_mb = {budget_mb}
sample_interval_s = 2.0
[http]
enabled = false
[components.balloon]
command = ["python", "-m", "components.balloon", "--rate-mb-s", "{rate}", "--cap-mb", "{cap_mb}",
           "--step-mb", "{STEP_MB}", "--start-delay-s", "1.0"]
cwd = "{REPO}"
priority = "HIGH"
restart = "never"
ready = {{ log_pattern = '"event": "ready"' }}
"""


def one_run(rate: float, budget_mb: int) -> dict[str, float]:
    work = short_tmpdir("icwr-")
    (work / "c.toml").write_text(config(budget_mb, rate, cap_mb=budget_mb))
    env = {**os.environ, "IRONCLIW_RUNTIME_DIR": str(work / "run"), "IRONCLIW_STATE_DIR": str(work / "state")}
    out = open(work / "out.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "-c", str(work / "c.toml"), "--log-format", "json", "up"],
        cwd=REPO,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:

        def freeze_event() -> dict | None:
            for line in (work / "out.log").read_text().splitlines():
                if '"memory_action"' in line and '"FREEZE"' in line:
                    return json.loads(line)
            return None

        def base_rss() -> float | None:
            try:
                with ControlClient(str(work / "run" / "control.sock"), timeout=2) as c:
                    rows = c.call("status")["components"]
                    return rows[0]["rss_mb"] if rows[0]["state"] == "READY" and rows[0]["rss_mb"] else None
            except (NotRunning, OSError):
                return None

        base = None
        deadline = time.monotonic() + 20
        while base is None and time.monotonic() < deadline:
            base = base_rss()
            time.sleep(0.02)
        if base is None:
            raise RuntimeError("the balloon did not become ready")
        wait_until(freeze_event, timeout=60, interval=0.05)
        time.sleep(0.2)
        event = freeze_event()
        assert event is not None
        steps = [
            json.loads(line.split(" | ", 1)[1])
            for line in (work / "out.log").read_text().splitlines()
            if line.startswith("balloon") and '"allocated"' in line
        ]
        threshold = 0.95 * budget_mb
        # Ground truth from the source the supervisor judges by: the balloon's own RSS.
        # The RSS crosses somewhere inside that step's memset, which may be cut short by the
        # SIGSTOP itself: count from the step's start, so the latency is an upper bound.
        crossing = next(s for s in steps if s["rss_mb"] >= threshold)
        crossing = {**crossing, "t_unix": crossing["t_start_unix"]}
        stop_unix = event["sigstop_unix"]  # when SIGSTOP was sent
        before = [s for s in steps if s["t_unix"] <= stop_unix]
        last = before[-1]
        near = [s for s in steps if abs(s["t_unix"] - crossing["t_unix"]) < 0.1]
        achieved = (near[-1]["total_mb"] - near[0]["total_mb"]) / max(1e-6, near[-1]["t_unix"] - near[0]["t_unix"])
        return {
            "latency_ms": (stop_unix - crossing["t_unix"]) * 1000,
            "overshoot_mb": last["rss_mb"] - threshold,
            "achieved_mb_s": achieved,
        }
    finally:
        stop_gracefully(proc, 30)
        out.close()


def mem_available_kb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    raise RuntimeError("no MemAvailable")


def settle_mem_available(timeout: float = 20.0) -> None:
    """MemAvailable lags after a big process exits (seen on this VM): wait until it holds still."""
    deadline = time.monotonic() + timeout
    last = mem_available_kb()
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = mem_available_kb()
        if abs(now - last) < 10 * 1024:
            return
        last = now


def earlyoom_run(rate: float, margin_mb: int = 1000) -> dict[str, float] | None:
    """earlyoom 1.7 (Debian) in --dryrun, so it signals nothing: the time from MemAvailable
    crossing its -M threshold (sampled every millisecond by a side thread, the way earlyoom's
    own poll would see it) to its "sending SIGTERM" line. Uses real memory: margin_mb + 300 MB, briefly."""
    import shutil
    import threading

    if shutil.which("earlyoom") is None:
        return None
    settle_mem_available()
    threshold_kb = mem_available_kb() - margin_mb * 1024
    # stdbuf: earlyoom writes through stdio, which a pipe would buffer for seconds.
    eo = subprocess.Popen(
        ["stdbuf", "-oL", "-eL", "earlyoom", "-M", str(threshold_kb), "-s", "100", "-r", "0", "--dryrun"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    marks: dict[str, float] = {}
    stop = threading.Event()

    def watch_meminfo() -> None:
        while not stop.is_set():
            if mem_available_kb() < threshold_kb:
                marks.setdefault("crossing", time.time())
                return
            time.sleep(0.001)

    def watch_earlyoom() -> None:
        assert eo.stdout is not None
        for line in eo.stdout:
            if "sending SIGTERM to process" in line or "sending SIGKILL to process" in line:
                marks.setdefault("signal", time.time())
                return

    threads = [threading.Thread(target=watch_meminfo), threading.Thread(target=watch_earlyoom, daemon=True)]
    time.sleep(0.5)  # earlyoom's start-up
    for t in threads:
        t.start()
    balloon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "components.balloon",
            "--rate-mb-s",
            str(rate),
            "--cap-mb",
            str(margin_mb + 600),
            "--step-mb",
            str(STEP_MB),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while ("crossing" not in marks or "signal" not in marks) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        balloon.kill()
        balloon.wait()
        eo.kill()
        eo.wait()
        eo.stdout.close()  # type: ignore[union-attr]
    if "crossing" not in marks or "signal" not in marks:
        return None
    return {"latency_ms": (marks["signal"] - marks["crossing"]) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rates", default="200,1000", help="MB/s, comma-separated")
    parser.add_argument("--earlyoom-runs", type=int, default=10, help="runs of earlyoom --dryrun per rate (0: skip)")
    args = parser.parse_args()
    warm_up(8000)
    print(
        f"{'rate asked':>10}  {'achieved':>10}  {'latency p50':>11}  {'p95':>8}  {'max':>8}  {'overshoot p50':>13}  {'p95':>8}  runs"
    )
    for rate in (float(r) for r in args.rates.split(",")):
        budget = 400 if rate <= 300 else 1000
        results = []
        for _ in range(args.runs):
            warm_up(2 * budget)
            results.append(one_run(rate, budget))
        lat = [r["latency_ms"] for r in results]
        over = [r["overshoot_mb"] for r in results]
        ach = statistics.median(r["achieved_mb_s"] for r in results)
        print(
            f"{rate:>7.0f} MB/s {ach:>6.0f} MB/s  {statistics.median(lat):>8.1f} ms  {pct(lat, 95):>5.1f} ms  {max(lat):>5.1f} ms"
            f"  {statistics.median(over):>10.1f} MB  {pct(over, 95):>5.1f} MB  {len(results)}  ironcliw"
        )
        if args.earlyoom_runs:
            eo = []
            for _ in range(args.earlyoom_runs):
                warm_up(2000)
                r = earlyoom_run(rate)
                if r is not None:
                    eo.append(r)
            if eo:
                lat = [r["latency_ms"] for r in eo]
                print(
                    f"{rate:>7.0f} MB/s {'':>11}  {statistics.median(lat):>8.1f} ms  {pct(lat, 95):>5.1f} ms  {max(lat):>5.1f} ms"
                    f"  {'-':>13}  {'-':>8}  {len(eo)}  earlyoom 1.7 (--dryrun, system MemAvailable)"
                )
            else:
                print(f"{rate:>7.0f} MB/s  earlyoom not measured (not installed: apt-get install earlyoom)")


if __name__ == "__main__":
    main()
