"""When the event loop must look at memory: pure rules over plain data.

The sampler's thread reads every tree and the system every interval; the event loop, which
decides and acts, wakes only for a reading these rules call worth it (waking an asyncio
loop costs about as much CPU as the reading itself, see the README's idle-CPU figures).
A new reason to look is written here, once, and tested without processes.
"""

from __future__ import annotations

from .config import MemorySection
from .model import MIB, MemoryState, SystemMemory
from .pressure import kernel_floor, level_for, next_interval


def headroom_bytes(system: SystemMemory, stack_bytes: int, cfg: MemorySection) -> int:
    """Bytes the system (or the stack, under a budget) may still grow before WARNING."""
    room = int(system.total_bytes * cfg.warning_percent / 100) - (system.total_bytes - system.available_bytes)
    if cfg.budget_mb:
        room = min(room, int(cfg.budget_mb * MIB * cfg.warning_percent / 100) - stack_bytes)
    return room


def worth_a_look(percent: float, system: SystemMemory, stack_bytes: int, cfg: MemorySection, interval_s: float) -> bool:
    """A reading of a quiet stack the loop must see now: memory at or past WARNING, a kernel
    signal, or room so short that the worst-case fill rate could cross WARNING before the
    next reading at `interval_s`."""
    if level_for(percent, cfg) is not MemoryState.HEALTHY:
        return True
    if kernel_floor(system, cfg) is not MemoryState.HEALTHY:
        return True
    return next_interval(MemoryState.HEALTHY, headroom_bytes(system, stack_bytes, cfg), cfg) < interval_s


def may_act(state: MemoryState, any_frozen_or_unloaded: bool) -> bool:
    """Whether any policy rule can fire: not while HEALTHY with nothing frozen or unloaded by
    pressure (most samples of an idle stack), so deciding is skipped then."""
    return state is not MemoryState.HEALTHY or any_frozen_or_unloaded


def wants_every_reading(may_act: bool, stale: bool, memory_subscribers: bool) -> bool:
    """The loop takes every reading as it comes (instead of the worth-a-look ones and one a
    minute) while it may act, while a component just started or ended, or while somebody
    watches memory events."""
    return may_act or stale or memory_subscribers
