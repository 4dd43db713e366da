"""Prediction on work it was not tuned on: workload families recorded as real processes,
then a walk-forward evaluation with the supervisor's predictor (as admission calls it) and
four baselines, with the coverage each achieves.

    .venv/bin/python bench/bench_families.py record     # writes bench/traces/families.json
    .venv/bin/python bench/bench_families.py evaluate

Families (30 runs each, one Python process per run, sizes drawn from a seeded generator):
- short_batch: a job that allocates 120-160 MB and exits within 0.3 s (status 0), before
  the default readiness (alive 1 s) could call it ready;
- undeclared_growth: the input grows from 40 to 200 MB across runs, not declared as `inputs`;
- bimodal_server: a server whose context is short (about 150 MB) or long (about 260 MB) at random;
- outlier: a steady 120 MB with one run at 3x;
- slow_growth: 100 MB growing 1.5 % a run;
- mapped_input: maps a 200 MB input, reads it once, then keeps re-reading its first 8 MB,
  with 40 MB of its own; its need (own memory and the pages it keeps touching) is measured
  with the supervisor's own reading (procs.tree_hot_file_bytes).

Each run's peak is the kernel's VmHWM of the process, read every 5 ms until it exits.
`evaluate` prints, per family and overall: under-predictions (actual > predicted), severe
ones (actual > 1.1 x predicted), the median slack ((predicted - actual) / predicted) and the
coverage (share not under-predicted), for the predictor at `prediction_coverage` 0.95 and the
static estimate, the last peak, the max + 10 % and VPA-style (P95 + 15 %).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_prediction import BASELINES, measure  # noqa: E402
from bench.common import REPO  # noqa: E402
from supervisor import procs  # noqa: E402
from supervisor.model import RunRecord  # noqa: E402
from supervisor.predictor import predict  # noqa: E402

TRACES = REPO / "bench" / "traces" / "families.json"
RUNS = 30
PY = sys.executable
MB = 1 << 20
ALLOCATE = (
    "import time, sys; data = [b'x' * (1 << 20) for _ in range(int(sys.argv[1]))]; time.sleep(float(sys.argv[2]))"
)
MAPPED = """
import mmap, sys, time
f = open(sys.argv[1], "rb")
m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
own = [b"y" * (1 << 20) for _ in range(40)]
total = sum(m[i] for i in range(0, len(m), 4096))
print("ready", flush=True)
end = time.monotonic() + 1.0
while time.monotonic() < end:
    total += sum(m[i] for i in range(0, 8 << 20, 4096))
    time.sleep(0.02)
