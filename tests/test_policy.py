"""The policy on hand-made snapshots: each state's actions, in priority order."""

from __future__ import annotations

import msgspec
import pytest

from supervisor.config import MemorySection
from supervisor.model import ActionKind, ComponentState, MemoryState, Priority, Requested, Snapshot, SystemMemory
from supervisor.policy import ComponentView, decide, decide_through_trims, explain, projected_percent

MB = 1 << 20
CFG = MemorySection(
    idle_unload_s=60.0, trim_settle_s=2.0, trim_cooldown_s=30.0, max_frozen_s=30.0, recovery_hold_s=10.0
)
READY, FROZEN, STOPPED = ComponentState.READY, ComponentState.FROZEN, ComponentState.STOPPED


def snap(percent: float, state: MemoryState, stack_mb: int = 0, budget_mb: int | None = None) -> Snapshot:
    total = 1000 * MB
    system = SystemMemory(total_bytes=total, available_bytes=int(total * (1 - percent / 100)))
    return Snapshot(
        time=0.0,
        system=system,
        components={},
        stack_bytes=stack_mb * MB,
        budget_bytes=budget_mb * MB if budget_mb else None,
        percent_used=percent,
        state=state,
    )


def view(name: str, priority: str, rss_mb: int = 100, **kw: object) -> ComponentView:
    fields = {"state": READY, "last_used": 0.0, "estimated_bytes": rss_mb * MB}
    fields.update(kw)
    return ComponentView(name=name, priority=Priority[priority], memory_bytes=rss_mb * MB, **fields)  # type: ignore[arg-type]


def kinds(actions: list) -> list[tuple[str, str]]:
    return [(a.kind.value, a.component) for a in actions]


STACK = [
    view("chatbot", "CRITICAL", 50, has_trim=True),
    view("nlp", "HIGH", 300, has_trim=True),
    view("voice", "MEDIUM", 150, growing=True),
    view("balloon", "LOW", 200, growing=True),
    view("idle_low", "LOW", 40),
]


def test_healthy_does_nothing() -> None:
    assert decide(snap(50, MemoryState.HEALTHY), STACK, CFG, now=100.0, healthy_since=99.0) == []


def test_warning_trims_first_and_escalates_only_after_trims_settle() -> None:
    first = decide(snap(75, MemoryState.WARNING), STACK, CFG, now=100.0, healthy_since=None)
    assert kinds(first) == [("TRIM", "chatbot"), ("TRIM", "nlp")]
    trimmed = [msgspec.structs.replace(v, last_trim_at=100.0) if v.has_trim else v for v in STACK]
    assert decide(snap(75, MemoryState.WARNING), trimmed, CFG, now=101.0, healthy_since=None) == []
    # Still short once the trims had time to work: idle LOW components go.
    later = decide(snap(75, MemoryState.WARNING), trimmed, CFG, now=102.5, healthy_since=None)
    assert kinds(later) == [("UNLOAD", "balloon"), ("UNLOAD", "idle_low")]
    assert all(a.rule == "warning.idle_unload" for a in later)


def test_warning_keeps_recently_used_low_components() -> None:
    used = [msgspec.structs.replace(v, last_used=90.0, has_trim=False) for v in STACK]
    assert decide(snap(75, MemoryState.WARNING), used, CFG, now=100.0, healthy_since=None) == []
    idle = [msgspec.structs.replace(v, has_trim=False) for v in STACK]  # nothing to trim: escalate at once
    assert kinds(decide(snap(75, MemoryState.WARNING), idle, CFG, now=100.0, healthy_since=None)) == [
        ("UNLOAD", "balloon"),
        ("UNLOAD", "idle_low"),
    ]


def test_critical_freezes_growing_then_unloads_low_before_medium() -> None:
    actions = decide(snap(90, MemoryState.CRITICAL), STACK, CFG, now=100.0, healthy_since=None)
    assert kinds(actions)[2:] == [
        ("FREEZE", "voice"),
        ("FREEZE", "balloon"),
        ("UNLOAD", "balloon"),  # the largest LOW first: 90 -> 70 %, under CRITICAL, so it stops there
    ]
    unloads = [a for a in actions if a.kind is ActionKind.UNLOAD]
    assert unloads[0].rule == "critical.unload" and unloads[0].rss_mb == 200 and unloads[0].percent_used == 90
    assert "projected 70.0 %" in unloads[0].reason


