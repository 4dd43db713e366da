"""Sampling cost per process: the supervisor's tree walk beside naive psutil.

    .venv/bin/python bench/bench_sampling.py

For 10, 100 and 1000 processes (10 trees of sleeping children), measures one full sample of
every tree's RSS:
- ironcliw: `procs.tree_usage` (Linux: /proc/PID/task/*/children + /proc/PID/statm, walked
  down from the roots, one pass);
- naive psutil: `Process(root).children(recursive=True)` and `memory_info()` per process.
Median and range over 30 samples each, in the same run. Target: at most 20 us per process.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from supervisor import procs  # noqa: E402

TREES = 10
RUNS = 30


def spawn_trees(total: int) -> list[subprocess.Popen[bytes]]:
    per_tree = total // TREES - 1  # children under each root
    script = f"for i in $(seq {per_tree}); do sleep 600 & done; wait"
    roots = [subprocess.Popen(["sh", "-c", script], start_new_session=True) for _ in range(TREES)]
    deadline = time.monotonic() + 60
    while sum(len(psutil.Process(r.pid).children()) for r in roots) < per_tree * TREES:
        if time.monotonic() > deadline:
            raise TimeoutError("children did not start")
        time.sleep(0.05)
    return roots


def naive(roots: dict[str, int]) -> int:
    total = 0
    for pid in roots.values():
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
    return total


def ours(roots: dict[str, int]) -> int:
    return sum(t.rss_bytes for t in procs.tree_usage(roots).values())


def measure(fn, roots: dict[str, int]) -> list[float]:  # type: ignore[no-untyped-def]
    fn(roots)  # warm caches
    times = []
    for _ in range(RUNS):
        t = time.perf_counter()
        fn(roots)
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    print(f"{'processes':>9}  {'ironcliw per sample':>22}  {'per process':>12}  {'naive psutil per sample':>24}  {'per process':>12}  {'speed-up':>8}")
    for total in (10, 100, 1000):
        roots_procs = spawn_trees(total)
        try:
            roots = {f"t{i}": p.pid for i, p in enumerate(roots_procs)}
            count = sum(t.processes for t in procs.tree_usage(roots).values())
            a = measure(ours, roots)
            b = measure(naive, roots)
            ma, mb = statistics.median(a), statistics.median(b)
            print(
                f"{count:>9}  {ma * 1e3:>9.3f} ms ({min(a) * 1e3:.2f}-{max(a) * 1e3:.2f})  {ma / count * 1e6:>9.1f} us"
                f"  {mb * 1e3:>10.3f} ms ({min(b) * 1e3:.2f}-{max(b) * 1e3:.2f})  {mb / count * 1e6:>9.1f} us  {mb / ma:>7.1f}x"
            )
        finally:
            for p in roots_procs:
                for child in psutil.Process(p.pid).children(recursive=True):
                    child.kill()
                p.kill()
                p.wait()


if __name__ == "__main__":
    main()
