"""Prediction of peak memory: a trace recorder and a walk-forward evaluation.

    .venv/bin/python bench/bench_prediction.py record     # runs the workloads, writes bench/traces/peaks.json
    .venv/bin/python bench/bench_prediction.py evaluate   # walk-forward: predict run k from runs 1..k-1
    .venv/bin/python bench/bench_prediction.py trend      # leak detector: lead time, false alarms

Record: each workload runs repeatedly as a real process; its exact peak is the kernel's
high-water mark (VmHWM) summed over its tree, read every 5 ms until it exits (the last
reading before exit), never `ru_maxrss` (which carries the parent's high-water mark across
exec). Inputs vary where the program has one (file sizes; for nlp_engine the corpus size).

Evaluate: per workload and overall, the under-prediction rate (actual > predicted), the
severe rate (actual > 1.1 x predicted) and the median relative slack ((predicted - actual) /
predicted), for the supervisor's predictor and four baselines computed on the same traces:
the static estimate, the last peak, the largest peak so far + 10 % (Autopilot's max-based
recommender) and VPA-style (P95 of peaks + 15 %).
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO  # noqa: E402
from supervisor import procs  # noqa: E402
from supervisor.model import RunRecord  # noqa: E402
from supervisor.predictor import predict  # noqa: E402

TRACES = REPO / "bench" / "traces" / "peaks.json"
MB = 1 << 20
PY = sys.executable


def has(module: str) -> bool:
    return subprocess.run([PY, "-c", f"import {module}"], capture_output=True).returncode == 0


def measure(argv: list[str], stop_on: str | None = None, cwd: Path | None = None, timeout: float = 120) -> float:
    """Peak MB of a command's whole tree: VmHWM summed, read every 5 ms until it exits. With
    `stop_on`, the command is a server: stop it 1 s after that line appears."""
    proc = subprocess.Popen(
        argv, cwd=cwd, stdout=subprocess.PIPE if stop_on else subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True
    )
    peak = 0
    deadline = time.monotonic() + timeout
    if stop_on:
        assert proc.stdout is not None
        import os

        os.set_blocking(proc.stdout.fileno(), False)
        seen_at = None
        buf = ""
        while proc.poll() is None and time.monotonic() < deadline:
            peak = max(peak, procs.tree_hwm_bytes(proc.pid) or 0)
            try:
                buf += proc.stdout.read() or ""
            except (BlockingIOError, TypeError):
                pass
            if seen_at is None and stop_on in buf:
                seen_at = time.monotonic()
            if seen_at is not None and time.monotonic() - seen_at > 1.0:
                peak = max(peak, procs.tree_hwm_bytes(proc.pid) or 0)
                proc.send_signal(signal.SIGTERM)
                break
            time.sleep(0.005)
        proc.wait(30)
        proc.stdout.close()
        return peak / MB
    while proc.poll() is None and time.monotonic() < deadline:
        peak = max(peak, procs.tree_hwm_bytes(proc.pid) or 0)
        time.sleep(0.005)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    return peak / MB


def text_file(path: Path, size_mb: int, seed: int) -> int:
    rng = random.Random(seed)
    words = [f"{rng.getrandbits(40):x}" for _ in range(5000)]
    with open(path, "w") as f:
        written = 0
        while written < size_mb * MB:
            line = " ".join(rng.choice(words) for _ in range(12)) + "\n"
            f.write(line)
            written += len(line)
    return path.stat().st_size


# --- workloads: name -> (estimate MB a user would configure, sizes MB or None, run(size, workdir) -> (peak, inputs)) ---


def w_imports(size: int | None, work: Path) -> tuple[float, int | None]:
    mods = (
        "numpy, scipy, scipy.linalg"
        if has("scipy")
        else "json, sqlite3, decimal, asyncio, email.mime.text, xml.dom.minidom"
    )
    return measure([PY, "-c", f"import {mods}"]), None


def w_load_array(size: int | None, work: Path) -> tuple[float, int | None]:
    assert size is not None
    path = work / f"array-{size}.bin"
    if has("numpy"):
        subprocess.run([PY, "-c", f"import numpy; numpy.save('{path}', numpy.ones({size} * {MB} // 8))"], check=True)
        path = path.with_suffix(".bin.npy")
        code = f"import numpy; a = numpy.load('{path}'); print(a.sum())"
    else:
        path.write_bytes(b"\x01" * size * MB)
        code = f"data = open('{path}', 'rb').read(); print(len(data))"
    peak = measure([PY, "-c", code])
    inputs = path.stat().st_size
    path.unlink()
    return peak, inputs


def w_sort(size: int | None, work: Path) -> tuple[float, int | None]:
    assert size is not None
    path = work / "sort-input.txt"
    inputs = text_file(path, size, seed=size)
    peak = measure(["sort", "-T", str(work), "-o", "/dev/null", str(path)])
    return peak, inputs


def w_xz(size: int | None, work: Path) -> tuple[float, int | None]:
    assert size is not None
    path = work / "xz-input.txt"
    inputs = text_file(path, size, seed=size + 1)
    return measure(["sh", "-c", f"xz -6 -T1 -c '{path}' > /dev/null"]), inputs


def w_sqlite(size: int | None, work: Path) -> tuple[float, int | None]:
    assert size is not None
    db = work / "index.db"
    db.unlink(missing_ok=True)
    rows = size * 20_000
    code = (
        f"import sqlite3, random; c = sqlite3.connect({str(db)!r}); c.execute('pragma cache_size=-200000');"
        "c.execute('create table t(a integer, b text)');"
        "r = random.Random(1); c.executemany('insert into t values (?, ?)', "
        f"((r.getrandbits(48), str(r.random())) for _ in range({rows})));"
        "c.execute('create index ia on t(a)'); c.execute('create index ib on t(b)'); c.commit()"
    )
    peak = measure([PY, "-c", code])
    db.unlink(missing_ok=True)
    return peak, rows * 40  # proxy: about 40 bytes per row of input


def w_nlp(size: int | None, work: Path) -> tuple[float, int | None]:
    assert size is not None
    docs = size * 1000
    argv = [PY, "-m", "components.nlp_engine", "--docs", str(docs), "--cache-mb", "5"]
    return measure(argv, stop_on='"event": "ready"', cwd=REPO), docs * 400  # proxy: ~400 bytes per document


def w_voice(size: int | None, work: Path) -> tuple[float, int | None]:
    return measure([PY, "-m", "components.voice_engine", "--cache-mb", "5"], stop_on='"event": "ready"', cwd=REPO), None


def w_chatbot(size: int | None, work: Path) -> tuple[float, int | None]:
    sock = work / "chat.sock"
    return measure([PY, "-m", "components.chatbot", "--socket", str(sock)], stop_on='"event": "ready"', cwd=REPO), None


WORKLOADS: dict[str, tuple[float, list[int] | None, Callable[[int | None, Path], tuple[float, int | None]]]] = {
    "python_imports": (60, None, w_imports),
    "load_array": (150, [40, 60, 80, 120, 160, 200], w_load_array),
    "sort": (100, [40, 60, 80, 120, 160, 200], w_sort),
    "xz": (100, [10, 20, 40], w_xz),
    "sqlite_index": (50, [2, 4, 6, 8], w_sqlite),
    "nlp_engine": (180, [5, 10, 20, 30, 40], w_nlp),
    "voice_engine": (100, None, w_voice),
    "chatbot": (40, None, w_chatbot),
}
INPUT_WORKLOADS = {"load_array", "sort", "sqlite_index", "nlp_engine"}


def record(runs: int, seed: int) -> None:
    rng = random.Random(seed)
    traces: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="icw-trace-", dir="/tmp") as tmp:
        work = Path(tmp)
        for name, (estimate, sizes, fn) in WORKLOADS.items():
            entries = []
            for i in range(runs):
                # Sizes drift upwards with noise, as a user's data grows: a hard case for history alone.
                size = (
                    None
                    if sizes is None
                    else sizes[min(len(sizes) - 1, max(0, int(i * len(sizes) / runs) + rng.choice((-1, 0, 0, 1))))]
                )
                peak, inputs = fn(size, work)
                entries.append({"peak_mb": round(peak, 1), "inputs_bytes": inputs, "size": size})
                print(f"{name:>15} run {i + 1:>2}: size {size!s:>4}  peak {peak:7.1f} MB", file=sys.stderr)
            traces[name] = {"estimate_mb": estimate, "runs": entries}
    TRACES.parent.mkdir(parents=True, exist_ok=True)
    TRACES.write_text(json.dumps({"recorded_unix": time.time(), "workloads": traces}, indent=1))
    print(f"wrote {TRACES}", file=sys.stderr)


# --- evaluation -------------------------------------------------------------------------------


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


BASELINES: dict[str, Callable[[list[float], float], float]] = {
    "static estimate": lambda peaks, est: est,
    "last peak": lambda peaks, est: peaks[-1],
    "max + 10 %": lambda peaks, est: max(peaks) * 1.10,
    "VPA (P95 + 15 %)": lambda peaks, est: p95(peaks) * 1.15,
}


def evaluate() -> None:
    data = json.loads(TRACES.read_text())["workloads"]
    names = ["ironcliw", *BASELINES]
    rows: dict[str, dict[str, list[tuple[float, float]]]] = {
        n: {} for n in names
    }  # predictor -> workload -> (pred, actual)
    for wl, trace in data.items():
        est = float(trace["estimate_mb"])
        runs = trace["runs"]
        history: list[RunRecord] = []
        for k, run in enumerate(runs):
            actual = run["peak_mb"]
            if k >= 1:  # walk forward: predict run k from runs 1..k-1
                peaks = [r.peak_mb for r in history]
                ours = predict(history, est, run["inputs_bytes"]).peak_mb
                rows["ironcliw"].setdefault(wl, []).append((ours, actual))
                for bname, fn in BASELINES.items():
                    rows[bname].setdefault(wl, []).append((fn(peaks, est), actual))
            predicted_for_this = predict(history, est, run["inputs_bytes"]).peak_mb
            history.append(
                RunRecord(
                    started_unix=float(k),
                    peak_mb=actual,
                    inputs_bytes=run["inputs_bytes"],
                    predicted_mb=predicted_for_this,
                )
            )

    def stats(pairs: list[tuple[float, float]]) -> tuple[float, float, float]:
        under = sum(1 for p, a in pairs if a > p) / len(pairs)
        severe = sum(1 for p, a in pairs if a > 1.1 * p) / len(pairs)
        slack = statistics.median((p - a) / p for p, a in pairs)
        return under, severe, slack

    groups = {
        **{wl: [wl] for wl in data},
        "input-size workloads": sorted(INPUT_WORKLOADS & set(data)),
        "overall": list(data),
    }
    print(f"{'workload':<22} {'predictor':<18} {'under':>7} {'severe':>7} {'median slack':>13}   n")
    for group, members in groups.items():
        for n in names:
            pairs = [pr for wl in members for pr in rows[n].get(wl, [])]
            if not pairs:
                continue
            under, severe, slack = stats(pairs)
            print(f"{group:<22} {n:<18} {under:>6.0%} {severe:>7.0%} {slack:>12.1%}   {len(pairs)}")
        print()


def evaluate_trend(seed: int = 1) -> None:
    """The leak detector on series at the monitor's cadence (one point per 2 s, 10 minutes
    kept), fed through the same `trend()` the monitor runs every 10 s. Synthetic series: a
    real hour-long leak per run would make the benchmark take hours."""
    from supervisor.monitor import LEAK_CHECK_EVERY_S, TREND_EVERY_S
    from supervisor.predictor import trend

    rng = random.Random(seed)
    window = 300
    print(f"{'series':<44} {'leak rate':>10} {'lead time / alarms':>20}")
    for rate in (1.0, 2.0, 5.0, 20.0):  # MB per minute
        points: list[tuple[float, float]] = []
        detected = None
        t = 0.0
        while t < 3600 and detected is None:
            points.append((t, 300.0 + rate * t / 60 + rng.uniform(-0.3, 0.3)))
            points = points[-window:]
            if t % LEAK_CHECK_EVERY_S == 0 and trend(points, idle=True).leak:
                detected = t
            t += TREND_EVERY_S
        grown = rate * (detected or 0) / 60
        shown = f"{detected:.0f} s ({grown:.0f} MB grown)" if detected is not None else "not within an hour"
        print(f"{'steady leak from t=0':<44} {rate:>6.1f} MB/min {shown:>20}")
    for period in (20.0, 60.0, 300.0):  # s: allocate for a period, free, repeat
        alarms = 0
        points = []
        t = 0.0
        while t < 3600:
            level = 300.0 + 100.0 * ((t % period) / period) + rng.uniform(-0.5, 0.5)
            points.append((t, level))
            points = points[-window:]
            if t % LEAK_CHECK_EVERY_S == 0 and trend(points, idle=True).leak:
                alarms += 1
            t += TREND_EVERY_S
        print(f"{f'sawtooth 0-100 MB, period {period:.0f} s, 1 hour':<44} {'-':>10} {f'{alarms} false verdicts':>20}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["record", "evaluate", "trend"])
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    if args.command == "trend":
        evaluate_trend()
        return
    if args.command == "record":
        record(args.runs, args.seed)
    evaluate()


if __name__ == "__main__":
    main()