def test_critical_unloads_medium_when_low_is_not_enough() -> None:
    views = [
        view("nlp", "HIGH", 300),
        view("voice", "MEDIUM", 150),
        view("balloon", "LOW", 50),
        view("idle_low", "LOW", 40),
    ]
    actions = decide(snap(99, MemoryState.CRITICAL), views, CFG, now=100.0, healthy_since=None)
    # 99 -> 94 -> 90 with both LOW gone, still CRITICAL -> 75 with MEDIUM; HIGH is never touched.
    assert [a.component for a in actions if a.kind is ActionKind.UNLOAD] == ["balloon", "idle_low", "voice"]
    mild = decide(snap(87, MemoryState.CRITICAL), views, CFG, now=100.0, healthy_since=None)
    assert [a.component for a in mild if a.kind is ActionKind.UNLOAD] == ["balloon"]


def test_within_a_priority_prefer_most_freed_then_least_recently_used() -> None:
    lows = [view("a", "LOW", 50, last_used=50.0), view("b", "LOW", 50, last_used=10.0), view("c", "LOW", 60)]
    actions = decide(snap(99, MemoryState.CRITICAL), lows, CFG, now=100.0, healthy_since=None)
    assert [a.component for a in actions if a.kind is ActionKind.UNLOAD] == ["c", "b", "a"]


def test_emergency_freezes_and_unloads_everything_but_critical() -> None:
    actions = decide(snap(97, MemoryState.EMERGENCY), STACK, CFG, now=100.0, healthy_since=None)
    frozen = [c for k, c in kinds(actions) if k == "FREEZE"]
    unloaded = [c for k, c in kinds(actions) if k == "UNLOAD"]
    assert set(frozen) == set(unloaded) == {"nlp", "voice", "balloon", "idle_low"}
    assert kinds(actions).index(("FREEZE", "balloon")) < kinds(actions).index(("UNLOAD", "nlp"))


@pytest.mark.parametrize(
    "state, percent", [(MemoryState.WARNING, 80), (MemoryState.CRITICAL, 99), (MemoryState.EMERGENCY, 99)]
)
def test_critical_priority_is_never_frozen_or_unloaded(state: MemoryState, percent: float) -> None:
    only_critical = [view("chatbot", "CRITICAL", 900, growing=True)]
    for a in decide(snap(percent, state), only_critical, CFG, now=1000.0, healthy_since=None):
        assert a.kind not in (ActionKind.FREEZE, ActionKind.UNLOAD)


def test_a_dependency_of_a_running_higher_priority_component_waits_for_it() -> None:
    views = [view("db", "LOW", 400, growing=True), view("app", "HIGH", 100, after=("db",))]
    critical = decide(snap(99, MemoryState.CRITICAL), views, CFG, now=100.0, healthy_since=None)
    assert critical == []  # app (HIGH) is not touched at CRITICAL, so db stays too
    emergency = decide(snap(99, MemoryState.EMERGENCY), views, CFG, now=100.0, healthy_since=None)
    assert ("FREEZE", "db") in kinds(emergency) and ("FREEZE", "app") in kinds(emergency)


def test_frozen_too_long_is_unloaded_under_pressure_and_thawed_otherwise() -> None:
    frozen = [view("voice", "MEDIUM", 10, state=FROZEN, frozen_since=10.0)]
    assert kinds(decide(snap(80, MemoryState.WARNING), frozen, CFG, now=39.0, healthy_since=None)) == []
    assert kinds(decide(snap(80, MemoryState.WARNING), frozen, CFG, now=41.0, healthy_since=None)) == [
        ("UNLOAD", "voice")
    ]
    assert kinds(decide(snap(50, MemoryState.HEALTHY), frozen, CFG, now=41.0, healthy_since=40.0)) == [
        ("THAW", "voice")
    ]
    # A HIGH component frozen in an EMERGENCY is not a CRITICAL-state candidate: only the time limit unloads it.
    high = [view("nlp", "HIGH", 10, state=FROZEN, frozen_since=10.0)]
    assert decide(snap(86, MemoryState.CRITICAL), high, CFG, now=39.0, healthy_since=None) == []
    actions = decide(snap(86, MemoryState.CRITICAL), high, CFG, now=41.0, healthy_since=None)
    assert [(a.kind.value, a.rule) for a in actions] == [("UNLOAD", "frozen.max_time")]