"""


def allocate(mb: float, seconds: float = 0.3) -> dict[str, object]:
    peak = measure([PY, "-c", ALLOCATE, str(int(mb)), str(seconds)])
    return {"peak_mb": round(peak, 1), "clean_exit": True, "ready": seconds >= 1.0}


def mapped(path: Path) -> dict[str, object]:
    """Peak, and the split the supervisor records: anonymous and file-backed peaks, and the
    file-backed memory touched after `ready`."""
    proc = subprocess.Popen([PY, "-c", MAPPED, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()
    procs.tree_hot_file_bytes(proc.pid)  # the window starts at ready, as the supervisor's does
    anon = file = hot = peak = 0
    while proc.poll() is None:
        status = {k: v for k, _, v in (line.partition(":") for line in open(f"/proc/{proc.pid}/status"))}
        try:
            anon = max(anon, int(status["RssAnon"].split()[0]) * 1024)
            file = max(file, int(status["RssFile"].split()[0]) * 1024)
            peak = max(peak, procs.tree_hwm_bytes(proc.pid) or 0)
            hot = max(hot, procs.tree_hot_file_bytes(proc.pid) or 0)
        except (KeyError, OSError):
            break
        time.sleep(0.25)
    proc.wait()
    proc.stdout.close()
    return {
        "peak_mb": round(peak / MB, 1),
        "anon_peak_mb": round(anon / MB, 1),
        "file_peak_mb": round(file / MB, 1),
        "hot_file_mb": round(hot / MB, 1),
        "ready": True,
    }


def record(seed: int) -> None:
    rng = random.Random(seed)
    families: dict[str, dict[str, object]] = {}
    outlier_at = rng.randrange(8, 20)
    makers: dict[str, tuple[float, Callable[[int], dict[str, object]]]] = {
        "short_batch": (20, lambda i: allocate(rng.uniform(120, 160))),
        "undeclared_growth": (100, lambda i: allocate(40 + 160 * i / (RUNS - 1) * rng.uniform(0.95, 1.05), 1.0)),
        "bimodal_server": (
            150,
            lambda i: allocate((240 if rng.random() < 0.3 else 140) * rng.uniform(0.97, 1.03), 1.0),
        ),
        "outlier": (100, lambda i: allocate(120 * (3 if i == outlier_at else rng.uniform(0.97, 1.03)), 1.0)),
        "slow_growth": (100, lambda i: allocate(100 * 1.015**i, 1.0)),
    }
    for name, (estimate, make) in makers.items():
        runs = [make(i) for i in range(RUNS)]
        families[name] = {"estimate_mb": estimate, "runs": runs}
        print(f"{name:>18}: peaks {[r['peak_mb'] for r in runs]}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="icw-fam-", dir="/tmp") as tmp:
        path = Path(tmp) / "input.bin"
        path.write_bytes(bytes(range(256)) * (200 << 12))
        runs = [mapped(path) for _ in range(RUNS)]
    families["mapped_input"] = {"estimate_mb": 100, "runs": runs}
    print(f"{'mapped_input':>18}: {runs[0]}", file=sys.stderr)
    TRACES.write_text(json.dumps({"recorded_unix": time.time(), "families": families}, indent=1))
    print(f"wrote {TRACES}", file=sys.stderr)


def as_record(k: int, run: dict[str, object], predicted: float) -> RunRecord:
    return RunRecord(
        started_unix=float(k),
        peak_mb=float(run["peak_mb"]),  # type: ignore[arg-type]
        time_to_ready_s=1.0 if run.get("ready") else None,
        clean_exit=bool(run.get("clean_exit")),
        anon_peak_mb=run.get("anon_peak_mb"),  # type: ignore[arg-type]
        file_peak_mb=run.get("file_peak_mb"),  # type: ignore[arg-type]
        hot_file_mb=run.get("hot_file_mb"),  # type: ignore[arg-type]
        predicted_mb=predicted,
    )


def evaluate(coverage: float = 0.95) -> None:
    families = json.loads(TRACES.read_text())["families"]
    names = ["ironcliw", *BASELINES]
    pairs: dict[str, dict[str, list[tuple[float, float]]]] = {n: {} for n in names}
    for family, trace in families.items():
        est, history = float(trace["estimate_mb"]), []
        for k, run in enumerate(trace["runs"]):
            # What admission uses: runs that became ready or ended cleanly, by their need.
            usable = [r for r in history if r.time_to_ready_s is not None or r.clean_exit]
            ours = predict(usable, est, None, coverage).peak_mb
            record = as_record(k, run, ours)
            if k >= 1:
                peaks = [r.peak_mb for r in history]
                pairs["ironcliw"].setdefault(family, []).append((ours, record.need_mb))
                for name, baseline in BASELINES.items():
                    pairs[name].setdefault(family, []).append((baseline(peaks, est), record.need_mb))
            history.append(record)
    print(f"{'family':<20} {'predictor':<18} {'under':>7} {'severe':>7} {'median slack':>13} {'coverage':>9}   n")
    groups = {**{f: [f] for f in families}, "overall": list(families)}
    for group, members in groups.items():
        for name in names:
            got = [p for f in members for p in pairs[name][f]]
            under = sum(1 for p, a in got if a > p) / len(got)
            severe = sum(1 for p, a in got if a > 1.1 * p) / len(got)
            slack = statistics.median((p - a) / p for p, a in got)
            print(f"{group:<20} {name:<18} {under:>6.0%} {severe:>7.0%} {slack:>12.1%} {1 - under:>9.0%}   {len(got)}")
        print()
    print(
        f"(actual: each run's need, its peak less the mapped pages it did not keep touching; target coverage {coverage:.0%})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["record", "evaluate"])
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    if args.command == "record":
        record(args.seed)
    else:
        evaluate()


if __name__ == "__main__":
    main()
