"""One component's lifecycle: spawn, readiness, supervision, restart, stop.

Each component has one `Runner` whose `run()` task lives as long as the supervisor and is
the only code that touches the component's process. Commands (`start`, `stop`) set what
is wanted and wake it; it carries them out and reports state changes as events.
The states and the edges between them are the table in states.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import msgspec
import structlog

from . import launcher, procs, restart, states
from .accounting import ComponentMemory
from .config import IN_PROCESS_COMMAND, ComponentSpec
from .errors import Refused, SpawnError
from .events import EventBus
from .levers import Levers
from .logfiles import ProblemCallback, RotatingLog
from .model import MIB, ComponentState, ComponentStatus, ExitInfo, RunRecord
from .probes import RunEndpoint, port_for_run
from .profiles import history_key, with_profile
from .runoutput import RunOutput
from .runwatch import RunWatch

log = structlog.get_logger("ironcliw.runner")


class RunStats:
    """What one run of a component was started with and how long it took to be ready (with
    its memory, in ComponentMemory.run, it becomes a history RunRecord at its end)."""

    def __init__(
        self, started_unix: float | None = None, predicted_mb: float | None = None, inputs_bytes: int | None = None
    ) -> None:
        self.started_unix = started_unix
        self.predicted_mb = predicted_mb
        self.inputs_bytes = inputs_bytes
        self.time_to_ready_s: float | None = None
        self.spawn_s: float | None = None  # what launching the command took (fork, exec, the launcher)
        self.profile: str | None = None  # the profile it ran in


def _unit_random() -> float:
    """A uniform number in [0, 1) for the backoff jitter, from os.urandom: the `random`
    module would be imported for this one number a restart (see bench/bench_imports.py)."""
    return int.from_bytes(os.urandom(7), "big") / (1 << 56)


@dataclass(frozen=True)
class RunnerHooks:
    """What a runner tells the rest of the supervisor, and asks of it (all optional but on_change)."""

    on_change: Callable[[str], None]  # its state or process changed (the sampler's roots, the record)
    echo: Callable[[str, bytes], None] | None = None  # `up`'s terminal: (name, block of lines)
    on_run_end: Callable[[str, RunRecord], None] | None = None  # into the history
    on_log_problem: ProblemCallback | None = None  # the disk refused a log write
    orphans_of: Callable[[str], list[int]] | None = None  # name -> PIDs of its orphans (the core knows every leader)
    run_context: Callable[[str], tuple[float | None, int | None]] | None = None  # name -> (predicted MB, input bytes)
    taken_ports: Callable[[], Collection[int]] | None = None  # the ports other components' runs were given


_SETTLED = frozenset({ComponentState.READY, ComponentState.STOPPED, ComponentState.EXITED, ComponentState.FATAL})


class Runner:
    def __init__(
        self,
        spec: ComponentSpec,
        *,
        log_path: Path,
        log_limits: tuple[int, int],
        bus: EventBus,
        extra_env: dict[str, str],
        hooks: RunnerHooks,
    ) -> None:
        assert spec.name is not None
        self.name, self.spec = spec.name, spec
        self.log_path, self._log_limits = log_path, log_limits  # limits: (max bytes, backups)
        self._bus, self._hooks = bus, hooks
        self._extra_env = {**extra_env, "IRONCLIW_COMPONENT": spec.name}

        self.state = ComponentState.STOPPED
        self.child: launcher.Child | None = None
        self.restarts = 0
        self.last_exit: str | None = None
        self.started_at: float | None = None
        self.memory = ComponentMemory()  # what the monitor measured of its tree
        self.last_used = 0.0  # monotonic: last start or touch
        self.endpoint: RunEndpoint | None = None  # the current run's port and HTTP calls
        self.levers = Levers(spec, lambda: (self.child, self.state, self.endpoint), self._set_state)  # freeze, trim...
        self.unloaded_by_policy = False
        self.current_run = RunStats()
        self.run_output = RunOutput(spec, bus, hooks.echo, ready_already=False)  # the current run's
        self.log_sink: RotatingLog | None = None  # the current run's log file
        self.spawn_error: SpawnError | None = None  # why the newest start could not spawn
        self.status_cache: tuple[tuple[object, ...], ComponentStatus] | None = None  # see component_status
        self.adopted = False  # managed but not started by us: it cannot be started again
        self.in_process = spec.command == IN_PROCESS_COMMAND  # its owner loads an object (inprocess.py)
        self.waiting_reason: str | None = None  # what it waits for, while WAITING
        self.in_flight = 0  # requests the door is forwarding to it (idle TTL waits for none)
        self.profile: str | None = None  # which of its profiles the next run uses (None: its own table)
        self._to_adopt: launcher.Child | None = None
        self._history = restart.RestartHistory()
        self._want, self._stop_reason = False, "stopped"
        self._wake, self._changed, self._stop_requested = anyio.Event(), anyio.Event(), anyio.Event()

    # --- commands ----------------------------------------------------------------------

    def adopt(self, child: launcher.Child) -> None:
        """Manage a process tree that already runs (see launcher.Adopted)."""
        self.adopted = True
        self._to_adopt = child
        self._want = True
        self._wake.set()

    async def start(self) -> ComponentState:
        """Start if not running; return once it is READY or the attempt failed."""
        if (self.adopted or self.in_process) and self.child is None and self._to_adopt is None:
            return self.state  # an adopted process that ended cannot be started again, nor an object
        if self.state.is_running and self._want:
            await self._wait_for(lambda: self.state in _SETTLED or self.state is ComponentState.BACKOFF)
            return self.state
        if self.state in (ComponentState.FATAL, ComponentState.EXITED):
            self._history = restart.RestartHistory()  # a manual start forgives the crash loop
        self.unloaded_by_policy = False
        self._want = True
        self._wake.set()
        await self._wait_for(lambda: self.state is not ComponentState.STOPPED or not self._want)
        await self._wait_for(lambda: self.state in _SETTLED or self.state is ComponentState.BACKOFF)
        return self.state

    async def stop(self, reason: str = "stopped") -> None:
        """Stop the whole tree (stop signal, grace, SIGKILL) and stay down."""
        self._want = False
        self._stop_reason = reason
        self._stop_requested.set()
        if self.state is ComponentState.WAITING:  # it never started: it stays down
            self._set_state(ComponentState.STOPPED, reason)
        self._wake.set()
        await self._wait_for(lambda: self.child is None and self.state is not ComponentState.BACKOFF)

    def mark_waiting(self, reason: str) -> None:
        """Show that `up` holds it back (waitingroom.py); only while nothing else happened to it."""
        if self.state in (ComponentState.STOPPED, ComponentState.WAITING) and not self._want:
            self.waiting_reason = reason
            self._set_state(ComponentState.WAITING, reason)

    def _end_run(self, exit_reason: str, clean_exit: bool) -> None:
        child, on_run_end = self.child, self._hooks.on_run_end
        if on_run_end is not None and self.current_run.started_unix is not None:
            exit_peak = child.exit_peak_bytes if child is not None else None
            record = run_record(self.current_run, self.memory, exit_peak, exit_reason, clean_exit)
            on_run_end(history_key(self.name, self.current_run.profile), record)

    # --- the lifecycle task ------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._wait_wanted()
            self._stop_requested = anyio.Event()
            exit_info, requested = await self._run_once()
            if requested or not self._want:
                self.last_exit = exit_info.reason
                self._set_state(ComponentState.STOPPED, exit_info.reason)
                continue
            await self._after_exit(exit_info)

    async def _wait_wanted(self) -> None:
        while not self._want:
            await self._wake.wait()
            self._wake = anyio.Event()

    async def _after_exit(self, exit_info: ExitInfo) -> None:
        now = time.monotonic()
        self._history, decision = restart.on_exit(self._history, self.spec, exit_info, now, _unit_random())
        self.last_exit = exit_info.reason
        if decision.state is not ComponentState.BACKOFF:
            self._want = False
            self._set_state(decision.state, decision.reason)
            return
        self._set_state(ComponentState.BACKOFF, decision.reason)
        with anyio.move_on_after(decision.delay_s):
            await self._stop_requested.wait()
        if self._want:
            self.restarts += 1
        else:
            self._set_state(ComponentState.STOPPED, "stopped during backoff")

    async def _run_once(self) -> tuple[ExitInfo, bool]:
        """One run, from spawn to the end of its whole tree. Returns (how it ended, stop requested)."""
        self._set_state(ComponentState.STARTING)
        adopting, spawn_began = self._to_adopt is not None, time.monotonic()
        if self._to_adopt is not None:
            child, self._to_adopt = self._to_adopt, None
            endpoint = RunEndpoint(self.spec, self.spec.port)
        else:
            try:
                spec = with_profile(self.spec, self.profile)
                endpoint = RunEndpoint(spec, port_for_run(spec, self._hooks.taken_ports))
                child = launcher.spawn(endpoint.spec, self._extra_env)
            except SpawnError as exc:
                self.spawn_error = exc
                log.error("spawn_failed", component=self.name, command=exc.command, reason=exc.reason)
                return ExitInfo(code=None, signal=None, reason=f"spawn failed: {exc.reason}"), False
        self._begin_run(child, endpoint)
        self.current_run.spawn_s = None if adopting else time.monotonic() - spawn_began
        sink = self.log_sink = RotatingLog(self.log_path, *self._log_limits, on_problem=self._hooks.on_log_problem)
        output = self.run_output = RunOutput(
            endpoint.spec, self._bus, self._hooks.echo, ready_already=adopting, ready_probe=endpoint.ready
        )
        ended, clean = "supervisor stopped", False
        try:
            info, requested = await self._supervise(child, endpoint, sink, output)
            ended, clean = info.reason, info.code == 0 and not requested
            return info, requested
        finally:
            self._end_run(ended, clean)
            with anyio.CancelScope(shield=True):
                if child.returncode is None or child.tree():
                    await self._stop_tree(child, self.state is ComponentState.FROZEN)
                child.close()
                sink.close()
                await endpoint.aclose()
                self.log_sink = None
                self.child = self.endpoint = None
                self.memory.end_run()
                self.levers.run_ended()
                self._hooks.on_change(self.name)
                self._set_changed()

    def _begin_run(self, child: launcher.Child, endpoint: RunEndpoint) -> None:
        self.child, self.spawn_error, self.endpoint = child, None, endpoint
        if self._hooks.orphans_of is not None and not self.adopted:
            orphans_of, name = self._hooks.orphans_of, self.name
            child.find_orphans = lambda: orphans_of(name)
        self.started_at = self.last_used = time.monotonic()
        context = self._hooks.run_context
        predicted, inputs = context(self.name) if context else (None, None)
        self.current_run = RunStats(started_unix=time.time(), predicted_mb=predicted, inputs_bytes=inputs)
        self.current_run.profile = self.profile
        self.memory.begin_run(child.pid)
        self.levers.run_ended()
        self._hooks.on_change(self.name)
        event = "adopted" if self.adopted else "spawned"
        log.info(event, component=self.name, pid=child.pid, command=endpoint.spec.command, port=endpoint.port)

    async def _supervise(
        self, child: launcher.Child, endpoint: RunEndpoint, sink: RotatingLog, output: RunOutput
    ) -> tuple[ExitInfo, bool]:
        is_ready = lambda: self.state is ComponentState.READY  # noqa: E731 - probed only while READY
        watch = RunWatch(child, output, endpoint, lambda: self._became_ready(child), is_ready)
        async with anyio.create_task_group() as tg:
            watch.start(tg, sink)
            if await first_of(child, self._stop_requested, watch.abort):
                info, requested = launcher.exit_info(child.returncode or 0), False
                leftover = child.tree()
                if leftover:  # the leader is gone but grandchildren are not: end them too
                    log.info("stopping_orphans", component=self.name, pids=[i.pid for i in leftover])
                    await self._stop_tree(child, False)
            else:
                requested = watch.reason is None
                info = await self._stop_run(child, self._stop_reason if requested else str(watch.reason), requested)
            await watch.drain()
            tg.cancel_scope.cancel()
        log.info("exited", component=self.name, pid=child.pid, reason=info.reason)
        return info, requested

    def _became_ready(self, child: launcher.Child) -> None:
        if self.state is ComponentState.STARTING:
            self.memory.fold_hwm(child.tree_hwm_bytes())  # the peak while loading
            self.memory.mark_ready()
            self.current_run.time_to_ready_s = time.monotonic() - (self.started_at or time.monotonic())
            self._set_state(ComponentState.READY)

    async def _stop_run(self, child: launcher.Child, why: str, requested: bool) -> ExitInfo:
        """Stop the tree of a running run: asked for (`requested`), or not ready or not alive."""
        self.memory.last_look(child.tree_hwm_bytes(), child.hot_file_bytes)  # the counters go with the processes
        # A component that stopped answering may be stopped (SIGSTOP) from outside: SIGCONT
        # with the stop signal lets it exit cleanly, as a frozen one does.
        resume = self.state is ComponentState.FROZEN or not requested
        self._set_state(ComponentState.STOPPING, why)
        info = await self._stop_tree(child, resume)
        said = info.signal == signal.SIGKILL or not requested or child.in_process  # what came back
        # Not ready or not alive is a failure whatever the exit status (systemd's view).
        code = info.code if requested else None
        return ExitInfo(code, info.signal, f"{why}; {info.reason}" if said else why)

    # --- helpers -----------------------------------------------------------------------

    async def _stop_tree(self, child: launcher.Child, was_frozen: bool) -> ExitInfo:
        stop_signal = launcher.signal_number(self.spec.stop_signal)
        return await child.stop(stop_signal, self.spec.stop_grace_s, self.name, was_frozen)

    def _set_state(self, state: ComponentState, reason: str | None = None) -> None:
        if state is self.state and reason is None:
            return
        previous, self.state = self.state, state
        pid = self.child.pid if self.child else None
        if not states.allowed(previous, state):  # a bug: say so loudly, but keep supervising
            log.error("illegal_transition", component=self.name, old=previous.value, new=state.value, reason=reason)
        log.info("state_changed", component=self.name, old=previous.value, new=state.value, pid=pid, reason=reason)
        self._bus.publish("state", component=self.name, old=previous.value, state=state.value, pid=pid, reason=reason)
        self._hooks.on_change(self.name)
        self._set_changed()

    def _set_changed(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _wait_for(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._changed.wait()


async def first_of(child: launcher.Child, *events: anyio.Event) -> bool:
    """Wait for the leader to exit (True) or for one of `events` (False)."""
    exited = False
    async with anyio.create_task_group() as tg:

        async def leader() -> None:
            nonlocal exited
            await child.wait()
            exited = True
            tg.cancel_scope.cancel()

        async def wait_event(event: anyio.Event) -> None:
            await event.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(leader)
        for event in events:
            tg.start_soon(wait_event, event)
    return exited


def run_record(
    run: RunStats, memory: ComponentMemory, exit_peak: int | None, exit_reason: str, clean_exit: bool = False
) -> RunRecord:
    """A finished run as the history keeps it: its peak (sampled, the kernel's marks, and the
    leader's own lifetime peak from wait4), its size when ready and steady, what trims freed."""
    peak, source = memory.run_peak(exit_peak)
    ready_peak, steady = memory.run.ready_peak_bytes, memory.steady_bytes()
    return RunRecord(
        started_unix=run.started_unix or 0.0,
        peak_mb=round(peak / MIB, 1),
        peak_source=source,
        ready_peak_mb=round(ready_peak / MIB, 1) if ready_peak is not None else None,
        steady_mb=round(steady / MIB, 1) if steady is not None else None,
        time_to_ready_s=round(run.time_to_ready_s, 3) if run.time_to_ready_s is not None else None,
        trim_freed_mb=list(memory.run.trim_freed_mb),
        exit_reason=exit_reason,
        inputs_bytes=run.inputs_bytes,
        predicted_mb=run.predicted_mb,
        clean_exit=clean_exit,
        anon_peak_mb=round(memory.run.anon_peak_bytes / MIB, 1) if memory.run.anon_peak_bytes else None,
        file_peak_mb=round(memory.run.file_peak_bytes / MIB, 1) if memory.run.file_peak_bytes else None,
        hot_file_mb=round(hot / MIB, 1) if (hot := memory.run.hot_file_bytes) is not None else None,
    )


class StatusRows:
    """`status`'s rows for every component, kept whole while nothing they show can have
    changed: no component changed state or process (`changed()`), no newer reading was taken
    in, and the same second (uptimes are then up to a second old). A poll of N components
    then costs the reply's encoding alone, not N rows checked and copied (bench_scale)."""

    def __init__(self) -> None:
        self._generation = 0
        self._key: tuple[int, float, int, int] | None = None
        self._rows: list[ComponentStatus] = []
        self._msgpack: msgspec.Raw | None = None  # the rows encoded, for the control socket

    def changed(self) -> None:
        self._generation += 1

    def rows(self, runners: Collection[Runner], reading_time: float, now: float) -> list[ComponentStatus]:
        key = (self._generation, reading_time, int(now), len(runners))  # a registration adds one
        if key != self._key:
            self._rows = [component_status(r, now) for r in runners]
            self._key, self._msgpack = key, None
        return self._rows

    def msgpack(self) -> msgspec.Raw:
        """The current rows as msgpack, encoded once while they stand: a poll of 1,000
        components then copies bytes instead of encoding 1,000 rows (bench_scale)."""
        if self._msgpack is None:
            self._msgpack = msgspec.Raw(msgspec.msgpack.encode(self._rows))
        return self._msgpack


def component_status(runner: Runner, now: float) -> ComponentStatus:
    """One row of `status`. The row is kept per runner and built again only when what it
    shows changed (state, process, restarts, last exit, a new reading); a call then costs
    a new uptime, so `status` of N components stays a short C-level pass per row."""
    child, usage = runner.child, runner.memory.usage
    waiting = runner.waiting_reason if runner.state is ComponentState.WAITING else None
    key = (runner.state, child, runner.restarts, runner.last_exit, usage, waiting, runner.profile)
    cached = runner.status_cache
    if cached is None or cached[0] != key:
        row = ComponentStatus(
            name=runner.name,
            state=runner.state,
            priority=runner.spec.priority,
            pid=child.pid if child else None,
            rss_mb=round(usage.rss_mb, 1) if child else 0.0,
            processes=usage.processes if child else 0,
            uptime_s=None,
            restarts=runner.restarts,
            estimated_mb=runner.spec.estimated_mb,
            autostart=runner.spec.autostart,
            last_exit=runner.last_exit,
            waiting=waiting,
            port=runner.endpoint.port if runner.endpoint is not None else None,
            profile=runner.profile,
        )
        cached = runner.status_cache = (key, row)
    started = runner.started_at
    if child is None or started is None:
        return cached[1]
    return msgspec.structs.replace(cached[1], uptime_s=round(now - started, 1))


def adopt_running(runner: Runner, pid: int, popen: subprocess.Popen[Any] | None = None) -> None:
    """Have `runner` manage the running process `pid` (and its tree): see launcher.Adopted."""
    try:
        ident = procs.identity(pid)
    except (procs.NoSuchProcess, procs.AccessDenied) as exc:
        raise Refused(f"cannot adopt pid {pid}: {exc.message}") from None
    runner.adopt(launcher.Adopted(ident, popen))
