"""Idle TTL: a component unused for its `idle_ttl_s` is unloaded, pressure or not (Ollama's
keep_alive, llama-swap's ttl). "Used" is the runner's `last_used`: a start, a `touch`, a
request through the door (at its start and its end), CPU use above `used_cpu_percent`.
Never while a request through the door is in flight. What it unloads stays down until
something loads it (the door, on the next request for one of its models).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping

import anyio
import msgspec
import structlog

from .model import ComponentState
from .runner import Runner

log = structlog.get_logger("ironcliw.idle")

IDLE_CHECKS_PER_TTL = 10  # the unload comes at most a tenth of the TTL late
MIN_CHECK_S, MAX_CHECK_S = 0.25, 30.0


class Candidate(msgspec.Struct, frozen=True):
    name: str
    ttl_s: float  # 0: never
    last_used: float  # monotonic
    ready: bool  # READY (a starting, frozen or stopped one is not idle-unloaded)
    in_flight: int = 0


def expired(candidates: Iterable[Candidate], now: float) -> list[tuple[str, float]]:
    """(name, idle seconds) of each candidate idle for at least its TTL."""
    return [
        (c.name, now - c.last_used)
        for c in candidates
        if c.ttl_s > 0 and c.ready and c.in_flight == 0 and now - c.last_used >= c.ttl_s
    ]


def check_interval(ttls: Iterable[float]) -> float:
    """How long to sleep between checks: no wake-up at all while no component has a TTL."""
    active = [t for t in ttls if t > 0]
    if not active:
        return math.inf
    return min(MAX_CHECK_S, max(MIN_CHECK_S, min(active) / IDLE_CHECKS_PER_TTL))


class IdleUnloader:
    def __init__(
        self,
        runners: Mapping[str, Runner],
        ttl_of: Callable[[Runner], float],
        unload: Callable[[str, str], Awaitable[object]],
    ) -> None:
        self.runners, self.ttl_of, self.unload = runners, ttl_of, unload
        self._unloading: set[str] = set()
        self._changed = anyio.Event()

    def components_changed(self) -> None:
        """A component was registered: its TTL may call for earlier checks."""
        self._changed.set()

    def candidates(self) -> list[Candidate]:
        return [
            Candidate(r.name, self.ttl_of(r), r.last_used, r.state is ComponentState.READY, r.in_flight)
            for r in self.runners.values()
            if r.name not in self._unloading
        ]

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            while True:
                with anyio.move_on_after(check_interval(c.ttl_s for c in self.candidates())):
                    await self._changed.wait()
                    self._changed = anyio.Event()
                for name, idle_s in expired(self.candidates(), time.monotonic()):
                    self._unloading.add(name)
                    tg.start_soon(self._unload, name, idle_s)

    async def _unload(self, name: str, idle_s: float) -> None:
        ttl = self.ttl_of(self.runners[name])
        log.info("idle_unload", component=name, idle_s=round(idle_s, 1), idle_ttl_s=ttl)
        try:
            await self.unload(name, f"idle for {idle_s:.0f} s (idle_ttl_s = {ttl:g})")
        finally:
            self._unloading.discard(name)
