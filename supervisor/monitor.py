"""The memory manager's loop: sample, classify, decide, act, publish.

    sample: every tree (procs.tree_usage) + the system (platform.read_system)
         -> Snapshot (budget mode: used % = max(system %, stack / budget))
         -> pressure.classify (thresholds, kernel signals, hysteresis)
         -> policy.decide -> enforcer.apply
    sleep pressure.next_interval(): sample_interval_s while HEALTHY and far from WARNING,
    fast_interval_s under pressure or when the worst-case fill rate could cross soon.

After the machine wakes from sleep (the suspend clock jumped), actions are held off for
`wake_settle_s`: memory figures right after a wake-up are not to be trusted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import anyio
import anyio.abc
import anyio.to_thread
import msgspec
import structlog

from . import orphans, platform, procs
from .config import MemorySection
from .enforcer import Enforcer
from .events import EventBus
from .model import MIB, ComponentState, MemoryState, Snapshot, SystemMemory, TreeUsage, state_rank
from .policy import ComponentView, bytes_until, decide, decide_through_trims, explain
from .predictor import LEAK_WINDOW_S, Prediction, leak_possible, time_to_reach, trend
from .pressure import PressureTracker, classify, hold_after_wake, kernel_floor, level_for, next_interval, threshold
from .runner import Runner

log = structlog.get_logger("ironcliw.memory")

PUBLISH_EVERY_S = 0.25  # memory events at most this often (fast sampling runs at 50 Hz)
# Kernel high-water marks (VmHWM) keep a peak until they are read, so they need not be read
# often: before a stop they are read once more, and a leader that exits on its own leaves its
# lifetime peak in wait4's accounting (launcher.Child). Only a grandchild that exits on its
# own between two reads takes its peak with it. An idle stack reads them at each hand-over.
HWM_EVERY_S = 10.0
HWM_EVERY_UNDER_PRESSURE_S = 1.0
TREND_EVERY_S = 2.0  # one trend point per component this often (10 minutes kept)
LEAK_CHECK_EVERY_S = 30.0
IDLE_HANDOFF_S = 60.0  # an idle stack's readings reach the loop at least this often
WAKE_SPACING_S = 0.1  # the least time between two readings the idle watcher takes on a wake-up


class _Wake:
    """A one-shot wake-up for the idle watcher: `threading.Event` without its Python layers.

    Event.wait runs a Condition's Python code on every timeout; here the wait is one C call
    (a lock acquired with a timeout), which matters when it runs every 2 s on a cold cache.
    The lock is held while "clear"; `set` releases it, and a wait that gets it is woken.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def set(self) -> None:
        try:
            self._lock.release()
        except RuntimeError:
            pass  # already set

    def clear(self) -> None:
        self._lock.acquire(blocking=False)

    def wait(self, timeout: float) -> bool:
        """True if set (it stays set), False after `timeout` seconds."""
        if self._lock.acquire(timeout=timeout):
            self._lock.release()
            return True
        return False


class MonitorClosed(Exception):
    """A reading was asked for after `close()` (the idle watcher, at shutdown)."""


