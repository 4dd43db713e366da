"""The memory manager's loop: take readings in, classify, decide, act, publish.

    sampler thread: readings (sampler.py) -> the loop, when it needs them (attention.py)
    take in:  each component's ComponentMemory, high-water marks and leak checks when due
              -> pressure.classify (thresholds, kernel signals, hysteresis) -> Snapshot
    decide:   policy.decide -> enforcer.apply, unless no rule can fire (attention.may_act)
    then:     tell the sampler the next interval (pressure.next_interval) and whether the loop
              wants every reading

After the machine wakes from sleep (the suspend clock jumped), actions are held off for
`wake_settle_s`: memory figures right after a wake-up are not to be trusted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.abc
import msgspec
import structlog

from . import orphans, platform, procs
from .attention import headroom_bytes, may_act, wants_every_reading
from .config import MemorySection
from .enforcer import Enforcer
from .errors import SamplerStuck
from .events import EventBus
from .inprocess import InProcess
from .launcher import Child
from .model import MIB, ComponentState, MemoryState, Requested, Snapshot, state_rank
from .policy import ComponentView, decide, decide_through_trims
from .predictor import LEAK_WINDOW_S, Prediction, Trend, leak_possible, trend
from .pressure import PressureTracker, classify, hold_after_wake, kernel_floor, level_for, next_interval, threshold
from .report import explanation, report, summary
from .runner import Runner
from .sampler import Reading, Sampler

log = structlog.get_logger("ironcliw.memory")

PUBLISH_EVERY_S = 0.25  # memory events at most this often (fast sampling runs at 50 Hz)
# Kernel high-water marks (VmHWM) keep a peak until they are read, so they need not be read
# often: before a stop they are read once more, and a leader that exits on its own leaves its
# lifetime peak in wait4's accounting (launcher.Child). Only a grandchild that exits on its
# own between two reads takes its peak with it.
HWM_EVERY_S = 10.0
HWM_EVERY_UNDER_PRESSURE_S = 1.0
TREND_EVERY_S = 2.0  # one trend point per component this often (10 minutes kept)
LEAK_CHECK_EVERY_S = 30.0
LEAK_REPORT_EVERY_S = 600.0
SILENT_SAMPLER_S = 180.0  # the sampler hands over every minute; silence this long: restart it


class MemoryMonitor:
    def __init__(
        self,
        cfg: MemorySection,
        runners: dict[str, Runner],
        bus: EventBus,
        predict: Callable[[str], Prediction] | None = None,
    ) -> None:
        self.predict = predict
        self.cfg = cfg
        self.runners = runners
        self.bus = bus
        self.tracker = PressureTracker()
        self.snapshot: Snapshot | None = None  # the newest reading taken in
        self.members: dict[int, list[int]] = {}  # root -> PIDs, as the newest walk taken in saw them
        self.orphans: dict[str, list[int]] = {}  # component -> orphans, as that walk found them
        self.sampler = Sampler(cfg, extra_roots=orphans.OrphanFinder())
        bus.on_subscribe = self.sampler.nudge  # a new subscriber wants memory events from the loop
        self.enforcer = Enforcer(runners, bus, cfg, self.level_now)
        self.on_walk: Callable[[], None] | None = None  # the core: the record of every process
        self._changed_at = float("-inf")  # when a component last changed state or process
        self._decided_at = float("-inf")
        self._published_at = self._hold_until = float("-inf")
        self._suspended = platform.suspended_seconds()
        self._hwm_at = self._trend_at = self._leak_at = float("-inf")
        self._walks_seen = -1
        self._leaks_reported: dict[str, float] = {}

    def roots_changed(self, name: str, child: Child | None) -> None:
        """A component changed state, or its process started or ended (`child`): the sampler
        reads soon, the new set of trees if it changed (Sampler.set_tree)."""
        self._changed_at = time.monotonic()
        held = child.attributed if isinstance(child, InProcess) else None
        self.sampler.set_tree(name, child.pid if child is not None else None, held)
        self.sampler.nudge()

    def leaders(self) -> set[int]:
        """The PID of every running component's leader."""
        return set(self.sampler.roots.values())

    @property
    def stale(self) -> bool:
        """A component changed since the newest reading taken in was read."""
        return self.snapshot is None or self.snapshot.time < self._changed_at

    # --- taking readings in --------------------------------------------------------------

    def _take_in(self, readings: list[Reading]) -> Snapshot | None:
        """Record readings (oldest first), then classify and publish the newest."""
        if not readings:
            return self.snapshot
        newest = readings[-1]

        self._record(readings)
        now = newest.time
        if newest.walks != self._walks_seen:  # the trees' membership may have changed
            self._walks_seen = newest.walks
            self.members, self.orphans = dict(newest.members), dict(newest.orphans)
            orphans.reap(self.leaders())
            if self.on_walk is not None:
                self.on_walk()
        # Once per hand-over, not per reading: these read the present, whatever the readings' age.
        hwm_every = HWM_EVERY_S if self.tracker.state is MemoryState.HEALTHY else HWM_EVERY_UNDER_PRESSURE_S
        if now - self._hwm_at >= hwm_every:
            self._hwm_at = now
            look_at_trees(self.runners, self.members, self.cfg, now)
        if now - self._leak_at >= LEAK_CHECK_EVERY_S:
            self._leak_at = now
            self._check_leaks(now)
        previous = self.tracker.state
        self.tracker = classify(self.tracker, newest.percent, newest.system, self.cfg, now)
        snap = self.snapshot = Snapshot(
            time=now,
            system=newest.system,
            components=newest.usage,
            stack_bytes=newest.stack,
            budget_bytes=self.cfg.budget_mb * MIB if self.cfg.budget_mb else None,
            percent_used=newest.percent,
            state=self.tracker.state,
        )
        self._announce(snap, previous, newest)
        return snap

    def _announce(self, snap: Snapshot, previous: MemoryState, newest: Reading) -> None:
        """Log a change of state; publish `memory` events (at most every PUBLISH_EVERY_S) to subscribers."""
        changed = snap.state is not previous
        if changed:
            log.info(
                "memory_state_changed",
                old=previous.value,
                new=snap.state.value,
                percent_used=round(newest.percent, 2),
                stack_mb=round(newest.stack / MIB, 1),
                available_mb=round(snap.available_mb, 1),
            )
        if self.bus.wants("memory") and (changed or snap.time - self._published_at >= PUBLISH_EVERY_S):
            self._published_at = snap.time
            self.bus.publish(
                "memory",
                **summary(snap, self.cfg, self.runners),
                components_mb={name: round(tree.memory_bytes / MIB, 1) for name, tree in newest.usage.items()},
                changed=changed,
            )

    def _record(self, readings: list[Reading]) -> None:
        """Each component's share of the readings, a component at a time. Readings from before
        a restart belong to the old process and are left out."""
        trend_times = set()
        for r in readings:
            if r.time - self._trend_at >= TREND_EVERY_S:
                self._trend_at = r.time
                trend_times.add(r.time)
        for name, runner in self.runners.items():
            memory = runner.memory
            if memory.pid is None:
                continue
            mine = [(r.time, r.usage[name]) for r in readings if r.roots.get(name) == memory.pid]
            if mine:
                memory.record(mine, runner.state is ComponentState.READY, trend_times)

    def _check_leaks(self, now: float) -> None:
        for name, t in suspected_leaks(self.runners, self._leaks_reported, now):
            self._leaks_reported[name] = now
            log.warning("leak_suspected", component=name, slope_mb_per_min=t.slope_mb_per_min, detail=t.detail)
            self.bus.publish("action", component=name, kind="LEAK_SUSPECTED", detail=t.detail)

    # --- fresh readings on demand ---------------------------------------------------------

    def sample(self) -> Snapshot:
        """A reading taken now, taken in (with every reading queued before it)."""
        self.sampler.read_now()
        snap = self._take_in(self.sampler.take())
        assert snap is not None  # read_now queued one
        return snap

    def fresh(self, max_age_s: float) -> Snapshot:
        """The newest snapshot once every queued reading is taken in, if it is younger than
        `max_age_s` and no component changed since; otherwise a reading taken now."""
        snap = self._take_in(self.sampler.take())
        if snap is None or self.stale or time.monotonic() - snap.time > max_age_s:
            try:
                snap = self.sample()
            except SamplerStuck as exc:  # answer from the newest reading: a status must not fail
                if snap is None:
                    raise
                log.error("status_from_an_older_reading", problem=exc.message, taken_at=snap.time)
        return snap

    def recent(self, max_age_s: float) -> Snapshot:
        """`fresh`, but a component's change since the newest reading forces no new one (the
        waiting room counts what it let in itself; `up` of N components must not cost N)."""
        snap = self._take_in(self.sampler.take())
        return snap if snap is not None and time.monotonic() - snap.time <= max_age_s else self.fresh(max_age_s)

    def level_now(self) -> tuple[MemoryState, float]:
        """A fresh reading without hysteresis: the enforcer's re-check before a destructive act
        (on the newest snapshot if the sampler is stuck: acting on it beats not acting)."""
        try:
            snap = self.sample()
        except SamplerStuck as exc:
            log.error("recheck_without_fresh_reading", problem=exc.message)
            snap = self.current()
        level, floor = level_for(snap.percent_used, self.cfg), kernel_floor(snap.system, self.cfg)
        return (level if state_rank(level) >= state_rank(floor) else floor), snap.percent_used

    def current(self) -> Snapshot:
        return self.snapshot if self.snapshot is not None else self.sample()

    def headroom_bytes(self, snap: Snapshot) -> int:
        """Bytes the stack or the system may still grow before WARNING."""
        return headroom_bytes(snap.system, snap.stack_bytes, self.cfg)

    # --- deciding ------------------------------------------------------------------------

    def views(self, now: float) -> list[ComponentView]:
        return component_views(self.runners, self.enforcer.busy, self.predict)

    def _may_act(self, snap: Snapshot) -> bool:
        held = any(r.state is ComponentState.FROZEN or r.unloaded_by_policy for r in self.runners.values())
        return may_act(snap.state, held)

    async def run(self, tg: anyio.abc.TaskGroup, stopping: Callable[[], bool]) -> None:
        """The loop: wait for the sampler, take its readings in, decide and act on the newest."""
        self.sampler.start()
        while True:
            with anyio.move_on_after(SILENT_SAMPLER_S) as waited:
                await self.sampler.wait()
            if waited.cancelled_caught:
                log.error("sampler_silent", silent_s=SILENT_SAMPLER_S, revived=self.sampler.revive())
            snap = self._take_in(self.sampler.take())
            if snap is None or snap.time <= self._decided_at:
                continue  # taken in and decided on already (a re-check's reading, during the last decision)
            now = snap.time
            self._check_wake(now)
            acting = self._may_act(snap)
            if acting and not stopping() and now >= self._hold_until:
                actions = decide(snap, self.views(now), self.cfg, now, self.tracker.healthy_since)
                await self.enforcer.apply(actions, tg)
            # The next decision waits for a reading taken after this one was carried out.
            self._decided_at = time.monotonic()
            interval = next_interval(snap.state, self.headroom_bytes(snap), self.cfg)
            self.sampler.configure(interval, wants_every_reading(acting, self.stale, self.bus.wants("memory")))

    def _check_wake(self, now: float) -> None:
        suspended = platform.suspended_seconds()
        hold = hold_after_wake(self._suspended, suspended, now, self._hold_until, self.cfg)
        if hold != self._hold_until:
            log.warning("woke_from_sleep", slept_s=round(suspended - self._suspended, 1), hold_s=self.cfg.wake_settle_s)
            self._hold_until = hold
        self._suspended = suspended

    async def act_as(self, state: MemoryState, tg: anyio.abc.TaskGroup, by: str) -> list[dict[str, object]]:
        """Carry out now what the policy does at `state` (optimize: WARNING; emergency-cleanup:
        EMERGENCY), whatever the current state, without waiting for trims to settle. `by`
        names the request: its actions say so, and what it unloads stays down."""
        snap = self.sample()
        now = snap.time
        # Asked for explicitly: act as if memory were at that state's threshold.
        forced = msgspec.structs.replace(
            snap, state=state, percent_used=max(snap.percent_used, threshold(state, self.cfg))
        )
        requested = Requested(by=by, state=snap.state, percent_used=snap.percent_used)
        actions = decide_through_trims(forced, self.views(now), self.cfg, now, requested)
        return await self.enforcer.apply(actions, tg, force=True)

    # --- what the APIs show (built in report.py) -------------------------------------------

    def summary(self, snap: Snapshot | None = None) -> dict[str, Any]:
        return summary(snap or self.current(), self.cfg, self.runners)

    def report(self, snap: Snapshot | None = None) -> dict[str, Any]:
        return {
            **report(snap or self.current(), self.cfg, self.runners, self.predict),
            "sample_ms": round(self.sampler.last_read_s * 1000, 3),
            "scheduled_samples": self.sampler.readings_taken - self.sampler.readings_asked,
            "recent_actions": list(self.enforcer.recent)[-20:],
        }

    def explain(self, snap: Snapshot | None = None) -> dict[str, Any]:
        snap = snap or self.current()
        views = self.views(time.monotonic())
        return explanation(snap, self.cfg, self.runners, views, self.predict, self.tracker.healthy_since)


