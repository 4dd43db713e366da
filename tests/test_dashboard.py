"""The dashboard in real headless Chromium (Debian's, driven by Playwright)."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import REPO, SLEEPER, Stack

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's chromium (.ci/run installs it; apt-get install chromium)"
    ),
]
StackFactory = Callable[[str], Stack]


def test_dashboard_shows_a_growing_balloon_and_unloads_it(make_stack: StackFactory) -> None:
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stack = make_stack(
        f"""
        [memory]
        budget_mb = 1000
        sample_interval_s = 0.5
        [http]
        port = {port}
        [components.chatbot]
        command = {SLEEPER}
        priority = "CRITICAL"
        ready = {{ log_pattern = "ready" }}
        [components.balloon]
        command = ["python", "-m", "components.balloon", "--rate-mb-s", "40", "--cap-mb", "300", "--start-delay-s", "2"]
        cwd = {json.dumps(str(REPO))}
        priority = "LOW"
        ready = {{ log_pattern = '"event": "ready"' }}
        """
    )
    stack.up()
    stack.wait_state("balloon", "READY")
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 760})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"http://127.0.0.1:{port}/memory_dashboard.html")
            row = page.locator('tr[data-component="balloon"]')
            row.wait_for()
            rss = lambda: float(row.locator("td").nth(3).inner_text())  # noqa: E731
            area = page.locator('path[data-component="balloon"]')
            area.wait_for()
            first_rss, first_area = rss(), area.get_attribute("d")
            deadline = time.monotonic() + 30
            while rss() < first_rss + 50 and time.monotonic() < deadline:
                page.wait_for_timeout(250)
            assert rss() >= first_rss + 50, "the table did not follow the balloon"
            assert area.get_attribute("d") != first_area, "the chart did not change"
            assert page.locator("#state").inner_text() in ("HEALTHY", "WARNING")
            if os.environ.get("IRONCLIW_SCREENSHOT"):
                page.screenshot(path=os.environ["IRONCLIW_SCREENSHOT"])
            row.locator('button[data-action="unload"]').click()
            stack.wait_state("balloon", "STOPPED", timeout=20)
            page.locator('tr[data-component="balloon"] button[data-action="load"]').wait_for(timeout=10_000)
        finally:
            browser.close()
    assert errors == []
