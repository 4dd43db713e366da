"""Carry out the policy's actions on real processes, and explain each one.

- FREEZE first (microseconds: it stops growth at once), then the rest.
- Before a destructive act (FREEZE, UNLOAD) memory is sampled again; if it has recovered
  below the state the action was decided at, the enforcer stands down and logs it.
- UNLOAD and RELOAD take seconds (grace periods, readiness) and run as background tasks;
  the component is `busy` until they finish, so the policy does not ask again meanwhile.
- A TRIM is measured: the tree's RSS before, and again after `trim_settle_s`. A trim over
  HTTP is sent first, in the background (a request may take its timeout).
- An UNLOAD of a server with `unload` requests sends them and keeps the process (measured
  like a trim); one whose models were already unloaded and not used since is stopped.
- An UNLOAD by the policy of a component with a smaller profile restarts it in that profile
  instead, when the profile's estimate is below what it holds (profiles.py).
- `dry_run` logs and publishes the actions (each at most once per DRY_RUN_REPEAT_S) and
  does nothing else.

Every action becomes a structlog event with its evidence and an `action` event on the bus.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable

import anyio
import anyio.abc
import msgspec
import structlog

from . import profiles
from .config import MemorySection
from .events import EventBus
from .model import MIB, Action, ActionKind, MemoryState, state_rank
from .runner import Runner

log = structlog.get_logger("ironcliw.enforcer")

DRY_RUN_REPEAT_S = 10.0
_DESTRUCTIVE = frozenset({ActionKind.FREEZE, ActionKind.UNLOAD})


class Enforcer:
    def __init__(
        self,
        runners: dict[str, Runner],
        bus: EventBus,
        cfg: MemorySection,
        current_level: Callable[[], tuple[MemoryState, float]],
    ) -> None:
        self.runners = runners
        self.bus = bus
        self.cfg = cfg
        self.current_level = current_level  # a fresh sample: (state without hysteresis, percent)
        self.busy: set[str] = set()
        self.recent: deque[dict[str, object]] = deque(maxlen=100)
        self.counts: Counter[tuple[str, str]] = Counter()  # (kind, outcome) -> how many, for metrics
        self._dry_run_seen: dict[tuple[ActionKind, str], float] = {}

    async def apply(
        self, actions: list[Action], tg: anyio.abc.TaskGroup, force: bool = False
    ) -> list[dict[str, object]]:
        """Carry out `actions`; returns what was done (or stood down from). `force` skips the
        re-check (explicit optimize / emergency-cleanup requests)."""
        if not actions:
            return []
        if self.cfg.dry_run:
            return [self._dry_run(a) for a in actions]
        fresh: tuple[MemoryState, float] | None = None
        if not force and any(a.kind in _DESTRUCTIVE for a in actions):
            fresh = self.current_level()
        done = []
        ordered = sorted(actions, key=lambda a: a.kind is not ActionKind.FREEZE)  # stable: freezes first
        for action in ordered:
            runner = self.runners.get(action.component)
            if runner is None or action.component in self.busy:
                continue
            if fresh is not None and action.kind in _DESTRUCTIVE and state_rank(fresh[0]) < state_rank(action.state):
                done.append(self._record(action, "stood_down", recheck_percent=round(fresh[1], 2)))
                continue
            outcome = await self._carry_out(action, runner, tg)
            if outcome == "frozen":
                done.append(self._record(action, outcome, sigstop_unix=runner.levers.sigstop_unix))
            elif outcome is not None:
                done.append(self._record(action, outcome))
        return done

    async def _carry_out(self, action: Action, runner: Runner, tg: anyio.abc.TaskGroup) -> str | None:
        match action.kind:
            case ActionKind.FREEZE:
                return "frozen" if await runner.levers.freeze(self._short(action)) else None
            case ActionKind.THAW:
                return "thawed" if runner.levers.thaw(self._short(action)) else None
            case ActionKind.TRIM:
                before = runner.memory.usage.memory_bytes
                how = runner.levers.trim()
                if how is None:
                    return None
                tg.start_soon(self._measure_trim, runner, before, how == "http")
                return "trim_requested"
            case ActionKind.UNLOAD:
                self.busy.add(runner.name)
                if runner.levers.can_unload_models(runner.last_used):
                    tg.start_soon(self._unload_models, runner)
                    return "unloading_models"
                smaller = smaller_profile(runner, action)
                if smaller is not None:
                    tg.start_soon(self._switch_profile, runner, action, smaller)
                    return "switching_profile"
                tg.start_soon(self._unload, runner, action)
                return "unloading"
            case ActionKind.RELOAD:
                self.busy.add(runner.name)
                tg.start_soon(self._reload, runner)
                return "reloading"

    async def _unload(self, runner: Runner, action: Action) -> None:
        try:
            # Pressure's unloads come back when memory allows; a person's stay down.
            runner.unloaded_by_policy = action.requested_by is None
            why = f"on request ({action.requested_by})" if action.requested_by else "by policy"
            reason = (
                f"unloaded {why} at {action.state.value} {action.percent_used:.0f} % "
                f"with {action.rss_mb:.0f} MB ({action.rule})"
            )
            await runner.stop(reason)  # keeps unloaded_by_policy; only start() clears it
        finally:
            self.busy.discard(runner.name)

    async def _switch_profile(self, runner: Runner, action: Action, profile: str) -> None:
        """A rung before unloading: restart it in its next, smaller profile."""
        try:
            reason = (
                f"restarted in profile {profile} at {action.state.value} {action.percent_used:.0f} %"
                f" with {action.rss_mb:.0f} MB ({action.rule})"
            )
            log.info("profile_switch", component=runner.name, old=runner.profile, new=profile, reason=reason)
            await runner.stop(reason)
            runner.profile = profile
            await runner.start()
        finally:
            self.busy.discard(runner.name)

    async def _reload(self, runner: Runner) -> None:
        try:
            await runner.start()
        finally:
            self.busy.discard(runner.name)

    async def _measure_trim(self, runner: Runner, before: int, over_http: bool) -> None:
        """Send the HTTP request if the trim goes over HTTP; after trim_settle_s, what it freed."""
        if over_http:
            sent = await runner.levers.send_trim()
            if sent is not None and not sent.ok:
                log.warning("trim_failed", component=runner.name, detail=sent.detail)
                self.bus.publish("action", component=runner.name, kind="TRIM", outcome="failed", detail=sent.detail)
        await anyio.sleep(self.cfg.trim_settle_s)
        freed_mb = self._freed_mb(runner, before)
        runner.memory.trim_measured(freed_mb)
        log.info("trim_measured", component=runner.name, freed_mb=freed_mb, rss_mb=round(runner.memory.usage.rss_mb, 1))
        self.bus.publish("action", component=runner.name, kind="TRIM", outcome="measured", freed_mb=freed_mb)

    async def _unload_models(self, runner: Runner) -> None:
        """Unload its models over HTTP, keeping the process; measured like a trim. If memory is
        still short, the next UNLOAD (can_unload_models is then False) stops it."""
        try:
            before = runner.memory.usage.memory_bytes
            results = await runner.levers.unload_models()
            failed = [r.detail for r in results if not r.ok]
            for detail in failed:
                log.warning("unload_request_failed", component=runner.name, detail=detail)
            await anyio.sleep(self.cfg.trim_settle_s)
            freed_mb = self._freed_mb(runner, before)
            log.info(
                "models_unloaded", component=runner.name, requests=len(results), failed=len(failed), freed_mb=freed_mb
            )
            self.bus.publish(
                "action",
                component=runner.name,
                kind="UNLOAD",
                outcome="models_unloaded",
                freed_mb=freed_mb,
                failed=failed,
            )
        finally:
            self.busy.discard(runner.name)

    @staticmethod
    def _freed_mb(runner: Runner, before: int) -> float:
        return round(max(0.0, (before - runner.memory.usage.memory_bytes) / MIB), 1)

    def _record(self, action: Action, outcome: str, **extra: object) -> dict[str, object]:
        entry = {
            **msgspec.to_builtins(action),
            "outcome": outcome,
            "time_unix": time.time(),
            **extra,
        }
        self.recent.append(entry)
        self.counts[(action.kind.value, outcome)] += 1
        log.info(
            "memory_action",
            kind=action.kind.value,
            component=action.component,
            outcome=outcome,
            rule=action.rule,
            state=action.state.value,
            percent_used=action.percent_used,
            rss_mb=action.rss_mb,
            threshold=action.threshold_percent,
            reason=action.reason,
            time_unix=entry["time_unix"],
            **extra,
        )
        self.bus.publish("action", **{k: v for k, v in entry.items() if k != "time_unix"})
        return entry

    def _dry_run(self, action: Action) -> dict[str, object]:
        key = (action.kind, action.component)
        now = time.monotonic()
        if now - self._dry_run_seen.get(key, -DRY_RUN_REPEAT_S) >= DRY_RUN_REPEAT_S:
            self._dry_run_seen[key] = now
            return self._record(action, "dry_run")
        return {**msgspec.to_builtins(action), "outcome": "dry_run"}

    @staticmethod
    def _short(action: Action) -> str:
        return f"{action.rule} at {action.state.value} {action.percent_used:.1f} %"


def smaller_profile(runner: Runner, action: Action) -> str | None:
    """The profile an unload by the policy restarts it in instead: the next one, if it runs
    and that profile's estimate is below what it holds now (a person's unload unloads)."""
    if action.requested_by is not None or runner.child is None or not runner.spec.profiles:
        return None
    smaller = profiles.smaller(runner.spec, runner.profile)
    if smaller is None:
        return None
    estimate = profiles.with_profile(runner.spec, smaller).estimated_mb
    return smaller if estimate * MIB < runner.memory.usage.memory_bytes else None
