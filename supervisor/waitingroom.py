"""Admission at `up`: the autostart components go in priority order (CRITICAL first, then
the config's order within a priority), each only while its predicted peak fits below
WARNING, counting what the ones already let in are still predicted to grow by (they have not
reached their peaks yet). The first that does not fit waits, in the WAITING state with the
numbers ("waits for 420 MB, 180 MB free before WARNING"), and every one after it waits
behind it: when room appears, the highest priority gets it first. CRITICAL components
always go. A person may load or unload a waiting component meanwhile; the queue then
leaves it alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

import anyio

from .admission import Admission, size
from .model import MIB, ComponentState, Priority
from .runner import Runner

RECHECK_S = 0.5  # while something waits: how often room is looked for again
RESHOW_S = 5.0


class WaitingRoom:
    def __init__(
        self, admission: Admission, runners: Mapping[str, Runner], names: Iterable[str], stopping: Callable[[], bool]
    ) -> None:
        self.admission = admission
        self.runners = runners
        self.stopping = stopping
        self.queue = sorted(names, key=lambda n: runners[n].spec.priority.rank)  # stable: config order
        self._turn_done = {name: anyio.Event() for name in self.queue}
        self._pending: list[str] = []  # let in, not READY yet: their predicted growth is reserved
        self._marked: dict[str, tuple[str, str]] = {}  # name -> (kind, reason) it was last shown WAITING with
        self._shown_at: dict[str, float] = {}

    async def admit(self, name: str) -> bool:
        """Wait for `name`'s turn and for room. False: do not start it (a person loaded or
        unloaded it while it waited, or the supervisor is stopping)."""
        at = self.queue.index(name)
        try:
            if at:
                await self._turn_done[self.queue[at - 1]].wait()
            return await self._wait_for_room(name, at)
        finally:
            self._turn_done[name].set()

    async def _wait_for_room(self, name: str, at: int) -> bool:
        runner = self.runners[name]
        while not self.stopping():
            if name in self._marked and runner.state is not ComponentState.WAITING:
                return False  # a person acted on it while it waited
            needs, room = self._needs_and_room(name)
            if needs <= room:
                self._pending.append(name)
                return True
            self._show(name, f"waits for {size(needs)}, {size(max(room, 0))} free before WARNING", "room")
            for behind in self.queue[at + 1 :]:
                self._show(behind, f"waits behind {name}, which waits for room", f"behind {name}")
            await anyio.sleep(RECHECK_S)
        return False

    def _needs_and_room(self, name: str) -> tuple[int, int]:
        """(the predicted peak, the room before WARNING less what those let in may still grow by)."""
        if self.runners[name].spec.priority is Priority.CRITICAL:
            return 0, 0  # always goes
        memory = self.admission.memory
        room = memory.headroom_bytes(memory.recent(RECHECK_S))
        self._pending = [n for n in self._pending if self._still_growing(n)]
        reserved = sum(self._still_growing(n) for n in self._pending)
        return int(self.admission.prediction(name).peak_mb * MIB), room - reserved

    def _still_growing(self, name: str) -> int:
        """What a component let in is still predicted to add: its peak less what it uses now,
        until it is READY (then readings count it, and its peak is its own business) or has
        ended (a person may unload it as soon as it started)."""
        runner = self.runners[name]
        not_yet_started = runner.state in (ComponentState.STOPPED, ComponentState.WAITING) and runner.started_at is None
        if runner.state is not ComponentState.STARTING and not not_yet_started:
            return 0
        peak = int(self.admission.prediction(name).peak_mb * MIB)
        return max(0, peak - runner.memory.usage.memory_bytes)

    def _show(self, name: str, reason: str, kind: str) -> None:
        """Mark it WAITING with `reason`, unless a person acted on it since it was first marked.
        A new `kind` of wait shows at once; new figures for the same kind at most every
        RESHOW_S (each is a logged state change)."""
        runner, shown, now = self.runners[name], self._marked.get(name), time.monotonic()
        first = shown is None and runner.state is ComponentState.STOPPED
        again = shown is not None and shown[1] != reason and runner.state is ComponentState.WAITING
        if first or again and (shown is None or shown[0] != kind or now - self._shown_at[name] >= RESHOW_S):
            runner.mark_waiting(reason)
            self._marked[name], self._shown_at[name] = (kind, reason), now
