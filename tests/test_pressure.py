"""Memory states, hysteresis and sampling speed, without processes or clocks."""

from __future__ import annotations

import itertools

import msgspec

from supervisor.config import MemorySection
from supervisor.model import KernelPressure, MemoryState, SystemMemory
from supervisor.pressure import PressureTracker, classify, hold_after_wake, kernel_floor, level_for, next_interval

CFG = MemorySection(hysteresis_percent=3.0, hold_s=5.0)
GB = 1 << 30
H, W, C, E = MemoryState.HEALTHY, MemoryState.WARNING, MemoryState.CRITICAL, MemoryState.EMERGENCY


def system(**kw: object) -> SystemMemory:
    return SystemMemory(total_bytes=16 * GB, available_bytes=8 * GB, **kw)  # type: ignore[arg-type]


def test_levels_follow_the_seed_thresholds() -> None:
    assert [level_for(p, CFG) for p in (0, 69.9, 70, 84.9, 85, 94.9, 95, 100)] == [H, H, W, W, C, C, E, E]


def test_up_at_once_down_only_after_margin_and_hold() -> None:
    t = classify(PressureTracker(), 86.0, system(), CFG, now=0.0)
    assert t.state is C
    t = classify(t, 84.0, system(), CFG, now=1.0)  # below 85 but inside the 3 % margin
    assert t.state is C and t.below_since is None
    t = classify(t, 81.0, system(), CFG, now=2.0)  # outside the margin: the hold starts
    assert t.state is C and t.below_since == 2.0
    t = classify(t, 81.0, system(), CFG, now=6.9)
    assert t.state is C
    t = classify(t, 81.0, system(), CFG, now=7.0)
    assert t.state is W


def test_a_load_hovering_at_a_threshold_does_not_flap() -> None:
    t = PressureTracker()
    states = []
    for i in range(200):
        percent = 70.0 + (0.8 if i % 2 else -0.8)  # 69.2 / 70.8 every 0.1 s
        t = classify(t, percent, system(), CFG, now=i * 0.1)
        states.append(t.state)
    changes = sum(1 for a, b in itertools.pairwise(states) if a is not b)
    assert changes == 1 and states[-1] is W  # it rose once (at the first 70.8) and stayed


def test_a_dip_shorter_than_the_hold_resets() -> None:
    t = classify(PressureTracker(), 75.0, system(), CFG, now=0.0)
    t = classify(t, 60.0, system(), CFG, now=1.0)
    t = classify(t, 75.0, system(), CFG, now=3.0)  # back up before the hold ended
    t = classify(t, 60.0, system(), CFG, now=4.0)
    t = classify(t, 60.0, system(), CFG, now=8.5)
    assert t.state is W  # the hold restarted at 4.0
    t = classify(t, 60.0, system(), CFG, now=9.0)
    assert t.state is H and t.healthy_since == 9.0


def test_kernel_signals_raise_but_never_lower() -> None:
    assert kernel_floor(system(kernel_level=KernelPressure.WARN), CFG) is W
    assert kernel_floor(system(kernel_level=KernelPressure.CRITICAL), CFG) is C
    assert kernel_floor(system(psi_some_avg10=25.0), CFG) is W
    assert kernel_floor(system(psi_some_avg10=60.0, psi_full_avg10=55.0), CFG) is C
    t = classify(PressureTracker(), 40.0, system(kernel_level=KernelPressure.WARN), CFG, now=0.0)
    assert t.state is W
    t = classify(t, 40.0, system(kernel_level=KernelPressure.WARN), CFG, now=100.0)
    assert t.state is W  # used % is low, but the kernel still says warn
    t = classify(PressureTracker(state=E), 96.0, system(kernel_level=KernelPressure.NORMAL), CFG, now=0.0)
    assert t.state is E


def test_sampling_speeds_up_near_a_threshold_and_under_pressure() -> None:
    assert next_interval(W, 0, CFG) == CFG.fast_interval_s
    assert next_interval(H, 100 * GB, CFG) == CFG.sample_interval_s
    fast_fill = msgspec.structs.replace(CFG, max_fill_rate_mb_s=1000.0)
    assert next_interval(H, 500 * 1048576, fast_fill) == 0.5  # 500 MB of headroom at 1 GB/s
    assert next_interval(H, 1, fast_fill) == CFG.fast_interval_s


def test_actions_are_held_off_after_a_wake_from_sleep() -> None:
    cfg = msgspec.structs.replace(CFG, wake_settle_s=5.0)
    assert hold_after_wake(10.0, 10.2, now=100.0, hold_until=0.0, cfg=cfg) == 0.0  # clock noise
    assert hold_after_wake(10.0, 3610.0, now=100.0, hold_until=0.0, cfg=cfg) == 105.0  # slept an hour
