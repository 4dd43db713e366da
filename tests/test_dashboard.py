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
        estimated_mb = 40
        ready = {{ log_pattern = '"event": "ready"' }}
        """
    )
    stack.up()
    stack.wait_state("balloon", "READY")
    errors: list[str] = []
    with sync_playwright() as pw:
        browser, page = open_dashboard(pw, port, errors)
        try:
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
            assert page.locator("#state").inner_text().split()[0] in ("HEALTHY", "WARNING")
            # A time axis in seconds, not sample numbers.
            ticks = page.locator("text.tick").all_text_contents()
            assert "now" in ticks and any(t.startswith("-") and t.endswith(" s") for t in ticks), ticks
            # Its predicted peak (the 40 MB estimate) is a line; grown past it, it is flagged.
            page.locator('line[data-prediction="balloon"]').wait_for(state="attached")
            row.locator("td").nth(4).filter(has_text="(over)").wait_for(timeout=10_000)
            assert "over" in (row.get_attribute("class") or "")
            if os.environ.get("IRONCLIW_SCREENSHOT"):
                page.screenshot(path=os.environ["IRONCLIW_SCREENSHOT"])
            row.locator('button[data-action="unload"]').click()
            stack.wait_state("balloon", "STOPPED", timeout=20)
            page.locator('tr[data-component="balloon"] button[data-action="load"]').wait_for(timeout=10_000)
            stopped = page.locator('tr[data-component="balloon"]')
            assert stopped.locator("td").nth(5).inner_text() == "-"  # a stopped component has no trend
            assert page.locator('line[data-prediction="balloon"]').count() == 0
        finally:
            browser.close()
    assert errors == []


def open_dashboard(pw, port: int, errors: list[str]):  # type: ignore[no-untyped-def]
    """Debian's Chromium, headless, on the dashboard; console and page errors go to `errors`."""
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
    browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=[*args, "--no-first-run", "--disable-sync"])
    page = browser.new_page(viewport={"width": 1000, "height": 760})
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"http://127.0.0.1:{port}/memory_dashboard.html")
    return browser, page


def test_the_whole_machine_view_shows_the_stack_and_a_waiting_component(make_stack: StackFactory) -> None:
    """No budget: the scale is the stack's, not the machine's gigabytes; a component that
    `up` holds back shows WAITING and what for; the badge explains a held state."""
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stack = make_stack(
        f"""
        [memory]
        sample_interval_s = 0.5
        [http]
        port = {port}
        [components.chatbot]
        command = {SLEEPER}
        priority = "CRITICAL"
        estimated_mb = 30
        ready = {{ log_pattern = "ready" }}
        [components.giant]
        command = {SLEEPER}
        priority = "LOW"
        estimated_mb = 10000000
        ready = {{ log_pattern = "ready" }}
        """
    )
    stack.up()
    stack.wait_state("chatbot", "READY")
    stack.wait_state("giant", "WAITING")
    errors: list[str] = []
    with sync_playwright() as pw:
        browser, page = open_dashboard(pw, port, errors)
        try:
            giant = page.locator('tr[data-component="giant"]')
            giant.wait_for()
            assert giant.locator("td").nth(1).inner_text().startswith("WAITING: waits for ")
            page.locator("#y-max").wait_for()
            total_mb = stack.call("memory")["system_total_mb"]
            y_max = float((page.locator("#y-max").text_content() or "").split()[0])
            assert y_max < total_mb / 10, (y_max, total_mb)  # the stack's scale, not the machine's
            assert "above the stack" in (page.locator("#scale-note").text_content() or "")
            held = page.evaluate(
                """badgeText({state: "CRITICAL", percent_used: 84.0, hysteresis_percent: 3, hold_s: 5,
                              thresholds: {warning: 70, critical: 85, emergency: 95}})"""
            )
            assert held == "CRITICAL until 82 % for 5 s"
            assert (
                page.evaluate(
                    "badgeText({state: 'HEALTHY', percent_used: 10, hysteresis_percent: 3, hold_s: 5, thresholds: {warning: 70}})"
                )
                == "HEALTHY"
            )
            if os.environ.get("IRONCLIW_SCREENSHOT_MACHINE"):
                page.wait_for_timeout(3000)
                page.screenshot(path=os.environ["IRONCLIW_SCREENSHOT_MACHINE"])
        finally:
            browser.close()
    assert errors == []