class Reading(NamedTuple):
    """One reading of the trees and the system, before it is classified."""

    time: float
    usage: dict[str, TreeUsage]
    system: SystemMemory
    stack: int
    percent: float
    roots: dict[str, int]  # the PID each tree was read from


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
        self._snapshot_taken: Snapshot | None = None  # see `snapshot`
        self._latest: Reading | None = None  # the idle watcher's newest reading
        self.sample_cost_s = 0.0  # how long the last sample took
        self.samples = 0
        self.scheduled_samples = 0  # taken by the loop on its own schedule (not asked by a request)
        self._wake = _Wake()  # set: the idle watcher hands back to the loop now
        self._lock = threading.Lock()  # the /proc readers, shared with the idle watcher's thread
        self._closed = False
        self._stale = True  # see `stale`
        self._absorbed_at = float("-inf")
        bus.on_subscribe = self._wake.set  # a new subscriber wants memory events from the loop
        self.enforcer = Enforcer(runners, bus, cfg, self.level_now)
        self._published_at = float("-inf")
        self._hold_until = float("-inf")
        self._suspended = platform.suspended_seconds()
        self._hwm_at = self._trend_at = self._leak_at = float("-inf")
        self._leaks_reported: dict[str, float] = {}
        # /proc files kept open between samples, under `_lock`.
        self.trees = procs.TreeSampler(extra_roots=orphans.find)
        self.on_walk: Callable[[], None] | None = None  # the core: the record of every process
        self._walks_seen = 0
        self._woken_read_at = float("-inf")  # the idle watcher's last reading on a wake-up
        self._members_absorbed: dict[int, list[int]] = {}  # the trees as the loop last recorded them
        self.system_reader = platform.SystemReader()

    # --- sampling ------------------------------------------------------------------------

    def _read(self, watcher: bool = False) -> Reading:
        """One reading of every tree and the system. Thread-safe: the idle watcher takes its
        readings from a worker thread, and the /proc files are shared under the lock. After
        `close()` the watcher gets MonitorClosed; the APIs still read (files reopen)."""
        roots = {}
        for name, runner in list(self.runners.items()):
            child = runner.child  # read once: the loop may replace it meanwhile
            if child is not None:
                roots[name] = child.pid
        with self._lock:
            if watcher and self._closed:
                raise MonitorClosed()
            now = time.monotonic()
            usage = self.trees.usage(roots)
            system = self.system_reader.read()
        stack = sum(t.rss_bytes for t in usage.values())
        percent = system.used_percent
        if self.cfg.budget_mb:
            percent = max(percent, 100.0 * stack / (self.cfg.budget_mb * MIB))
        return Reading(now, usage, system, stack, percent, roots)

    def sample(self) -> Snapshot:
        """A reading now, taken in (classified, recorded, published)."""
        return self._absorb(self._read())

    def _record(self, readings: list[Reading]) -> bool:
        """What readings (in order) say about each component: usage, run statistics, trend
        points; a component at a time (the idle watcher hands over a minute: with 100
        components, 3,000 readings of a tree, taken in one pass per component). Readings
        older than one already taken in are skipped (the loop sampled since the idle watcher
        took them); False if that left none."""
        readings = [r for r in readings if r.time >= self._absorbed_at]
        if not readings:
            return False
        self._absorbed_at = readings[-1].time
        self._stale = False
        trend_times = set()
        for r in readings:
            if r.time - self._trend_at >= TREND_EVERY_S:
                self._trend_at = r.time
                trend_times.add(r.time)
        for name, runner in self.runners.items():
            child = runner.child
            if child is None:
                continue
            pid = child.pid  # readings from before a restart belong to the old process
            mine = [(r.time, r.usage[name]) for r in readings if r.roots.get(name) == pid]
            if mine:
                runner.record_usage(mine)
                if trend_times:
                    runner.trend_points.extend((t, u.rss_bytes / MIB) for t, u in mine if t in trend_times)
        return True

    def _absorb(self, reading: Reading) -> Snapshot:
        """Take a reading in: record it, read the high-water marks and check for leaks when
        due, classify it, publish it. (The idle watcher's earlier
        readings of a batch are only recorded: all HEALTHY and none near WARNING, or it would
        have handed over at once.)"""
        started = time.perf_counter()
        if not self._record([reading]) and self.snapshot is not None:
            return self.snapshot
        now, usage, system, stack, percent, _ = reading
        if self.trees.walks != self._walks_seen:  # the trees' membership may have changed
            self._walks_seen = self.trees.walks
            self._members_absorbed = self.trees.members
            orphans.reap({r.child.pid for r in self.runners.values() if r.child is not None})
            if self.on_walk is not None:
                self.on_walk()
        # Once per batch, not per reading: these read the present, whatever the reading's age.
        hwm_every = HWM_EVERY_S if self.tracker.state is MemoryState.HEALTHY else HWM_EVERY_UNDER_PRESSURE_S
        if now - self._hwm_at >= hwm_every:
            self._hwm_at = now
            members = self.trees.members  # the newest walk: no second walk of each tree
            for r in self.runners.values():
                r.read_hwm(members)
        if now - self._leak_at >= LEAK_CHECK_EVERY_S:
            self._leak_at = now
            self._check_leaks(now)
        previous = self.tracker.state
        self.tracker = classify(self.tracker, percent, system, self.cfg, now)
        self.snapshot = self._snapshot(reading, self.tracker.state)
        self.samples += 1
        self.sample_cost_s = time.perf_counter() - started
        if self.tracker.state is not previous:
            log.info(
                "memory_state_changed",
                old=previous.value,
                new=self.tracker.state.value,
                percent_used=round(percent, 2),
                stack_mb=round(stack / MIB, 1),
                available_mb=round(self.snapshot.available_mb, 1),
            )
        if self.bus.wants("memory") and (
            self.tracker.state is not previous or now - self._published_at >= PUBLISH_EVERY_S
        ):
            self._published_at = now
            self.bus.publish(
                "memory",
                **self.summary(),
                components_mb={name: round(tree.rss_bytes / MIB, 1) for name, tree in usage.items()},
                changed=self.tracker.state is not previous,
            )
        return self.snapshot

    def _snapshot(self, reading: Reading, state: MemoryState) -> Snapshot:
        return Snapshot(
            time=reading.time,
            system=reading.system,
            components=reading.usage,
            stack_bytes=reading.stack,
            budget_bytes=self.cfg.budget_mb * MIB if self.cfg.budget_mb else None,
            percent_used=reading.percent,
            state=state,
        )

    # --- the idle watcher ----------------------------------------------------------------
    #
    # An idle stack (HEALTHY, nothing frozen or unloaded, nobody subscribed to memory events)
    # is sampled from a worker thread that sleeps between readings, not by the event loop:
    # waking an asyncio loop costs more CPU than the reading itself (see the idle CPU figures
    # in the README). The thread keeps `snapshot` (built on demand from its newest reading)
    # and each runner's `usage` current for the APIs, and hands its readings to the loop,
    # which takes them in (records, trends, high-water marks, leak checks), as soon as one is
    # interesting (memory at or near WARNING, a kernel signal, growth that could reach
    # WARNING before the next reading) and at least every IDLE_HANDOFF_S. Anything that changes the picture wakes it: a component starting or
    # ending (`stale`), a subscriber, shutdown.

    @property
    def snapshot(self) -> Snapshot | None:
        """The newest sample. The idle watcher only leaves its newest reading (`_latest`): the
        Snapshot is built here, when somebody asks, not every 2 s for nobody."""
        taken, latest = self._snapshot_taken, self._latest
        if latest is not None and (taken is None or latest.time > taken.time):
            taken = self._snapshot_taken = self._snapshot(latest, self.tracker.state)
        return taken

    @snapshot.setter
    def snapshot(self, value: Snapshot) -> None:
        self._snapshot_taken = value

    @property
    def stale(self) -> bool:
        """A component started or ended since the last sample."""
        return self._stale

    @stale.setter
    def stale(self, value: bool) -> None:
        self._stale = value
        if value:
            self._wake.set()

    def _idle(self, snap: Snapshot) -> bool:
        return not self._stale and not self._may_act(snap) and not self.bus.wants("memory")

    def _interesting(self, reading: Reading, interval: float) -> bool:
        if level_for(reading.percent, self.cfg) is not MemoryState.HEALTHY:
            return True
        if kernel_floor(reading.system, self.cfg) is not MemoryState.HEALTHY:
            return True
        return next_interval(MemoryState.HEALTHY, self._headroom(reading.system, reading.stack), self.cfg) < interval

    def _watch_idle(self, interval: float) -> list[Reading]:
        """In a worker thread: readings every `interval` until one is interesting, the loop
        wakes us (then one more reading, at once), or IDLE_HANDOFF_S have passed. Returns what
        it read."""
        readings: list[Reading] = []
        shown: dict[str, TreeUsage] | None = None
        walked = self.trees.members
        handoff_at = time.monotonic() + IDLE_HANDOFF_S
        while True:
            woken = self._wake.wait(interval)
            if woken:  # a burst of changes (a `stop all`) gives one reading per WAKE_SPACING_S, not one per change
                time.sleep(max(0.0, self._woken_read_at + WAKE_SPACING_S - time.monotonic()))
                self._woken_read_at = time.monotonic()
            try:
                reading = self._read(watcher=True)  # woken too: the loop gets a reading newer than the change
            except MonitorClosed:
                break
            readings.append(reading)
            self.scheduled_samples += 1
            self._latest = reading
            if reading.usage is not shown:  # the sampler hands back the same dict while nothing moved
                shown = reading.usage
                for name, tree in shown.items():
                    runner = self.runners.get(name)
                    if runner is not None and runner.child is not None and runner.child.pid == reading.roots[name]:
                        runner.usage = tree
            if woken or self._interesting(reading, interval) or reading.time >= handoff_at:
                break
            # A process joined or left a tree (a daemon forked, say): the loop records it at once.
            if self.trees.members is not walked:
                walked = self.trees.members
                if walked != self._members_absorbed:
                    break
        return readings

    def close(self) -> None:
        self._wake.set()
        with self._lock:  # after the idle watcher's last read, before the next
            self._closed = True
            self.trees.close()
            self.system_reader.close()

    def _check_leaks(self, now: float) -> None:
        for name, r in self.runners.items():
            if r.child is None or now - self._leaks_reported.get(name, float("-inf")) < 600:
                continue
            points, idle = list(r.trend_points), now - r.last_used >= LEAK_WINDOW_S
            if not leak_possible(points, idle):
                continue
            t = trend(points, idle)
            if t.leak:
                self._leaks_reported[name] = now
                log.warning("leak_suspected", component=name, slope_mb_per_min=t.slope_mb_per_min, detail=t.detail)
                self.bus.publish("action", component=name, kind="LEAK_SUSPECTED", detail=t.detail)

    def level_now(self) -> tuple[MemoryState, float]:
        """A fresh reading without hysteresis: the enforcer's re-check before a destructive act."""
        reading = self._read()
        system, percent = reading.system, reading.percent
        level = level_for(percent, self.cfg)
        floor = kernel_floor(system, self.cfg)
        return (level if state_rank(level) >= state_rank(floor) else floor), percent

    def headroom_bytes(self, snap: Snapshot) -> int:
        """Bytes the stack or the system may still grow before WARNING."""
        return self._headroom(snap.system, snap.stack_bytes)

    def _headroom(self, system: SystemMemory, stack_bytes: int) -> int:
        room = int(system.total_bytes * self.cfg.warning_percent / 100) - (system.total_bytes - system.available_bytes)
        if self.cfg.budget_mb:
            room = min(room, int(self.cfg.budget_mb * MIB * self.cfg.warning_percent / 100) - stack_bytes)
        return room

    def views(self, now: float) -> list[ComponentView]:
        busy = self.enforcer.busy
        return [
            ComponentView(
                name=name,
                priority=r.spec.priority,
                state=r.state,
                rss_bytes=r.usage.rss_bytes if r.child is not None else 0,
                growing=r.growing,
                has_trim=r.spec.trim_signal is not None,
                last_used=r.last_used,
                frozen_since=r.frozen_since,
                last_trim_at=r.last_trim_at,
                autostart=r.spec.autostart,
                unloaded_by_policy=r.unloaded_by_policy,
                estimated_bytes=int(self.predict(name).peak_mb * MIB) if self.predict else r.spec.estimated_mb * MIB,
                growth_bytes_s=r.growth_bytes_s,
                after=tuple(r.spec.after),
                busy=name in busy or r.state is ComponentState.STOPPING,
            )
            for name, r in self.runners.items()
        ]

    # --- the loop --------------------------------------------------------------------------

    async def run(self, tg: anyio.abc.TaskGroup, stopping: Callable[[], bool]) -> None:
        pending: list[Reading] = [self._read()]
        self.scheduled_samples += 1
        while True:
            self._record(pending[:-1])  # the idle watcher's readings, in order
            snap = self._absorb(pending[-1])
            now = snap.time
            suspended = platform.suspended_seconds()
            hold = hold_after_wake(self._suspended, suspended, now, self._hold_until, self.cfg)
            if hold != self._hold_until:
                log.warning(
                    "woke_from_sleep", slept_s=round(suspended - self._suspended, 1), hold_s=self.cfg.wake_settle_s
                )
                self._hold_until = hold
            self._suspended = suspended
            if not stopping() and now >= self._hold_until and self._may_act(snap):
                actions = decide(snap, self.views(now), self.cfg, now, self.tracker.healthy_since)
                await self.enforcer.apply(actions, tg)
            interval = next_interval(snap.state, self.headroom_bytes(snap), self.cfg)
            if self._idle(snap):
                self._wake.clear()  # on the loop, after the checks: a later stale/subscribe wakes it
                try:
                    pending = await anyio.to_thread.run_sync(self._watch_idle, interval, abandon_on_cancel=True)
                finally:
                    self._wake.set()  # cancelled (shutdown): let the thread end now
                if not pending:  # the watcher saw the monitor closing: read here
                    pending = [self._read()]
                    self.scheduled_samples += 1
            else:
                await anyio.sleep(interval)
                pending = [self._read()]
                self.scheduled_samples += 1

    def _may_act(self, snap: Snapshot) -> bool:
        """HEALTHY with nothing frozen or unloaded by pressure: no rule can fire, skip deciding
        (most samples of an idle stack)."""
        if snap.state is not MemoryState.HEALTHY:
            return True
        return any(r.state is ComponentState.FROZEN or r.unloaded_by_policy for r in self.runners.values())

    async def act_as(self, state: MemoryState, tg: anyio.abc.TaskGroup) -> list[dict[str, object]]:
        """Carry out now what the policy does at `state` (optimize: WARNING; emergency-cleanup:
        EMERGENCY), whatever the current state, without waiting for trims to settle."""
        snap = self.sample()
        now = snap.time
        # Asked for explicitly: act as if memory were at that state's threshold.
        forced = msgspec.structs.replace(
            snap, state=state, percent_used=max(snap.percent_used, threshold(state, self.cfg))
        )
        actions = decide_through_trims(forced, self.views(now), self.cfg, now)
        return await self.enforcer.apply(actions, tg, force=True)

    # --- what the APIs show -------------------------------------------------------------

    def current(self) -> Snapshot:
        return self.snapshot if self.snapshot is not None else self.sample()

    def summary(self) -> dict[str, Any]:
        snap = self.current()
        loaded = [n for n, r in self.runners.items() if r.child is not None]
        return {
            "state": snap.state.value,
            "percent_used": round(snap.percent_used, 2),
            "available_mb": round(snap.available_mb, 1),
            "components_loaded": loaded,
            "stack_mb": round(snap.stack_bytes / MIB, 1),
            "budget_mb": self.cfg.budget_mb,
            "system_used_percent": round(snap.system.used_percent, 2),
            # What the percentages are of, and where the lines are: for charts.
            "basis_mb": round((snap.budget_bytes or snap.system.total_bytes) / MIB, 1),
            "thresholds": {
                "warning": self.cfg.warning_percent,
                "critical": self.cfg.critical_percent,
                "emergency": self.cfg.emergency_percent,
            },
        }

    def report(self) -> dict[str, Any]:
        snap = self.current()
        now = time.monotonic()
        split = snap.components  # every reading has the anonymous/file split
        rows = []
        for name, r in self.runners.items():
            detail = platform.read_detail(procs.tree_pids(r.child.pid)) if r.child is not None else None
            t = trend(list(r.trend_points), idle=now - r.last_used >= LEAK_WINDOW_S)
            pred = self.predict(name) if self.predict else None
            to_next = self._time_to_next_threshold(snap, t.slope_mb_per_min)
            rows.append(
                {
                    "name": name,
                    "priority": r.spec.priority.value,
                    "state": r.state.value,
                    "rss_mb": round(r.usage.rss_mb, 1) if r.child else 0.0,
                    "peak_mb": round(r.peak_rss_bytes / MIB, 1),
                    "anon_mb": round(split[name].anon_bytes / MIB, 1) if name in split else 0.0,
                    "file_mb": round(split[name].file_bytes / MIB, 1) if name in split else 0.0,
                    "pss_mb": _mb(detail.pss_bytes) if detail else None,
                    "uss_mb": _mb(detail.uss_bytes) if detail else None,
                    "footprint_mb": _mb(detail.footprint_bytes) if detail else None,
                    "trend_mb_per_min": t.slope_mb_per_min,
                    "trend": t.detail,
                    "leak_suspected": t.leak,
                    "time_to_next_threshold_s": to_next,
                    "predicted_mb": pred.peak_mb if pred else None,
                    "prediction": {
                        "basis": pred.basis,
                        "runs": pred.runs,
                        "margin": pred.margin,
                        "confidence": pred.confidence,
                        "detail": pred.detail,
                    }
                    if pred
                    else None,
                    "idle_s": round(now - r.last_used, 1) if r.last_used else None,
                    "estimated_mb": r.spec.estimated_mb,
                    "trim_freed_mb": list(r.trim_freed_mb),
                    "output": {
                        "mb": round(r.output.bytes / MIB, 1),
                        "dropped_mb": round(r.output.dropped_bytes / MIB, 1),
                        "throttled_s": round(r.output.throttled_s, 1),
                        "log_problem": r.log_sink.problem if r.log_sink else None,
                    },
                    "unloaded_by_policy": r.unloaded_by_policy,
                    "last_exit": r.last_exit,
                }
            )
        system = snap.system
        return {
            **self.summary(),
            "system": {
                "total_mb": round(system.total_bytes / MIB, 1),
                "available_mb": round(system.available_bytes / MIB, 1),
                "used_percent": round(system.used_percent, 2),
                "swap_total_mb": round(system.swap_total_bytes / MIB, 1),
                "swap_used_mb": round(system.swap_used_bytes / MIB, 1),
                "psi_some_avg10": system.psi_some_avg10,
                "psi_full_avg10": system.psi_full_avg10,
                "kernel_level": system.kernel_level.value if system.kernel_level else None,
                "compressed_mb": _mb(system.compressed_bytes),
            },
            "supervisor_rss_mb": round(procs.own_rss_bytes() / MIB, 1),
            "sample_ms": round(self.sample_cost_s * 1000, 3),
            "scheduled_samples": self.scheduled_samples,
            "components": rows,
            "recent_actions": list(self.enforcer.recent)[-20:],
        }

    def _time_to_next_threshold(self, snap: Snapshot, slope_mb_per_min: float | None) -> float | None:
        """Seconds until this growth alone takes memory to the next threshold up."""
        nxt = {
            MemoryState.HEALTHY: self.cfg.warning_percent,
            MemoryState.WARNING: self.cfg.critical_percent,
            MemoryState.CRITICAL: self.cfg.emergency_percent,
        }.get(snap.state)
        if nxt is None or slope_mb_per_min is None:
            return None
        eta = time_to_reach(0.0, bytes_until(snap, nxt) / MIB, slope_mb_per_min / 60)
        return round(eta, 1) if eta is not None else None

    def explain(self) -> dict[str, Any]:
        snap = self.current()
        now = time.monotonic()
        out = explain(snap, self.views(now), self.cfg, now, self.tracker.healthy_since)
        for row in out["candidates"]:  # type: ignore[union-attr]
            pred = self.predict(row["name"]) if self.predict else None
            row["predicted_mb"] = pred.peak_mb if pred else None
            row["prediction"] = pred.detail if pred else None
            t = trend(list(self.runners[row["name"]].trend_points), idle=False)
            row["trend_mb_per_min"] = t.slope_mb_per_min
            row["time_to_next_threshold_s"] = self._time_to_next_threshold(snap, t.slope_mb_per_min)
        return out


def _mb(value: int | None) -> float | None:
    return round(value / MIB, 1) if value is not None else None
