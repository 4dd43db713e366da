"""Where the supervisor's RSS goes: the imports of `ironcliw up`, step by step, in one fresh
interpreter (as `up` does them: OpenSSL's hash module and greenlet refused, as `up` refuses them
for its whole life).

    .venv/bin/python bench/bench_imports.py

Each row is the RSS after importing that step and everything above it, and what the step
added. The first row is the bare interpreter (with site); the web framework and
prometheus_client rows are what the first HTTP request and the first /metrics scrape add.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

STEPS = [
    ("python (site)", ""),
    ("msgspec", "import msgspec, msgspec.json, msgspec.msgpack"),
    ("ssl, OpenSSL (asyncio, anyio import it)", "import ssl"),
    ("asyncio", "import asyncio"),
    ("anyio", "import anyio, anyio.abc, anyio._core._sockets"),
    ("structlog", "import structlog"),
    (
        "the supervisor (core, control, cli)",
        "import supervisor.cli, supervisor.core, supervisor.control, supervisor.logsetup",
    ),
    ("the HTTP server (httptools)", "import supervisor.http.server"),
    ("first request: Starlette and the app", "import supervisor.http.app, supervisor.http.security"),
    ("first scrape: prometheus_client", "import supervisor.http.metrics"),
    ("with [proxy] enabled: the door, aiohttp", "import supervisor.http.door, aiohttp, yarl"),
]

PROBE = """
import sys
for name in ("_hashlib", "greenlet"):
    sys.modules[name] = None
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
steps = {steps!r}
out = []
for label, code in steps:
    exec(code)
    out.append((label, rss()))
print(repr(out))
"""


def main() -> None:
    if not sys.platform.startswith("linux"):
        sys.exit("reads /proc/self/status: Linux only")
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(steps=STEPS)], cwd=REPO, capture_output=True, text=True, check=True
    )
    rows = eval(result.stdout)  # our own probe's repr of (str, float) pairs
    print(f"{'step':40} {'RSS after (MB)':>15} {'added (MB)':>11}")
    last = 0.0
    for label, rss in rows:
        print(f"{label:40} {rss:>15.1f} {rss - last if last else 0.0:>11.1f}")
        last = rss


if __name__ == "__main__":
    main()
