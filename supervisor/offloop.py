"""Conditions the event loop waits for without being woken to look: each is polled in the
sampler's thread, after every reading, and only one that holds wakes the loop.

Why: an idle stack's event loop wakes about once a minute, since the sampler's thread takes
the 2 s readings (sampler.py). Two tasks that looked for the runtime dir and the control
socket every 2 s on the loop woke it sixty times as often, and an idle supervisor's CPU went
from level with supervisord's to 55 % over it (bench/bench_supervision.py). A condition
here must be cheap (a few `lstat` calls) and safe to call from any thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

Condition = Callable[[], bool]


class OffLoop:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: list[Condition] = []  # each a poll: True once its condition held

    async def until(self, condition: Condition) -> None:
        """Return once `condition()` holds, as seen at one of the sampler's readings."""
        loop = asyncio.get_running_loop()
        held = asyncio.Event()

        def poll() -> bool:
            try:
                holds = condition()
            except Exception:  # the waiter looks again on the loop, and says what is wrong
                holds = True
            if holds:
                try:
                    loop.call_soon_threadsafe(held.set)
                except RuntimeError:  # the loop has closed: nobody waits any more
                    pass
            return holds

        with self._lock:
            self._waiting.append(poll)
        try:
            await held.wait()
        finally:
            with self._lock:
                if poll in self._waiting:
                    self._waiting.remove(poll)

    def poll(self) -> None:
        """In the sampler's thread: every condition waited for, once."""
        with self._lock:
            waiting = list(self._waiting)
        done = [poll for poll in waiting if poll()]
        if done:
            with self._lock:
                self._waiting = [poll for poll in self._waiting if poll not in done]
