"""What to do about memory: a pure function from plain data to a list of actions.

    decide(snapshot, components, config, now, healthy_since) -> [Action, ...]

The rules, one function each, in the order `decide` applies them (each action names its rule):
- WARNING     `warning.early_freeze` freeze a LOW component growing fast enough to reach
                                  CRITICAL within early_freeze_s
- WARNING up  `trim`              ask components with a trim_signal to drop caches (once per
                                  trim_cooldown_s)
- WARNING     `warning.idle_unload` once trims have settled (trim_settle_s) and memory is still
                                  short: unload LOW components idle for idle_unload_s;
              `warning.unload_frozen` unload frozen LOW components
- CRITICAL    `critical.freeze`   freeze growing LOW and MEDIUM components at once
              `critical.unload`   unload LOW, then MEDIUM, until the projection is under CRITICAL;
                                  within a priority, the one that frees most, then least recently used
- EMERGENCY   `emergency.freeze`, `emergency.unload`: every non-CRITICAL component
- frozen      `frozen.max_time`   after max_frozen_s: unloaded if memory is still short (not
                                  HEALTHY), thawed otherwise
- HEALTHY     `recovery.thaw`, `recovery.reload`: after recovery_hold_s, thaw the frozen, and
              reload the autostart components pressure unloaded, highest priority first, while
              each fits below WARNING by its estimate
The freeze, trim and unload rules need the memory itself over the state's threshold, not
only the state that hysteresis holds on the way down.

CRITICAL-priority components are never frozen or unloaded. A component that a running
higher-priority component comes `after` is not frozen or unloaded before that dependant.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from .config import MemorySection
from .model import MIB, Action, ActionKind, ComponentState, MemoryState, Priority, Requested, Snapshot, state_rank
from .pressure import level_for, threshold

HEALTHY, WARNING, CRITICAL, EMERGENCY = (
    MemoryState.HEALTHY,
    MemoryState.WARNING,
    MemoryState.CRITICAL,
    MemoryState.EMERGENCY,
)
_ACTIVE = frozenset({ComponentState.STARTING, ComponentState.READY})


class ComponentView(msgspec.Struct, frozen=True):
    """What the policy knows of one component."""

    name: str
    priority: Priority
    state: ComponentState
    memory_bytes: int = 0  # RSS, or the footprint on macOS (TreeUsage.memory_bytes)
    growing: bool = False  # grew since the previous sample, beyond noise
    has_trim: bool = False
    can_freeze: bool = True  # False for an in-process component: trimmed and unloaded, never frozen
    last_used: float = 0.0  # monotonic: last start or `touch`
    frozen_since: float | None = None
    last_trim_at: float | None = None
    autostart: bool = True
    unloaded_by_policy: bool = False
    estimated_bytes: int = 0
    after: tuple[str, ...] = ()
    busy: bool = False  # an action on it is still being carried out
    growth_bytes_s: float = 0.0  # recent growth rate

    @property
    def active(self) -> bool:
        return self.state in _ACTIVE and not self.busy

    @property
    def frozen(self) -> bool:
        return self.state is ComponentState.FROZEN and not self.busy


def projected_percent(snapshot: Snapshot, delta_bytes: int) -> float:
    """Used % if the stack's memory changed by `delta_bytes` (negative: freed)."""
    system = snapshot.system
    used = system.total_bytes - system.available_bytes + delta_bytes
    percent = 100.0 * used / system.total_bytes if system.total_bytes else 0.0
    if snapshot.budget_bytes:
        percent = max(percent, 100.0 * (snapshot.stack_bytes + delta_bytes) / snapshot.budget_bytes)
    return percent


def decide(
    snapshot: Snapshot,
    components: Iterable[ComponentView],
    cfg: MemorySection,
    now: float,
    healthy_since: float | None,
    requested: Requested | None = None,
) -> list[Action]:
    """Every rule of the table above, in this order; each adds the actions it calls for."""
    views = list(components)
    state = snapshot.state
    act = _Maker(snapshot, cfg, requested)
    # Destructive rules need the memory itself over the line, not just the state that
    # hysteresis holds on the way down.
    over = state is not HEALTHY and snapshot.percent_used >= threshold(state, cfg)
    actions = _early_freeze_and_trims(snapshot, views, cfg, now, act, over)
    if state is WARNING and over and not any(a.kind is ActionKind.TRIM for a in actions):
        actions += _warning_unloads(views, cfg, now, act)
    if state is CRITICAL and over:
        actions += _critical(snapshot, views, cfg, act)
    if state is EMERGENCY and over:
        actions += _emergency(views, act)
    actions += _frozen_too_long(
        views, cfg, now, act, state, {a.component for a in actions if a.kind is ActionKind.UNLOAD}
    )
    if state is HEALTHY and healthy_since is not None and now - healthy_since >= cfg.recovery_hold_s:
        thawing = {a.component for a in actions if a.kind is ActionKind.THAW}
        actions += [a for a in _recover(snapshot, views, cfg, act, now - healthy_since) if a.component not in thawing]
    return actions


