"""Balloon: allocates and touches memory at a set rate up to a cap (LOW priority, tests and demos).

Each step logs `allocated` with `total_mb`, its own `rss_mb` and both clocks (`t_mono`,
`t_unix`), so a test or benchmark can tell exactly when the balloon crossed a threshold. The trim signal frees
everything (`trimmed`); afterwards it holds at zero unless `--after-trim regrow`.

    python -m components.balloon --rate-mb-s 50 --cap-mb 200 --step-mb 4
"""

from __future__ import annotations

import argparse
import time

from ._common import Signals, logger, rss_mb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate-mb-s", type=float, default=20.0, help="allocation rate (MB/s)")
    parser.add_argument("--cap-mb", type=float, default=100.0, help="stop growing at this size")
    parser.add_argument("--step-mb", type=float, default=2.0, help="size of each allocation")
    parser.add_argument("--start-delay-s", type=float, default=0.0, help="wait this long before growing")
    parser.add_argument("--after-trim", choices=["hold", "regrow"], default="hold")
    args = parser.parse_args()
    log = logger("balloon")
    sig = Signals()
    step = int(args.step_mb * 1048576)
    chunks: list[bytes] = []
    total = 0
    growing = True
    log.info("ready", rate_mb_s=args.rate_mb_s, cap_mb=args.cap_mb, step_mb=args.step_mb, rss_mb=round(rss_mb(), 1))
    if sig.stop.wait(args.start_delay_s):
        return 0
    started = time.monotonic()
    while not sig.stop.is_set():
        if sig.take_trim():
            freed = total / 1048576
            chunks.clear()
            total = 0
            growing = args.after_trim == "regrow"
            started = time.monotonic()
            log.info("trimmed", freed_mb=round(freed, 1), rss_mb=round(rss_mb(), 1))
        if growing and total + step <= args.cap_mb * 1048576:
            # Pace by the clock, not by sleeps, so the rate holds even when a step is slow.
            due = started + (total + step) / 1048576 / args.rate_mb_s
            if sig.stop.wait(max(0.0, due - time.monotonic())) or sig.trim.is_set():
                continue
            t_start = time.time()
            chunks.append(b"\x01" * step)  # bytes * n is a memset: every page is touched
            total += step
            log.info(
                "allocated",
                total_mb=round(total / 1048576, 2),
                t_start_unix=t_start,  # when this step began touching memory
                rss_mb=round(rss_mb(), 2),  # what the supervisor will read for this process
                t_mono=time.monotonic(),
                t_unix=time.time(),
            )
        else:
            sig.stop.wait(0.05)
    log.info("stopping", total_mb=round(total / 1048576, 1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
