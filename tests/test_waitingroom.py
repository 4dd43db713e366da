"""Admission at `up`, on real processes under a budget: components start in priority order
while their predicted peaks fit below WARNING; the rest wait, visibly, and start when room
appears, highest priority first; CRITICAL always starts; a person may act on a waiting one."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.helpers import HOG_CODE, SLEEPER, Stack, python_command, wait_until

StackFactory = Callable[[str], Stack]
pytestmark = pytest.mark.timeout(90)


def config(first_big_mb: int) -> str:
    # budget 300 MB: WARNING at 210 MB. The HIGH hog really holds first_big_mb; after it, the
    # MEDIUM one (estimate 100 MB) does not fit, and the LOW one waits behind it.
    return f"""
        [memory]
        budget_mb = 300
        sample_interval_s = 0.2
        [components.extra]
        command = {SLEEPER}
        priority = "LOW"
        estimated_mb = 10
        ready = {{ log_pattern = "ready" }}
        [components.second]
        command = {SLEEPER}
        priority = "MEDIUM"
        estimated_mb = 100
        ready = {{ log_pattern = "ready" }}
        [components.big]
        command = {python_command(HOG_CODE.format(mb=first_big_mb))}
        priority = "HIGH"
        estimated_mb = {first_big_mb}
        ready = {{ log_pattern = "^ready" }}
        [components.guard]
        command = {SLEEPER}
        priority = "CRITICAL"
        estimated_mb = 250
        ready = {{ log_pattern = "ready" }}
        """


def test_up_starts_what_fits_in_priority_order_and_the_rest_waits_for_room(make_stack: StackFactory) -> None:
    stack = make_stack(config(first_big_mb=150))
    stack.up()
    stack.wait_state("guard", "READY")  # CRITICAL: always starts, though its 250 MB estimate does not fit
    stack.wait_state("big", "READY")  # HIGH first: 150 MB fits
    second = stack.wait_state("second", "WAITING")
    assert second["pid"] is None and second["waiting"].startswith("waits for 100 MB, ")
    assert second["waiting"].endswith("MB free before WARNING")
    extra = stack.wait_state("extra", "WAITING")
    assert extra["waiting"] == "waits behind second, which waits for room"  # LOW waits behind MEDIUM
    table = stack.cli("status")
    assert "WAITING" in table.stdout and "waits for 100 MB" in table.stdout
    # Room appears: the HIGH hog goes; MEDIUM starts first, then LOW.
    stack.call("unload", name="big")
    stack.wait_state("second", "READY", timeout=20)
    stack.wait_state("extra", "READY", timeout=20)
    # Highest priority first: `extra` (LOW) did not start while `second` (MEDIUM) still waited.
    changes = [(e["component"], e["new"]) for e in stack.log_events() if e.get("event") == "state_changed"]
    last_wait = max(i for i, change in enumerate(changes) if change == ("second", "WAITING"))
    assert changes.index(("extra", "STARTING")) > last_wait
    assert not any("illegal_transition" in line for line in stack.output().splitlines())


def test_a_person_may_load_or_unload_a_waiting_component(make_stack: StackFactory) -> None:
    stack = make_stack(config(first_big_mb=150))
    stack.up()
    stack.wait_state("big", "READY")
    stack.wait_state("second", "WAITING")
    stack.wait_state("extra", "WAITING")
    unloaded = stack.call("unload", name="extra")  # a person says: not now
    assert unloaded["state"] == "STOPPED"
    refused = stack.cli("load", "second")  # a person's load goes through admission too
    assert refused.returncode == 1 and "second needs ~100 MB" in refused.stderr
    stack.call("unload", name="big")
    stack.wait_state("second", "READY", timeout=20)
    # The queue left `extra` alone: a person unloaded it while it waited.
    wait_until(lambda: stack.component("second")["state"] == "READY", 5, what="second")
    assert stack.component("extra")["state"] == "STOPPED", [
        (e["component"], e["new"], e.get("reason")) for e in stack.log_events() if e.get("event") == "state_changed"
    ]