def _early_freeze_and_trims(
    snapshot: Snapshot, views: list[ComponentView], cfg: MemorySection, now: float, act: _Maker, over: bool
) -> list[Action]:
    """`warning.early_freeze` (a LOW component about to take memory to CRITICAL), then `*.trim`."""
    state = snapshot.state
    early = _about_to_cross(snapshot, views, cfg) if state is WARNING and over else []
    actions = [
        act(ActionKind.FREEZE, v, "warning.early_freeze", f"set to reach CRITICAL in {eta:.1f} s")
        for v, eta in early
        if v.can_freeze
    ]
    if state_rank(state) >= state_rank(WARNING):
        freezing = {v.name for v, _ in early if v.can_freeze}
        trims = [v for v in _trim_candidates(views, cfg, now) if v.name not in freezing]
        actions += [act(ActionKind.TRIM, v, "trim", "drop caches") for v in trims]
    return actions


def _warning_unloads(views: list[ComponentView], cfg: MemorySection, now: float, act: _Maker) -> list[Action]:
    """Once trims have settled: `warning.idle_unload` and `warning.unload_frozen`."""
    if not _trims_settled(views, cfg, now):
        return []
    idle = [
        v
        for v in views
        if v.priority is Priority.LOW
        and v.active
        and v.state is ComponentState.READY
        and now - v.last_used >= cfg.idle_unload_s
    ]
    actions = [
        act(ActionKind.UNLOAD, v, "warning.idle_unload", f"LOW and idle {now - v.last_used:.0f} s")
        for v in _respect_dependants(idle, views)
    ]
    # A LOW component frozen on its way up (early freeze) frees nothing while frozen.
    stuck = [v for v in views if v.priority is Priority.LOW and v.frozen]
    actions += [
        act(ActionKind.UNLOAD, v, "warning.unload_frozen", "LOW, frozen, and memory still short")
        for v in _respect_dependants(stuck, views)
    ]
    return actions


def _critical(snapshot: Snapshot, views: list[ComponentView], cfg: MemorySection, act: _Maker) -> list[Action]:
    """`critical.freeze` the growing LOW and MEDIUM, then `critical.unload` until under CRITICAL."""
    growing = [
        v for v in views if v.priority in (Priority.LOW, Priority.MEDIUM) and v.active and v.growing and v.can_freeze
    ]
    actions = [
        act(ActionKind.FREEZE, v, "critical.freeze", "growing at CRITICAL") for v in _respect_dependants(growing, views)
    ]
    return actions + _unload_until_under(snapshot, views, cfg, (Priority.LOW, Priority.MEDIUM), act)


def _emergency(views: list[ComponentView], act: _Maker) -> list[Action]:
    """`emergency.freeze` and `emergency.unload`: everything but CRITICAL."""
    others = [v for v in views if v.priority is not Priority.CRITICAL and v.active and v.can_freeze]
    actions = [act(ActionKind.FREEZE, v, "emergency.freeze", "EMERGENCY: freeze all but CRITICAL") for v in others]
    everyone = [v for v in views if v.priority is not Priority.CRITICAL and (v.active or v.frozen)]
    return actions + [act(ActionKind.UNLOAD, v, "emergency.unload", "EMERGENCY: keep only CRITICAL") for v in everyone]


def _frozen_too_long(
    views: list[ComponentView], cfg: MemorySection, now: float, act: _Maker, state: MemoryState, unloading: set[str]
) -> list[Action]:
    """`frozen.max_time`: unloaded while memory is still short, thawed once it is not."""
    actions = []
    for v in views:
        if not v.frozen or v.frozen_since is None or now - v.frozen_since < cfg.max_frozen_s or v.name in unloading:
            continue
        held = f"frozen {now - v.frozen_since:.0f} s (max_frozen_s {cfg.max_frozen_s:g})"
        if state is not HEALTHY:
            actions.append(act(ActionKind.UNLOAD, v, "frozen.max_time", f"{held}, memory still {state.value}"))
        else:
            actions.append(act(ActionKind.THAW, v, "frozen.max_time", f"{held}, memory {state.value}"))
    return actions