def test_recovery_thaws_then_reloads_highest_priority_first_while_it_fits() -> None:
    views = [
        view("voice", "MEDIUM", 100, state=FROZEN, frozen_since=95.0),
        view("nlp", "HIGH", 0, state=STOPPED, unloaded_by_policy=True, estimated_bytes=150 * MB),
        view("balloon", "LOW", 0, state=STOPPED, unloaded_by_policy=True, estimated_bytes=200 * MB),
        view("manual", "HIGH", 0, state=STOPPED, unloaded_by_policy=False, estimated_bytes=1 * MB),
    ]
    assert decide(snap(40, MemoryState.HEALTHY), views, CFG, now=100.0, healthy_since=95.0) == []  # hold not over
    actions = decide(snap(40, MemoryState.HEALTHY), views, CFG, now=100.0, healthy_since=80.0)
    # 40 % + 150 MB = 55 % fits; + 200 MB more = 75 % would be WARNING: balloon waits.
    assert kinds(actions) == [("THAW", "voice"), ("RELOAD", "nlp")]


def test_budget_mode_projection_uses_the_stack_against_the_budget() -> None:
    s = snap(10, MemoryState.CRITICAL, stack_mb=450, budget_mb=500)
    assert projected_percent(s, 0) == 90.0
    assert projected_percent(s, -100 * MB) == 70.0


def test_explain_lists_candidates_and_the_next_rule() -> None:
    out = explain(snap(50, MemoryState.HEALTHY), STACK, CFG, now=100.0, healthy_since=99.0)
    assert out["state"] == "HEALTHY" and out["next_state"] == "WARNING"
    rows = {r["name"]: r for r in out["candidates"]}  # type: ignore[index]
    assert rows["chatbot"]["protected"] is True and rows["chatbot"]["at_warning"] == ["TRIM"]
    assert rows["balloon"]["at_warning"] == ["UNLOAD"] and rows["balloon"]["now"] == []


def test_warning_freezes_a_low_component_about_to_reach_critical_then_unloads_it() -> None:
    fast = view("balloon", "LOW", 200, growth_bytes_s=200 * MB, last_used=99.0)  # 200 MB/s; CRITICAL is 150 MB away
    slow = view("cache", "LOW", 100, growth_bytes_s=1 * MB, last_used=99.0)
    actions = decide(snap(70, MemoryState.WARNING), [fast, slow], CFG, now=100.0, healthy_since=None)
    assert [(a.kind.value, a.component, a.rule) for a in actions] == [("FREEZE", "balloon", "warning.early_freeze")]
    assert "set to reach CRITICAL in 0.8 s" in actions[0].reason  # 150 MB at 200 MB/s
    frozen = msgspec.structs.replace(fast, state=FROZEN, frozen_since=100.0, growth_bytes_s=0.0)
    later = decide(snap(71, MemoryState.WARNING), [frozen, slow], CFG, now=101.0, healthy_since=None)
    assert [(a.kind.value, a.component, a.rule) for a in later] == [("UNLOAD", "balloon", "warning.unload_frozen")]


def test_a_persons_request_says_so_with_the_real_figures() -> None:
    # optimize in HEALTHY at 41.5 %: the policy acts as at WARNING's threshold, but the actions
    # say who asked and where memory really is; unloads then stay down (requested_by).
    forced = snap(70.0, MemoryState.WARNING)
    views = [view("chatbot", "CRITICAL", has_trim=True), view("extra", "LOW", last_used=0.0)]
    asked = Requested(by="optimize", state=MemoryState.HEALTHY, percent_used=41.5)
    actions = decide_through_trims(forced, views, CFG, now=1000.0, requested=asked)
    assert actions and all(a.requested_by == "optimize" for a in actions)
    for a in actions:
        assert a.reason.endswith("requested (optimize) at HEALTHY 41.5 % used"), a.reason
        assert (a.state, a.percent_used, a.threshold_percent) == (MemoryState.HEALTHY, 41.5, None)
    pressure = decide_through_trims(forced, views, CFG, now=1000.0)
    assert all(a.requested_by is None and a.reason.endswith("at WARNING 70.0 %") for a in pressure)


def test_make_room_takes_the_cheapest_to_bring_back_then_the_longest_unused() -> None:
    from supervisor.policy import plan_make_room

    candidates = [
        ("busy_low", Priority.LOW, 200 * MB, 2.0, 900.0),  # used a moment ago
        ("idle_low", Priority.LOW, 200 * MB, 2.0, 100.0),  # same cost, unused for long
        ("slow_medium", Priority.MEDIUM, 200 * MB, 60.0, 0.0),  # a minute to bring back
    ]
    assert plan_make_room(150 * MB, candidates) == (["idle_low"], 200 * MB)
    assert plan_make_room(350 * MB, candidates) == (["idle_low", "busy_low"], 400 * MB)
    assert plan_make_room(900 * MB, candidates)[1] == 600 * MB  # not enough: the caller refuses