def look_at_trees(
    runners: Mapping[str, Runner], members: Mapping[int, list[int]], cfg: MemorySection, now: float
) -> None:
    """The kernel's high-water marks into each run's peak; CPU use into `last_used`."""
    for runner in runners.values():
        child = runner.child
        if child is None or child.in_process:  # an object has no high-water mark of its own
            continue
        if child.returncode is None and runner.memory.pid == child.pid:
            tree = members.get(child.pid)
            runner.memory.fold_hwm(procs.tree_hwm_bytes(child.pid, tree))
            if runner.memory.wants_hot_window():
                runner.memory.hot_window(procs.tree_hot_file_bytes(child.pid, tree))
            cpu = procs.tree_cpu_seconds(child.pid, tree) if cfg.used_cpu_percent else None
            if runner.memory.busy_since_last_look(cpu, now, cfg.used_cpu_percent / 100):
                runner.last_used = now


def component_views(
    runners: Mapping[str, Runner], busy: set[str], predict: Callable[[str], Prediction] | None
) -> list[ComponentView]:
    """What the policy sees of each component (plain data)."""
    return [
        ComponentView(
            name=name,
            priority=r.spec.priority,
            state=r.state,
            memory_bytes=r.memory.usage.memory_bytes if r.child is not None else 0,
            growing=r.memory.growing,
            has_trim=r.spec.trim is not None or isinstance(r.child, InProcess) and r.child.can_trim,
            can_freeze=not r.in_process,  # SIGSTOP would stop the caller's own process
            last_used=r.last_used,
            frozen_since=r.levers.frozen_since,
            last_trim_at=r.levers.last_trim_at,
            autostart=r.spec.autostart,
            unloaded_by_policy=r.unloaded_by_policy,
            estimated_bytes=int(predict(name).peak_mb * MIB) if predict else r.spec.estimated_mb * MIB,
            growth_bytes_s=r.memory.growth_bytes_s,
            after=tuple(r.spec.after),
            busy=name in busy or r.state is ComponentState.STOPPING,
        )
        for name, r in runners.items()
    ]


def suspected_leaks(
    runners: Mapping[str, Runner], reported: Mapping[str, float], now: float
) -> list[tuple[str, Trend]]:
    """Running components whose trend says leak, other than those reported in the last
    LEAK_REPORT_EVERY_S (the slopes are computed only where a leak is possible at all)."""
    found = []
    for name, r in runners.items():
        if r.child is None or now - reported.get(name, float("-inf")) < LEAK_REPORT_EVERY_S:
            continue
        points, idle = list(r.memory.trend_points), now - r.last_used >= LEAK_WINDOW_S
        if leak_possible(points, idle) and (t := trend(points, idle)).leak:
            found.append((name, t))
    return found
