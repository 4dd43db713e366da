"""When the loop must look at a reading (attention.py): pure rules, no processes."""

from __future__ import annotations

from supervisor.attention import headroom_bytes, may_act, wants_every_reading, worth_a_look
from supervisor.config import parse_config
from supervisor.model import MIB, KernelPressure, MemoryState, SystemMemory

CFG = parse_config(
    "[memory]\nsample_interval_s = 2\nfast_interval_s = 0.02\nmax_fill_rate_mb_s = 100\n", "t.toml"
).memory
BUDGET = parse_config("[memory]\nbudget_mb = 1000\n", "t.toml").memory
GIB = 1 << 30


def system(available_gib: float, **kw: object) -> SystemMemory:
    return SystemMemory(
        total_bytes=16 * GIB,
        available_bytes=int(available_gib * GIB),
        swap_total_bytes=0,
        swap_used_bytes=0,
        **kw,  # type: ignore[arg-type]
    )


def test_a_quiet_reading_far_from_warning_is_not_worth_a_look() -> None:
    quiet = system(12)
    assert not worth_a_look(quiet.used_percent, quiet, 0, CFG, 2.0)


def test_warning_a_kernel_signal_or_a_short_headroom_is_worth_a_look() -> None:
    warm = system(4)  # 75 % used
    assert worth_a_look(warm.used_percent, warm, 0, CFG, 2.0)
    signalled = system(12, kernel_level=KernelPressure.WARN)
    assert worth_a_look(signalled.used_percent, signalled, 0, CFG, 2.0)
    pressured = system(12, psi_some_avg10=CFG.psi_warning_avg10 + 1)
    assert worth_a_look(pressured.used_percent, pressured, 0, CFG, 2.0)
    # 100 MB short of WARNING: the worst-case 100 MB/s fill crosses it within 1 s, before a 2 s reading
    close = SystemMemory(
        total_bytes=16 * GIB,
        available_bytes=int(16 * GIB * 0.30) + 100 * MIB,
        swap_total_bytes=0,
        swap_used_bytes=0,
    )
    assert worth_a_look(close.used_percent, close, 0, CFG, 2.0)
    assert not worth_a_look(close.used_percent, close, 0, CFG, 0.5)  # the next reading comes first


def test_under_a_budget_the_stack_counts() -> None:
    quiet = system(12)
    assert headroom_bytes(quiet, 0, BUDGET) == 700 * MIB  # 70 % of the budget
    assert headroom_bytes(quiet, 650 * MIB, BUDGET) == 50 * MIB
    percent = 100 * 720 / 1000
    assert worth_a_look(percent, quiet, 720 * MIB, BUDGET, 2.0)


def test_no_rule_can_fire_while_healthy_with_nothing_held() -> None:
    assert not may_act(MemoryState.HEALTHY, any_frozen_or_unloaded=False)
    assert may_act(MemoryState.HEALTHY, any_frozen_or_unloaded=True)  # recovery may thaw or reload
    for state in (MemoryState.WARNING, MemoryState.CRITICAL, MemoryState.EMERGENCY):
        assert may_act(state, any_frozen_or_unloaded=False)


def test_the_loop_wants_every_reading_while_acting_after_a_change_or_for_subscribers() -> None:
    assert not wants_every_reading(False, False, False)
    assert wants_every_reading(True, False, False)
    assert wants_every_reading(False, True, False)
    assert wants_every_reading(False, False, True)