class _Maker:
    """Builds actions with the evidence every action carries."""

    def __init__(self, snapshot: Snapshot, cfg: MemorySection, requested: Requested | None = None) -> None:
        self.snapshot = snapshot
        self.cfg = cfg
        self.requested = requested

    def __call__(self, kind: ActionKind, view: ComponentView, rule: str, why: str) -> Action:
        snap = self.snapshot
        limit = threshold(snap.state, self.cfg) if snap.state is not HEALTHY else None
        rss_mb = view.memory_bytes / MIB
        rule = rule if "." in rule else f"{snap.state.value.lower()}.{rule}"
        req = self.requested
        if req is not None:  # the real state and percentage, not the ones the request acts as if
            when = f"requested ({req.by}) at {req.state.value} {req.percent_used:.1f} % used"
            state, percent, limit = req.state, req.percent_used, None
        else:
            when = f"at {snap.state.value} {snap.percent_used:.1f} %"
            state, percent = snap.state, snap.percent_used
        return Action(
            kind=kind,
            component=view.name,
            rule=rule,
            reason=f"{why}: {view.name} ({view.priority.value}, {rss_mb:.0f} MB) {when}",
            state=state,
            percent_used=round(percent, 2),
            rss_mb=round(rss_mb, 1),
            threshold_percent=limit,
            requested_by=req.by if req else None,
        )


def _trim_candidates(views: list[ComponentView], cfg: MemorySection, now: float) -> list[ComponentView]:
    # READY only: before readiness a component may not have installed its handler yet, and
    # the default action of SIGUSR1 and most trim signals is to terminate.
    return [
        v
        for v in views
        if v.has_trim
        and v.active
        and v.state is ComponentState.READY
        and (v.last_trim_at is None or now - v.last_trim_at >= cfg.trim_cooldown_s)
    ]


def _trims_settled(views: list[ComponentView], cfg: MemorySection, now: float) -> bool:
    """Escalate past trimming only once every recent trim request has had time to work (and
    no component that could trim is still starting)."""
    if any(v.has_trim and v.active and v.state is ComponentState.STARTING for v in views):
        return False
    return all(
        v.last_trim_at is None or now - v.last_trim_at >= cfg.trim_settle_s
        for v in views
        if v.has_trim and v.active and v.state is ComponentState.READY
    )


def _about_to_cross(
    snapshot: Snapshot, views: list[ComponentView], cfg: MemorySection
) -> list[tuple[ComponentView, float]]:
    """LOW components growing fast enough to take memory to CRITICAL within early_freeze_s."""
    out = []
    for v in views:
        if v.priority is not Priority.LOW or not v.active or v.growth_bytes_s <= 0:
            continue
        room = bytes_until(snapshot, cfg.critical_percent)
        eta = room / v.growth_bytes_s
        if eta < cfg.early_freeze_s:
            out.append((v, eta))
    return out


def bytes_until(snapshot: Snapshot, percent: float) -> float:
    """How much the stack may still grow before used % reaches `percent`."""
    system = snapshot.system
    room = system.total_bytes * percent / 100 - (system.total_bytes - system.available_bytes)
    if snapshot.budget_bytes:
        room = min(room, snapshot.budget_bytes * percent / 100 - snapshot.stack_bytes)
    return max(0.0, room)


def plan_make_room(
    shortfall_bytes: int, candidates: Iterable[tuple[str, Priority, int, float, float]]
) -> tuple[list[str], int]:
    """Which lower-priority components to unload so that `shortfall_bytes` fit: least costly to
    bring back first (seconds of reload per MB freed), then the lowest priority, then the
    longest unused. Candidates are (name, priority, bytes, time to ready s, last used).
    Returns (names, bytes they free)."""
    ranked = sorted(candidates, key=lambda c: (c[3] / max(c[2] / MIB, 1.0), -c[1].rank, c[4]))
    chosen, freed = [], 0
    for name, _prio, rss, _ttr, _used in ranked:
        if freed >= shortfall_bytes:
            break
        chosen.append(name)
        freed += rss
    return chosen, freed


def _respect_dependants(chosen: list[ComponentView], views: list[ComponentView]) -> list[ComponentView]:
    """Drop a component while a running, higher-priority component that comes after it is not
    itself chosen: the dependant would stall on it."""
    picked = {v.name: v for v in chosen}
    changed = True
    while changed:
        changed = False
        for name, v in list(picked.items()):
            for d in views:
                if (
                    name in d.after
                    and d.priority.rank < v.priority.rank
                    and (d.active or d.busy)
                    and d.name not in picked
                ):
                    del picked[name]
                    changed = True
                    break
    return [v for v in chosen if v.name in picked]


