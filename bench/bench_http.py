"""HTTP API under load while the supervisor samples 100 components.

    .venv/bin/python bench/bench_http.py [--seconds 10] [--clients 4]

Starts `ironcliw up` with 100 trivial components (`sleep`) and the HTTP API, then for each of
`/health` and `/memory/status` runs `--clients` keep-alive HTTP/1.1 clients (threads, on
loopback, bounded in time) and reports requests per second and latency percentiles. The
sampling interval is read from the supervisor's own counter of the monitor loop's samples
(`ironcliw_monitor_samples_total` in /metrics, which leaves out the samples requests ask for) over an idle window and over the loaded window, side by side.
Target: p99 under 10 ms, and the sampling interval kept under load. Then /health from a
probe that opens a new connection per request, alone and while 100 slowloris clients hold
on (target: p99 under 100 ms, nothing unanswered).
"""

from __future__ import annotations

import argparse
import http.client
import re
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Slowloris, free_port, pct, short_tmpdir, start_ironcliw, stop_gracefully, wait_until  # noqa: E402


def samples_total(port: int) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return float(re.search(r"^ironcliw_monitor_samples_total (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]


def load(port: int, path: str, seconds: float, clients: int) -> tuple[list[float], int]:
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    stop_at = time.monotonic() + seconds

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while time.monotonic() < stop_at:
            t = time.perf_counter()
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            latencies[i].append(time.perf_counter() - t)
            if response.status != 200:
                errors[i] += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [x for xs in latencies for x in xs], sum(errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--components", type=int, default=100)
    args = parser.parse_args()
    port = free_port()
    work = short_tmpdir("icwh-")
    config = f"[memory]\nsample_interval_s = 2.0\n[http]\nport = {port}\n" + "".join(
        f'[components.t{i:03d}]\ncommand = ["sleep", "3600"]\nready = {{ alive_s = 0.5 }}\n'
        for i in range(args.components)
    )
    (work / "c.toml").write_text(config)
    proc = start_ironcliw(work, work / "c.toml")
    try:
        wait_until(lambda: _ready(port, args.components), timeout=60, interval=0.2)
        time.sleep(2)
        s0, t0 = samples_total(port), time.monotonic()
        time.sleep(2 * args.seconds)
        idle_interval = (time.monotonic() - t0) / max(1.0, samples_total(port) - s0)
        print(f"{args.components} components, {args.clients} keep-alive clients, {args.seconds:g} s per endpoint\n")
        print(
            f"{'endpoint':<16} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>7} {'sample interval (idle -> loaded)':>34}"
        )
        for path in ("/health", "/memory/status"):
            s1, t1 = samples_total(port), time.monotonic()
            lat, errors = load(port, path, args.seconds, args.clients)
            loaded_interval = (time.monotonic() - t1) / max(1.0, samples_total(port) - s1)
            ms = [x * 1000 for x in lat]
            print(
                f"{path:<16} {len(lat) / args.seconds:>8.0f} {statistics.median(ms):>8.2f} {pct(ms, 99):>8.2f} {max(ms):>8.2f} {errors:>7}"
                f" {f'{idle_interval:.2f} s -> {loaded_interval:.2f} s':>34}"
            )
        slowloris_table(port, args.seconds)
    finally:
        stop_gracefully(proc, 60)


def probe(port: int, seconds: float) -> tuple[list[float], int]:
    """/health on a new connection every 20 ms (as curl or a health checker would); failures
    (refused, reset, timed out after 5 s) are counted, not timed."""
    times, failed = [], 0
    stop_at = time.monotonic() + seconds
    while time.monotonic() < stop_at:
        t = time.perf_counter()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            ok = conn.getresponse().status == 200
            conn.close()
        except OSError:
            ok = False
        if ok:
            times.append(time.perf_counter() - t)
        else:
            failed += 1
        time.sleep(0.02)
    return times, failed


def slowloris_table(port: int, seconds: float) -> None:
    """/health from a probe, alone and while 100 slowloris clients (a header byte a second,
    reconnecting when dropped) hold on to the server."""
    print(f"\n/health on a new connection every 20 ms, {seconds:g} s each\n")
    print(f"{'beside it':<44} {'answered':>9} {'failed':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    alone = probe(port, seconds)
    with Slowloris(port, clients=100, byte_every_s=1.0, seconds=seconds + 10) as attack:
        time.sleep(3.0)  # every slot taken by then
        attacked = probe(port, seconds)
    for label, (times, failed) in (
        ("nothing", alone),
        (f"100 slowloris clients ({attack.connects} connects)", attacked),
    ):
        ms = [x * 1000 for x in times] or [float("nan")]
        print(
            f"{label:<44} {len(times):>9} {failed:>7} {statistics.median(ms):>8.2f} {pct(ms, 99):>8.2f} {max(ms):>8.2f}"
        )


def _ready(port: int, n: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/health")
        body = conn.getresponse().read()
        conn.close()
        return body.count(b'"t') >= n
    except OSError:
        return False


if __name__ == "__main__":
    main()
