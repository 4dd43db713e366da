"""Memory state from a sample: thresholds, the kernel's own signals, hysteresis, and how
soon to sample again. Pure functions; time arrives as `now`.

    state = max(level of used %, level the kernel signals)        going up: at once
    (the kernel's signals: macOS's pressure level, Linux PSI, and sustained swap-out on both)
    going down: only once used % has stayed `hysteresis_percent` below the current state's
    threshold (and the kernel agrees) for `hold_s`, so a load hovering at a threshold does
    not flap.
"""

from __future__ import annotations

import msgspec

from .config import MemorySection
from .model import KernelPressure, MemoryState, SystemMemory, state_rank

HEALTHY, WARNING, CRITICAL, EMERGENCY = (
    MemoryState.HEALTHY,
    MemoryState.WARNING,
    MemoryState.CRITICAL,
    MemoryState.EMERGENCY,
)


class PressureTracker(msgspec.Struct, frozen=True):
    state: MemoryState = HEALTHY
    below_since: float | None = None  # since when a step down has been allowed
    healthy_since: float | None = None  # for the recovery hold


def threshold(state: MemoryState, cfg: MemorySection) -> float:
    """The used % at which `state` begins (0 for HEALTHY)."""
    return {
        HEALTHY: 0.0,
        WARNING: cfg.warning_percent,
        CRITICAL: cfg.critical_percent,
        EMERGENCY: cfg.emergency_percent,
    }[state]


def level_for(percent: float, cfg: MemorySection) -> MemoryState:
    if percent >= cfg.emergency_percent:
        return EMERGENCY
    if percent >= cfg.critical_percent:
        return CRITICAL
    if percent >= cfg.warning_percent:
        return WARNING
    return HEALTHY


def kernel_floor(system: SystemMemory, cfg: MemorySection) -> MemoryState:
    """The state the kernel's own signal demands at least (it can raise, never lower)."""
    floor = HEALTHY
    if system.kernel_level is KernelPressure.CRITICAL:
        floor = CRITICAL
    elif system.kernel_level is KernelPressure.WARN:
        floor = WARNING
    if system.psi_full_avg10 is not None and system.psi_full_avg10 >= cfg.psi_critical_avg10:
        floor = _max(floor, CRITICAL)
    elif system.psi_some_avg10 is not None and system.psi_some_avg10 >= cfg.psi_warning_avg10:
        floor = _max(floor, WARNING)
    return _max(floor, swap_floor(system.swap_out_mb_s, cfg))


def swap_floor(swap_out_mb_s: float | None, cfg: MemorySection) -> MemoryState:
    """Sustained swapping means memory is short whatever the percentages say (the seed: "swap
    usage should be minimized"); a rule set to 0 is off."""
    if swap_out_mb_s is None:
        return HEALTHY
    if cfg.swap_out_critical_mb_s and swap_out_mb_s >= cfg.swap_out_critical_mb_s:
        return CRITICAL
    if cfg.swap_out_warning_mb_s and swap_out_mb_s >= cfg.swap_out_warning_mb_s:
        return WARNING
    return HEALTHY


def _max(a: MemoryState, b: MemoryState) -> MemoryState:
    return a if state_rank(a) >= state_rank(b) else b


def classify(
    tracker: PressureTracker, percent: float, system: SystemMemory, cfg: MemorySection, now: float
) -> PressureTracker:
    floor = kernel_floor(system, cfg)
    target = _max(level_for(percent, cfg), floor)
    current = tracker.state
    if state_rank(target) >= state_rank(current):
        new, below_since = target, None
    else:
        low_enough = percent < threshold(current, cfg) - cfg.hysteresis_percent and state_rank(floor) < state_rank(
            current
        )
        if not low_enough:
            new, below_since = current, None
        else:
            below_since = tracker.below_since if tracker.below_since is not None else now
            if now - below_since >= cfg.hold_s:
                # Step down to where the signal is with the margin added, so the new state
                # is not itself one the signal hovers at.
                new = _max(level_for(percent + cfg.hysteresis_percent, cfg), floor)
                below_since = None
            else:
                new = current
    healthy_since = None
    if new is HEALTHY:
        healthy_since = tracker.healthy_since if current is HEALTHY and tracker.healthy_since is not None else now
    return PressureTracker(state=new, below_since=below_since, healthy_since=healthy_since)


def next_interval(state: MemoryState, headroom_bytes: int, cfg: MemorySection) -> float:
    """Seconds until the next sample: fast under pressure; otherwise no longer than the time
    the worst-case fill rate would need to use up the headroom before WARNING (earlyoom)."""
    if state is not HEALTHY:
        return cfg.fast_interval_s
    time_to_cross = max(0, headroom_bytes) / (cfg.max_fill_rate_mb_s * 1048576)
    return min(cfg.sample_interval_s, max(cfg.fast_interval_s, time_to_cross))


WAKE_JUMP_S = 1.0


def hold_after_wake(
    previous_suspended_s: float, suspended_s: float, now: float, hold_until: float, cfg: MemorySection
) -> float:
    """Until when to hold actions off: a jump in the time spent suspended means the machine
    just woke up, and memory figures right after a wake-up are not to be trusted."""
    if suspended_s - previous_suspended_s > WAKE_JUMP_S:
        return max(hold_until, now + cfg.wake_settle_s)
    return hold_until
