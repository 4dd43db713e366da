"""Waiting without waking the event loop (supervisor/offloop.py): conditions polled in the
sampler's thread."""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio

from supervisor.offloop import OffLoop
from tests.helpers import Stack


def test_a_condition_is_looked_at_by_the_polling_thread_and_wakes_only_when_it_holds() -> None:
    off_loop, state = OffLoop(), {"holds": False, "looked": 0, "raised": False}
    stop = threading.Event()

    def condition() -> bool:
        state["looked"] += 1
        return bool(state["holds"])

    def failing() -> bool:
        state["raised"] = True
        raise OSError("a surprise")

    def sampler() -> None:  # the sampler's thread, at each reading
        while not stop.wait(0.01):
            off_loop.poll()

    async def scenario() -> bool:
        thread = threading.Thread(target=sampler)
        thread.start()
        try:
            with anyio.move_on_after(0.3) as early:
                await off_loop.until(condition)
            looked_before = state["looked"]
            state["holds"] = True
            with anyio.fail_after(10):  # (a wait that never ends is the failure, not a slow one)
                await off_loop.until(condition)  # now it holds: back at a poll
                await off_loop.until(failing)  # raising counts as holding: the waiter looks itself
            return early.cancelled_caught and looked_before > 5
        finally:
            stop.set()
            thread.join()

    assert anyio.run(scenario) and state["raised"]
    assert off_loop._waiting == []  # nothing left behind, the cancelled wait's poll included


def test_an_idle_supervisors_event_loop_is_not_woken_every_two_seconds(make_stack: Any) -> None:
    """Looking for the runtime dir and the control socket every 2 s on the loop woke it five
    times in 10 s (both on one timer), where it used to wake once a minute: idle CPU went
    from level with supervisord's to 55 % over. Now the sampler's thread looks."""
    stack: Stack = make_stack('[components.s]\ncommand = ["sleep", "600"]\nready = { alive_s = 0.1 }\n')
    stack.up()
    stack.wait_state("s", "READY")
    assert stack.proc is not None
    time.sleep(3)  # the start's own hand-overs done
    path = f"/proc/{stack.proc.pid}/task/{stack.proc.pid}/status"  # the event loop's thread

    def switches() -> int:
        with open(path) as f:
            return next(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches"))

    before = switches()
    time.sleep(10)
    assert switches() - before <= 2  # the minute's hand-over may fall in the window
    assert stack.stop() == 0
