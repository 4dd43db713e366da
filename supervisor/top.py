"""`ironcliw top`: a live terminal view of memory and components, like htop.

It reads `report` from the control socket once a second (a terminal client, not a page:
one small request a second costs the supervisor ~0.1 ms) and draws it with curses. `q` or
Ctrl-C quits and restores the terminal.
"""

from __future__ import annotations

import curses
import time
from typing import Any

from .client import ControlClient

COLUMNS = [
    ("NAME", 14, "name"),
    ("STATE", 9, "state"),
    ("PRIORITY", 9, "priority"),
    ("RSS_MB", 8, "rss_mb"),
    ("PEAK_MB", 8, "peak_mb"),
    ("PRED_MB", 8, "predicted_mb"),
    ("MB/MIN", 7, "trend_mb_per_min"),
    ("LAST_EXIT", 40, "last_exit"),
]
STATE_COLOR = {"HEALTHY": 1, "WARNING": 2, "CRITICAL": 3, "EMERGENCY": 3}


def run_top(socket_path: str, interval_s: float = 1.0) -> int:
    try:
        curses.wrapper(_loop, socket_path, interval_s)
    except KeyboardInterrupt:
        pass
    return 0


def _loop(screen: curses.window, socket_path: str, interval_s: float) -> None:
    curses.curs_set(0)
    screen.timeout(100)  # getch waits at most 100 ms, so q answers at once
    if curses.has_colors():
        curses.use_default_colors()
        for n, color in ((1, curses.COLOR_GREEN), (2, curses.COLOR_YELLOW), (3, curses.COLOR_RED)):
            curses.init_pair(n, color, -1)
    with ControlClient(socket_path, timeout=5.0) as client:
        report: dict[str, Any] = client.call("report")
        fetched = time.monotonic()
        while True:
            _draw(screen, report)
            key = screen.getch()
            if key in (ord("q"), ord("Q")):
                return
            if time.monotonic() - fetched >= interval_s:
                report = client.call("report")
                fetched = time.monotonic()


def _fmt(value: Any, width: int) -> str:
    if value is None:
        text = "-"
    elif isinstance(value, float):
        text = f"{value:.1f}"
    else:
        text = str(value)
    return text[:width].ljust(width)


def _draw(screen: curses.window, r: dict[str, Any]) -> None:
    screen.erase()
    height, width = screen.getmaxyx()

    def put(y: int, x: int, text: str, attr: int = 0) -> None:
        if 0 <= y < height and x < width:
            screen.addnstr(y, x, text, max(0, width - x - 1), attr)

    color = curses.color_pair(STATE_COLOR.get(r["state"], 0)) | curses.A_BOLD if curses.has_colors() else curses.A_BOLD
    put(0, 0, "ironcliw top", curses.A_BOLD)
    put(0, 14, f" {r['state']} ", color | curses.A_REVERSE)
    budget = f" of a {r['budget_mb']} MB budget" if r.get("budget_mb") else ""
    put(
        0,
        27,
        f"{r['percent_used']:.1f} % used{budget}, {r['available_mb']:.0f} MB available, stack {r['stack_mb']:.0f} MB",
    )
    s = r["system"]
    put(
        1,
        0,
        f"system {s['used_percent']:.1f} % of {s['total_mb']:.0f} MB, swap {s['swap_used_mb']:.0f} MB, "
        f"PSI some {s['psi_some_avg10']}, supervisor {r['supervisor_rss_mb']} MB,"
        f" sample {r['sample_ms']} ms   (q quits)",
    )
    put(3, 0, " ".join(h.ljust(w) for h, w, _ in COLUMNS), curses.A_REVERSE)
    y = 4
    for c in r["components"]:
        put(y, 0, " ".join(_fmt(c.get(key), w) for _, w, key in COLUMNS))
        y += 1
    y += 1
    put(y, 0, "recent actions", curses.A_BOLD)
    for a in reversed(r["recent_actions"][-(height - y - 2) :]):
        y += 1
        put(y, 0, f"{a['kind']:<7} {a['component']:<14} {a['outcome']:<14} {a['reason']}")
    screen.refresh()
