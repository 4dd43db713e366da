"""Connection slots of the HTTP server: who gets in when every slot is taken, and who is too slow.

A slowloris client (a header byte a second, reconnecting when dropped) must not push the
owner's `/health` or a POST from the dashboard into a queue. So instead of making a new
connection wait for a free slot:

- a new connection always gets in: when all MAX_CONNECTIONS slots are taken it takes the slot
  of the slowest connection still sending its request head (the lowest byte rate, once it has
  had RATE_GRACE_S to show one), else of the longest-idle kept-alive connection; only when
  every slot is busy serving does it get 503;
- a request head must arrive at MIN_HEAD_BYTES_S at least (averaged, after RATE_GRACE_S: a
  real client sends its whole head in one write) and within HEAD_TIMEOUT_S, or
  CROWDED_HEAD_TIMEOUT_S once three quarters of the slots are taken.

The decisions are pure functions over the slots (`victim`, `too_slow`); `Slots` applies them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import anyio
import structlog

log = structlog.get_logger("ironcliw.http")

MAX_CONNECTIONS = 64
HEAD_TIMEOUT_S = 10.0
CROWDED_HEAD_TIMEOUT_S = 2.0
RATE_GRACE_S = 1.0
MIN_HEAD_BYTES_S = 256.0
SWEEP_EVERY_S = 0.25

HEAD, IDLE, BUSY = "head", "idle", "busy"  # sending a request / kept alive between requests / being served


class Slot:
    __slots__ = ("close", "phase", "since", "received")

    def __init__(self, now: float, close: Callable[[], None] | None = None) -> None:
        self.close = close  # closes the connection (None only in tests of the decisions)
        self.phase = HEAD  # a new connection owes its first request head
        self.since = now  # when the phase began
        self.received = 0  # bytes of the head so far

    def rate(self, now: float) -> float:
        age = now - self.since
        return self.received / age if age > 0 else float("inf")


def victim(slots: Iterable[Slot], now: float) -> Slot | None:
    """The slot a new connection takes when none is free: the slowest head past its grace,
    else the longest-idle kept-alive connection; None if all are being served or are new."""
    slow = [s for s in slots if s.phase == HEAD and now - s.since >= RATE_GRACE_S]
    if slow:
        return min(slow, key=lambda s: (s.rate(now), s.since))
    idle = [s for s in slots if s.phase == IDLE]
    if idle:
        return min(idle, key=lambda s: s.since)
    fresh = [s for s in slots if s.phase == HEAD]  # all heads are young: the oldest goes
    return min(fresh, key=lambda s: s.since) if fresh else None


def too_slow(slot: Slot, now: float, crowded: bool) -> bool:
    """Whether a connection still sending its head should be closed now."""
    if slot.phase != HEAD:
        return False
    age = now - slot.since
    if age > (CROWDED_HEAD_TIMEOUT_S if crowded else HEAD_TIMEOUT_S):
        return True
    return age >= RATE_GRACE_S and slot.rate(now) < MIN_HEAD_BYTES_S


class Slots:
    def __init__(self, capacity: int = MAX_CONNECTIONS) -> None:
        self.capacity = capacity
        self.taken: set[Slot] = set()
        self.evicted = 0
        self._heads_waiting: anyio.Event | None = None  # the sweeper sleeps on it while no head is due

    def admit(self, now: float, close: Callable[[], None]) -> Slot | None:
        """A slot for a new connection (evicting one if need be), or None: answer 503."""
        if len(self.taken) >= self.capacity:
            loser = victim(self.taken, now)
            if loser is None:
                return None
            self.release(loser)
            _close(loser)
            self.evicted += 1
            log.info(
                "http_connection_evicted",
                phase=loser.phase,
                age_s=round(now - loser.since, 2),
                head_bytes=loser.received,
            )
        slot = Slot(now, close)
        self.taken.add(slot)
        self.heading(slot, now)
        return slot

    def heading(self, slot: Slot, now: float) -> None:
        """`slot` started (or restarted) sending a request head."""
        slot.phase, slot.since, slot.received = HEAD, now, 0
        if self._heads_waiting is not None:
            self._heads_waiting.set()

    def release(self, slot: Slot) -> None:
        self.taken.discard(slot)

    async def sweep(self) -> None:
        """Close heads that are too slow; sleeps without waking while no head is due."""
        while True:
            if not any(s.phase == HEAD for s in self.taken):
                self._heads_waiting = anyio.Event()
                await self._heads_waiting.wait()
                self._heads_waiting = None
            await anyio.sleep(SWEEP_EVERY_S)
            now = anyio.current_time()
            crowded = len(self.taken) * 4 >= self.capacity * 3
            for slot in [s for s in self.taken if too_slow(s, now, crowded)]:
                self.release(slot)
                _close(slot)


def _close(slot: Slot) -> None:
    if slot.close is not None:
        slot.close()
