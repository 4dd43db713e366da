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
    """Decides in queue order, synchronously, as far as room goes (one pass for a whole `up`
    that fits: a chain of awaits, one per component, made `up` of 1,000 components 4 s
    slower); the component at the head of a queue that waits looks for room every RECHECK_S."""

    def __init__(
        self, admission: Admission, runners: Mapping[str, Runner], names: Iterable[str], stopping: Callable[[], bool]
    ) -> None:
        self.admission = admission
        self.runners = runners
        self.stopping = stopping
        self.queue = sorted(names, key=lambda n: runners[n].spec.priority.rank)  # stable: config order
        self._next = 0  # the first undecided place in the queue
        self._decided = {name: anyio.Event() for name in self.queue}
        self._verdict: dict[str, bool] = {}
        self._pending: list[str] = []  # let in, not READY yet: their predicted growth is reserved
        self._reserved = 0  # an upper bound of that reservation, kept as they are let in
        self._marked: dict[str, tuple[str, str]] = {}  # name -> (kind, reason) it was last shown WAITING with
        self._shown_at: dict[str, float] = {}

    async def admit(self, name: str) -> bool:
        """Wait for `name`'s turn and for room. False: do not start it (a person loaded or
        unloaded it while it waited, or the supervisor is stopping)."""
        while not self._decided[name].is_set():
            if self._advance() == name:  # at the head, waiting for room: look again later
                await anyio.sleep(RECHECK_S)
            else:
                await self._decided[name].wait()
        return self._verdict[name]

    def _advance(self) -> str | None:
        """Decide the queue in order while each is let in (or let go); the name at the head
        that waits for room, or None once every one is decided."""
        room: int | None = None
        while self._next < len(self.queue):
            name = self.queue[self._next]
            left = self._decide(name, room)
            if left is None:
                return name
            self._verdict[name] = left is not False
            if left is not False:
                room = left  # let in: the room left for the next one
            self._decided[name].set()
            self._next += 1
        return None

    def _decide(self, name: str, room: int | None) -> int | bool | None:
        """False: let go; None: no room yet; let in: the room left after it (an int, not a bool)."""
        runner = self.runners[name]
        if self.stopping() or (name in self._marked and runner.state is not ComponentState.WAITING):
            return False  # stopping, or a person acted on it while it waited
        needs = self._needs(name)
        if room is None:
            room = self._room()
        if needs > room:  # the kept bound says no: count what the ones let in may really still add
            self._pending = [n for n in self._pending if self._still_growing(n)]
            self._reserved = sum(self._still_growing(n) for n in self._pending)
            room = self._room()
        if needs > room:
            at = self.queue.index(name)
            self._show(name, f"waits for {size(needs)}, {size(max(room, 0))} free before WARNING", "room")
            for behind in self.queue[at + 1 :]:
                self._show(behind, f"waits behind {name}, which waits for room", f"behind {name}")
            return None
        self._pending.append(name)
        self._reserved += needs
        return room - needs

    def _room(self) -> int:
        """Bytes before WARNING now, less what the ones let in may still add (the kept bound)."""
        memory = self.admission.memory
        return memory.headroom_bytes(memory.recent(RECHECK_S)) - self._reserved

    def _needs(self, name: str) -> int:
        """The predicted peak; 0 for CRITICAL, which always goes."""
        if self.runners[name].spec.priority is Priority.CRITICAL:
            return 0
        return int(self.admission.prediction(name).peak_mb * MIB)

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
