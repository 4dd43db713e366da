"""`Supervisor`: owns the task group, the runners and the monitor loop.

It is the one place every command goes through, whichever door it came in by (control
socket, HTTP, CLI, Python API): `status`, `components`, `load`, `unload`, `restart`,
`logs`, `shutdown`. Doors live in higher layers and are handed in as `services`, each an
async callable `(supervisor, task_status=...)` started inside the supervisor's task group.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, Protocol

import anyio
import structlog

from . import orphans, procs
from .admission import Admission, inputs_bytes
from .config import ComponentSpec, Config, Paths
from .diskstate import DiskState
from .errors import Refused, ShuttingDown, UnknownComponent
from .events import EventBus
from .history import History
from .idlettl import IdleUnloader
from .logfiles import tail_lines
from .model import ComponentState, ComponentStatus, MemoryState, RunRecord, Snapshot
from .monitor import MemoryMonitor
from .ordering import start_in_order, stop_in_order
from .profiles import with_profile
from .record import ProcessRecord
from .registry import Registry
from .report import component_rows, status, supervisor_about, with_gpu
from .runner import Runner, RunnerHooks, StatusRows, component_status
from .runtime import RuntimeDir, ensure_private_dir, stop_leftovers
from .runtimewatch import RuntimeWatch
from .waitingroom import WaitingRoom

log = structlog.get_logger("ironcliw.supervisor")

STATUS_SAMPLE_MAX_AGE_S = 0.5


class Service(Protocol):
    def __call__(self, supervisor: Supervisor, *, task_status: Any = ...) -> Coroutine[Any, Any, None]: ...


class Supervisor:
    def __init__(
        self, config: Config, paths: Paths, *, echo: Callable[[str, bytes], None] | None = None, subreaper: bool = False
    ) -> None:
        self.config = config
        self.subreaper = subreaper  # `up` owns its process: orphaned descendants come back to it (orphans.py)
        self.paths = paths
        self.bus = EventBus()
        self.runtime = RuntimeDir(paths.runtime_dir)
        self.started_at = time.monotonic()
        self._shutdown = anyio.Event()
        self._stopping = False
        self._tg: anyio.abc.TaskGroup | None = None
        self._env = {"IRONCLIW_RUNTIME_DIR": paths.runtime_dir, "IRONCLIW_STATE_DIR": paths.state_dir}
        self._env["IRONCLIW_SOCKET"] = paths.socket  # every component's environment
        self._echo = echo
        self.runners: dict[str, Runner] = {}
        self.status_rows = StatusRows()
        self.history = History(paths.state_dir)
        self.registry = Registry(paths.state_dir, config.base_dir)  # what `register` added, kept
        # The monitor asks for predictions made by the admission (which needs the monitor).
        self.memory = MemoryMonitor(config.memory, self.runners, self.bus, lambda name: self.admission.prediction(name))
        self.disk = DiskState(
            self.bus,
            self.history,
            lambda: [r.log_sink for r in self.runners.values() if r.log_sink is not None],
            retry_record=lambda: self.record.changed(),
        )
        self.record = ProcessRecord(self.runtime, self.runners, self.memory, self.disk.problem)
        self.runtime_watch = RuntimeWatch(self.runtime, self.disk.problem, restored=[self.record.rewrite])
        self.memory.on_walk = self.record.changed
        self.admission = Admission(self.runners, self.history, self.memory, self._fresh_sample)
        self.idle = IdleUnloader(self.runners, lambda r: self.config.idle_ttl_s(r.spec), self.unload)
        for name in config.order:
            self.runners[name] = self._make_runner(config.components[name])

    def _make_runner(self, spec: ComponentSpec) -> Runner:
        assert spec.name is not None
        return Runner(
            spec,
            log_path=Path(self.paths.log_dir) / f"{spec.name}.log",
            log_limits=(self.config.supervisor.log_max_bytes, self.config.supervisor.log_backups),
            bus=self.bus,
            extra_env=self._env,
            hooks=RunnerHooks(
                on_change=self._component_changed,
                echo=self._echo,
                on_run_end=self._record_run,
                on_log_problem=lambda path, problem: self.disk.problem("log_dir", path, problem),
                # a component's orphans now: our children (not leaders) that say they are its own
                orphans_of=lambda name: orphans.find(self.memory.leaders()).get(name, []),
                run_context=lambda name: (
                    self.admission.prediction(name).peak_mb,
                    inputs_bytes(with_profile(self.runners[name].spec, self.runners[name].profile)),
                ),
                taken_ports=lambda: {r.endpoint.port for r in self.runners.values() if r.endpoint and r.endpoint.port},
            ),
        )

    def register(self, spec: ComponentSpec) -> Runner:
        """Add a component at run time (the Python API); it starts only when loaded or adopted."""
        assert spec.name is not None
        if spec.name in self.runners:
            raise Refused(f"a component named {spec.name!r} is already registered")
        for dep in spec.after:
            self.runner(dep)
        self.config.components[spec.name] = spec
        self.config.order.append(spec.name)
        runner = self.runners[spec.name] = self._make_runner(spec)
        if self._tg is not None:
            self._tg.start_soon(runner.run)
        self.idle.components_changed()
        return runner

    # --- running -----------------------------------------------------------------------

    async def run(
        self, *, services: Iterable[Service] = (), task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until `shutdown()`; every component is stopped before this returns."""
        self.runtime.acquire()
        if self.subreaper and not procs.become_subreaper():
            log.info("no_subreaper", reason="the OS cannot reparent orphans to us: daemons escaping a tree go unseen")
        try:
            ensure_private_dir(Path(self.paths.state_dir))
            Path(self.paths.log_dir).mkdir(parents=True, exist_ok=True)
            self.history.load()
            self.registry.restore(self.register, lambda name: name in self.runners)
            await stop_leftovers(self.runtime, self.config.longest_stop_grace_s())
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for runner in self.runners.values():
                    await tg.start(runner.run)
                for service in services:
                    await tg.start(service, self)
                tg.start_soon(self._monitor)
                tg.start_soon(self.idle.run)
                tg.start_soon(self.disk.keep)
                tg.start_soon(self.record.keep)
                tg.start_soon(self.runtime_watch.keep, self.memory.sampler.off_loop.until)
                log.info("supervisor_started", pid=os.getpid(), config=self.config.source, socket=self.paths.socket)
                task_status.started()
                tg.start_soon(self.start_many)  # the autostart components, admitted
                await self._shutdown.wait()
                with anyio.CancelScope(shield=True):
                    await self.stop_many(list(self.runners), "supervisor shutdown")
                    await orphans.stop_unclaimed(self.config.longest_stop_grace_s())
                    self.record.update()  # empty now: nothing for the next `up` to clean up
                tg.cancel_scope.cancel()
        finally:
            self.memory.sampler.close()
            self.disk.save_history_now()
            self.runtime.release()
            log.info("supervisor_stopped", pid=os.getpid())

    def shutdown(self) -> None:
        """Ask `run()` to stop every component and return."""
        if not self._stopping:
            log.info("shutdown_requested")
        self._stopping = True
        self._shutdown.set()

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def start_many(self, names: list[str] | None = None) -> None:
        """Start several components at once; each waits for those in its `after` first. Without
        `names` (`up`): the autostart components, each also waiting for room (waitingroom.py)."""
        admit = None
        if names is None:
            names = [n for n in self.config.order if self.config.components[n].autostart]
            admit = WaitingRoom(self.admission, self.runners, names, lambda: self._stopping).admit
        await start_in_order(self.runners, self.config.components, names, lambda: self._stopping, admit)

    async def stop_many(self, names: list[str], reason: str) -> None:
        """Stop several components at once; each waits until those that run `after` it are down."""
        await stop_in_order(self.runners, self.config.components, names, reason)

    async def _monitor(self) -> None:
        async with anyio.create_task_group() as actions_tg:  # unloads and reloads run here
            await self.memory.run(actions_tg, lambda: self._stopping)

    def _component_changed(self, name: str) -> None:
        """A component changed state or process: the last sample is stale, the record may be."""
        self.memory.roots_changed(name, self.runners[name].child)
        self.status_rows.changed()
        self.record.changed()

    # --- commands ----------------------------------------------------------------------

    def runner(self, name: str) -> Runner:
        try:
            return self.runners[name]
        except KeyError:
            raise UnknownComponent(name) from None

    def component_statuses(self) -> list[ComponentStatus]:
        # Status reads the latest sample while it is fresh: a dashboard or script polling
        # status many times a second must not multiply the sampling work.
        snap = self._fresh_sample()
        return self.status_rows.rows(self.runners.values(), snap.time, time.monotonic())

    def status(self, msgpack_rows: bool = False) -> dict[str, Any]:  # msgpack_rows: pre-encoded, for the socket
        about = supervisor_about(self.started_at, self.config.source, self.paths.runtime_dir, self._stopping)
        out = status(about, self.component_statuses(), self.memory.summary(), self.disk.warnings())
        return out | {"components": self.status_rows.msgpack()} if msgpack_rows else out

    def components(self) -> dict[str, Any]:
        return {"components": component_rows(self.component_statuses(), self.runners)}

    def _record_run(self, name: str, record: RunRecord) -> None:
        self.admission.run_ended(name, record)
        self.disk.history_changed()  # written by the keeper, off the loop

    async def load(self, name: str, make_room: bool = False) -> ComponentStatus:
        runner = self.runner(name)
        self._refuse_while_stopping()
        self.admission.apply_profile(name, make_room)
        shortfall = self.admission.admit(name, make_room)
        if shortfall is not None:
            await self.admission.make_room(name, *shortfall)
        return await self._start_ready(runner)

    async def unload(self, name: str, reason: str = "unloaded") -> ComponentStatus:
        runner = self.runner(name)
        runner.unloaded_by_policy = False  # a person unloaded it: it stays down until loaded
        await runner.stop(reason)
        return component_status(runner, time.monotonic())

    async def restart(self, name: str) -> ComponentStatus:
        runner = self.runner(name)
        self._refuse_while_stopping()
        await runner.stop("restarting")
        return await self._start_ready(runner)  # it was running: admission already let it in

    async def _start_ready(self, runner: Runner) -> ComponentStatus:
        state = await runner.start()
        if state is not ComponentState.READY and runner.spawn_error is not None:
            raise runner.spawn_error  # the OS refused the command: SPAWN_FAILED, with the reason
        if state is not ComponentState.READY:
            why = runner.last_exit or "no exit recorded"
            raise Refused(f"{runner.name} did not become ready: {state.value}, {why}")
        return component_status(runner, time.monotonic())

    def forget(self, name: str) -> dict[str, Any]:
        """Clear a component's run history: its next prediction starts from its estimate again."""
        forgotten = self.admission.forget(name)
        self.disk.history_changed()
        return {"name": name, "runs_forgotten": forgotten, "prediction": self.admission.prediction(name).detail}

    def touch(self, name: str) -> ComponentStatus:
        (runner := self.runner(name)).last_used = now = time.monotonic()  # idle unloading goes by the last use
        return component_status(runner, now)

    def memory_status(self) -> dict[str, Any]:  # the newest sample while fresh: pollers do not multiply sampling
        return self.memory.summary(self._fresh_sample())

    def report(self) -> dict[str, Any]:
        out = with_gpu(self.memory.report(self._fresh_sample()), self.admission.gpu, self.runners)
        return out | {"warnings": self.disk.warnings()}

    def explain(self) -> dict[str, Any]:
        return with_gpu(self.memory.explain(self._fresh_sample()), self.admission.gpu, self.runners)

    async def optimize(self) -> dict[str, Any]:
        """The WARNING actions now: trim requests, and idle LOW components unloaded."""
        return {"actions": await self.memory.act_as(MemoryState.WARNING, self._task_group(), "optimize")}

    async def emergency_cleanup(self) -> dict[str, Any]:
        """The EMERGENCY actions now: freeze and unload everything but CRITICAL."""
        return {"actions": await self.memory.act_as(MemoryState.EMERGENCY, self._task_group(), "emergency-cleanup")}

    def _task_group(self) -> anyio.abc.TaskGroup:
        if self._tg is None:
            raise Refused("the supervisor is not running")
        return self._tg

    def _fresh_sample(self) -> Snapshot:
        return self.memory.fresh(STATUS_SAMPLE_MAX_AGE_S)

    async def logs(self, name: str, lines: int) -> list[str]:
        """The last lines of a component's log, read in a worker thread (a file read can take
        long on a slow disk; the cost is bounded by `lines`, see logfiles.tail_lines)."""
        path = self.runner(name).log_path
        return await anyio.to_thread.run_sync(tail_lines, path, lines)

    def _refuse_while_stopping(self) -> None:
        if self._stopping:
            raise ShuttingDown("the supervisor is shutting down")