def _unload_until_under(
    snapshot: Snapshot, views: list[ComponentView], cfg: MemorySection, priorities: tuple[Priority, ...], act: _Maker
) -> list[Action]:
    candidates = [v for v in views if v.priority in priorities and (v.active or v.frozen)]
    # LOW before MEDIUM; within a priority the one that frees most, then the least recently used.
    candidates.sort(key=lambda v: (-v.priority.rank, -v.memory_bytes, v.last_used))
    allowed = {v.name for v in _respect_dependants(candidates, views)}
    actions = []
    freed = 0
    for v in candidates:
        if projected_percent(snapshot, -freed) < cfg.critical_percent:
            break
        if v.name not in allowed:
            continue
        freed += v.memory_bytes
        after = projected_percent(snapshot, -freed)
        actions.append(
            act(
                ActionKind.UNLOAD,
                v,
                "critical.unload",
                f"unload to get under {cfg.critical_percent:g} % (projected {after:.1f} %)",
            )
        )
    return actions


def _recover(
    snapshot: Snapshot, views: list[ComponentView], cfg: MemorySection, act: _Maker, held_s: float
) -> list[Action]:
    actions = []
    for v in sorted((v for v in views if v.frozen), key=lambda v: v.priority.rank):
        actions.append(act(ActionKind.THAW, v, "recovery.thaw", f"HEALTHY for {held_s:.0f} s"))
    added = 0
    reloadable = [
        v for v in views if v.unloaded_by_policy and v.autostart and v.state is ComponentState.STOPPED and not v.busy
    ]
    for v in sorted(reloadable, key=lambda v: v.priority.rank):
        projected = projected_percent(snapshot, added + v.estimated_bytes)
        if level_for(projected, cfg) is not HEALTHY:
            break  # highest priority first: a lower one must not jump the queue
        added += v.estimated_bytes
        actions.append(
            act(
                ActionKind.RELOAD,
                v,
                "recovery.reload",
                f"fits: projected {projected:.1f} % with its {v.estimated_bytes / MIB:.0f} MB",
            )
        )
    return actions


def decide_through_trims(
    snapshot: Snapshot, views: list[ComponentView], cfg: MemorySection, now: float, requested: Requested | None = None
) -> list[Action]:
    """What a state does in full: its first tick (trim requests, whatever the cooldown) and the
    tick after the trims settled short (escalation). For explain, optimize and emergency-cleanup
    (`requested`: the person's request, whose words the actions then carry)."""
    fresh = [msgspec.structs.replace(v, last_trim_at=None) for v in views]
    settled = [msgspec.structs.replace(v, last_trim_at=now - cfg.trim_settle_s) if v.has_trim else v for v in views]
    actions: list[Action] = []
    both = decide(snapshot, fresh, cfg, now, None, requested) + decide(snapshot, settled, cfg, now, None, requested)
    for action in both:
        if all((a.kind, a.component) != (action.kind, action.component) for a in actions):
            actions.append(action)
    return actions


def explain(
    snapshot: Snapshot, components: Iterable[ComponentView], cfg: MemorySection, now: float, healthy_since: float | None
) -> dict[str, object]:
    """The current state, what fires now, what would fire at the next state up, and why, per component."""
    views = list(components)
    now_actions = decide(snapshot, views, cfg, now, healthy_since)
    next_state = {HEALTHY: WARNING, WARNING: CRITICAL, CRITICAL: EMERGENCY, EMERGENCY: EMERGENCY}[snapshot.state]
    at_next = msgspec.structs.replace(
        snapshot, state=next_state, percent_used=max(snapshot.percent_used, threshold(next_state, cfg))
    )
    next_actions = decide_through_trims(at_next, views, cfg, now)
    table = []
    for v in views:
        mine_now = [a.kind.value for a in now_actions if a.component == v.name]
        mine_next = [a.kind.value for a in next_actions if a.component == v.name]
        table.append(
            {
                "name": v.name,
                "priority": v.priority.value,
                "state": v.state.value,
                "rss_mb": round(v.memory_bytes / MIB, 1),
                "idle_s": round(now - v.last_used, 1),
                "growing": v.growing,
                "now": mine_now,
                "at_" + next_state.value.lower(): mine_next,
                "protected": v.priority is Priority.CRITICAL,
                "can_freeze": v.can_freeze,
                **({} if v.can_freeze else {"note": "in-process: cannot be frozen (trimmed, then unloaded)"}),
            }
        )
    return {
        "state": snapshot.state.value,
        "percent_used": round(snapshot.percent_used, 2),
        "thresholds": {
            "warning": cfg.warning_percent,
            "critical": cfg.critical_percent,
            "emergency": cfg.emergency_percent,
        },
        "fires_now": [
            {"rule": a.rule, "kind": a.kind.value, "component": a.component, "reason": a.reason} for a in now_actions
        ],
        "next_state": next_state.value,
        "fires_at_next_state": [{"rule": a.rule, "kind": a.kind.value, "component": a.component} for a in next_actions],
        "candidates": table,
    }
