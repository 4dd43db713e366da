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

import time
from typing import Any, Callable

import anyio
import anyio.abc
import msgspec
import structlog

from . import platform, procs
from .config import MemorySection
from .enforcer import Enforcer
from .events import EventBus
from .model import MIB, ComponentState, MemoryState, Snapshot, SystemMemory, state_rank
from .policy import ComponentView, bytes_until, decide, decide_through_trims, explain
from .predictor import LEAK_WINDOW_S, Prediction, time_to_reach, trend
from .pressure import PressureTracker, classify, hold_after_wake, kernel_floor, level_for, next_interval, threshold
from .runner import Runner

log = structlog.get_logger("ironcliw.memory")

PUBLISH_EVERY_S = 0.25  # memory events at most this often (fast sampling runs at 50 Hz)
# Kernel high-water marks (VmHWM) keep a peak until they are read, so they need not be read
# often: only a process that exits on its own takes its last stretch with it.
HWM_EVERY_S = 10.0
HWM_EVERY_UNDER_PRESSURE_S = 1.0
TREND_EVERY_S = 2.0  # one trend point per component this often (10 minutes kept)
LEAK_CHECK_EVERY_S = 30.0


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
        self.snapshot: Snapshot | None = None
        self.sample_cost_s = 0.0  # how long the last sample took
        self.samples = 0
        self.scheduled_samples = 0  # taken by the loop on its own schedule (not asked by a request)
        self.stale = True  # a component started or ended since the last sample
        self.enforcer = Enforcer(runners, bus, cfg, self.level_now)
        self._published_at = float("-inf")
        self._hold_until = float("-inf")
        self._suspended = platform.suspended_seconds()
        self._hwm_at = self._trend_at = self._leak_at = float("-inf")
        self._leaks_reported: dict[str, float] = {}
        # /proc files kept open between samples: used from the loop's thread only.
        self.trees = procs.TreeSampler()
        self.system_reader = platform.SystemReader()

    # --- sampling ------------------------------------------------------------------------

    def _measure(self, now: float) -> tuple[dict[str, Any], SystemMemory, int, float]:
        roots = {name: r.child.pid for name, r in self.runners.items() if r.child is not None}
        usage = self.trees.usage(roots)
        system = self.system_reader.read()
        stack = sum(t.rss_bytes for t in usage.values())
        percent = system.used_percent
        if self.cfg.budget_mb:
            percent = max(percent, 100.0 * stack / (self.cfg.budget_mb * MIB))
        return usage, system, stack, percent

    def sample(self) -> Snapshot:
        started = time.perf_counter()
        now = time.monotonic()
        self.stale = False
        usage, system, stack, percent = self._measure(now)
        for name, tree in usage.items():
            self.runners[name].record_usage(tree, now)
        hwm_every = HWM_EVERY_S if self.tracker.state is MemoryState.HEALTHY else HWM_EVERY_UNDER_PRESSURE_S
        if now - self._hwm_at >= hwm_every:
            self._hwm_at = now
            for r in self.runners.values():
                r.read_hwm()
        if now - self._trend_at >= TREND_EVERY_S:
            self._trend_at = now
            for name, tree in usage.items():
                self.runners[name].trend_points.append((now, tree.rss_bytes / MIB))
        if now - self._leak_at >= LEAK_CHECK_EVERY_S:
            self._leak_at = now
            self._check_leaks(now)
        previous = self.tracker.state
        self.tracker = classify(self.tracker, percent, system, self.cfg, now)
        self.snapshot = Snapshot(
            time=now,
            system=system,
            components=usage,
            stack_bytes=stack,
            budget_bytes=self.cfg.budget_mb * MIB if self.cfg.budget_mb else None,
            percent_used=percent,
            state=self.tracker.state,
        )
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
        if self.bus.wants("memory") and (self.tracker.state is not previous or now - self._published_at >= PUBLISH_EVERY_S):
            self._published_at = now
            self.bus.publish(
                "memory",
                **self.summary(),
                components_mb={name: round(tree.rss_bytes / MIB, 1) for name, tree in usage.items()},
                changed=self.tracker.state is not previous,
            )
        return self.snapshot

    def close(self) -> None:
        self.trees.close()
        self.system_reader.close()

    def _check_leaks(self, now: float) -> None:
        for name, r in self.runners.items():
            if r.child is None or now - self._leaks_reported.get(name, float("-inf")) < 600:
                continue
            t = trend(list(r.trend_points), idle=now - r.last_used >= LEAK_WINDOW_S)
            if t.leak:
                self._leaks_reported[name] = now
                log.warning("leak_suspected", component=name, slope_mb_per_min=t.slope_mb_per_min, detail=t.detail)
                self.bus.publish("action", component=name, kind="LEAK_SUSPECTED", detail=t.detail)

    def level_now(self) -> tuple[MemoryState, float]:
        """A fresh reading without hysteresis: the enforcer's re-check before a destructive act."""
        _, system, _, percent = self._measure(time.monotonic())
        level = level_for(percent, self.cfg)
        floor = kernel_floor(system, self.cfg)
        return (level if state_rank(level) >= state_rank(floor) else floor), percent

    def headroom_bytes(self, snap: Snapshot) -> int:
        """Bytes the stack or the system may still grow before WARNING."""
        system = snap.system
        room = int(system.total_bytes * self.cfg.warning_percent / 100) - (system.total_bytes - system.available_bytes)
        if snap.budget_bytes:
            room = min(room, int(snap.budget_bytes * self.cfg.warning_percent / 100) - snap.stack_bytes)
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
        while True:
            snap = self.sample()
            self.scheduled_samples += 1
            now = snap.time
            suspended = platform.suspended_seconds()
            hold = hold_after_wake(self._suspended, suspended, now, self._hold_until, self.cfg)
            if hold != self._hold_until:
                log.warning("woke_from_sleep", slept_s=round(suspended - self._suspended, 1), hold_s=self.cfg.wake_settle_s)
                self._hold_until = hold
            self._suspended = suspended
            if not stopping() and now >= self._hold_until and self._may_act(snap):
                actions = decide(snap, self.views(now), self.cfg, now, self.tracker.healthy_since)
                await self.enforcer.apply(actions, tg)
            await anyio.sleep(next_interval(snap.state, self.headroom_bytes(snap), self.cfg))

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
        forced = msgspec.structs.replace(snap, state=state, percent_used=max(snap.percent_used, threshold(state, self.cfg)))
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
        roots = {name: r.child.pid for name, r in self.runners.items() if r.child is not None}
        split = self.trees.usage(roots)
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
                        "basis": pred.basis, "runs": pred.runs, "margin": pred.margin,
                        "confidence": pred.confidence, "detail": pred.detail,
                    } if pred else None,
                    "idle_s": round(now - r.last_used, 1) if r.last_used else None,
                    "estimated_mb": r.spec.estimated_mb,
                    "trim_freed_mb": list(r.trim_freed_mb),
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
            "components": rows,
            "recent_actions": list(self.enforcer.recent)[-20:],
        }

    def _time_to_next_threshold(self, snap: Snapshot, slope_mb_per_min: float | None) -> float | None:
        """Seconds until this growth alone takes memory to the next threshold up."""
        nxt = {MemoryState.HEALTHY: self.cfg.warning_percent, MemoryState.WARNING: self.cfg.critical_percent,
               MemoryState.CRITICAL: self.cfg.emergency_percent}.get(snap.state)
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


