"""Sampling cost per process: the supervisor's tree walk beside naive psutil.

    .venv/bin/python bench/bench_sampling.py

For 10, 100 and 1000 processes (10 trees of sleeping children), measures one full sample of
every tree's RSS:
- ironcliw one-off: `procs.tree_usage` (Linux: statm, the task directory's link count and
  the children list per process, walked down from the roots, one pass, files opened and
  closed each time);
- ironcliw sampling loop: `procs.TreeSampler`, the same walk through descriptors kept open
  between samples (as many as a ninth of the soft RLIMIT_NOFILE allows, three per process);
- loop, PIDs unchanged: the same sampler left to itself; nothing forks meanwhile, so it
  re-reads the members' statm without walking (`walks`: how many of the 31 samples walked);
- naive psutil: `Process(root).children(recursive=True)` and `memory_info()` per process.
Median and range over 30 samples each, in the same run (speed-up: naive / loop, walking).
Target: at most 20 us per process.
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
    # The root execs into a sleep of its own: with no children, `wait` would return at once
    # and leave a zombie root (the 10-process row measured zombies that way).
    script = f"for i in $(seq {per_tree}); do sleep 600 & done; exec sleep 600"
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


def kept_sampler(roots: dict[str, int], walk: bool):  # type: ignore[no-untyped-def]
    sampler = procs.TreeSampler()

    def sample(r: dict[str, int]) -> int:
        if walk:
            sampler.rewalk()
        return sum(t.rss_bytes for t in sampler.usage(r).values())

    return sample, sampler


def measure(fn, roots: dict[str, int]) -> list[float]:  # type: ignore[no-untyped-def]
    fn(roots)  # warm caches
    times = []
    for _ in range(RUNS):
        t = time.perf_counter()
        fn(roots)
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    print(
        f"{'processes':>9}  {'ironcliw one-off':>22}  {'per process':>12}  {'ironcliw loop (kept fds)':>24}  {'per process':>12}"
        f"  {'loop, PIDs unchanged':>20}  {'per process':>9} {'walks':>5}  {'naive psutil per sample':>24}  {'per process':>12}  {'speed-up':>8}"
    )
    for total in (10, 100, 1000):
        roots_procs = spawn_trees(total)
        try:
            roots = {f"t{i}": p.pid for i, p in enumerate(roots_procs)}
            count = sum(t.processes for t in procs.tree_usage(roots).values())
            a = measure(ours, roots)
            loop, sampler = kept_sampler(roots, walk=True)
            k = measure(loop, roots)
            sampler.close()
            reread, sampler = kept_sampler(roots, walk=False)
            r = measure(reread, roots)
            walks = sampler.walks
            sampler.close()
            b = measure(naive, roots)
            ma, mk, mr, mb = (statistics.median(x) for x in (a, k, r, b))
            print(
                f"{count:>9}  {ma * 1e3:>9.3f} ms ({min(a) * 1e3:.2f}-{max(a) * 1e3:.2f})  {ma / count * 1e6:>9.1f} us"
                f"  {mk * 1e3:>11.3f} ms ({min(k) * 1e3:.2f}-{max(k) * 1e3:.2f})  {mk / count * 1e6:>9.1f} us"
                f"  {mr * 1e3:>7.3f} ms ({min(r) * 1e3:.2f}-{max(r) * 1e3:.2f})  {mr / count * 1e6:>6.1f} us {walks:>5}"
                f"  {mb * 1e3:>10.3f} ms ({min(b) * 1e3:.2f}-{max(b) * 1e3:.2f})  {mb / count * 1e6:>9.1f} us  {mb / mk:>7.1f}x"
            )
        finally:
            for p in roots_procs:
                for child in psutil.Process(p.pid).children(recursive=True):
                    child.kill()
                p.kill()
                p.wait()


if __name__ == "__main__":
    main()
