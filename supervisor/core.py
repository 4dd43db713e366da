"""`Supervisor`: owns the task group, the runners and the monitor loop.

It is the one place every command goes through, whichever door it came in by (control
socket, HTTP, CLI, Python API): `status`, `components`, `load`, `unload`, `restart`,
`logs`, `shutdown`. Doors live in higher layers and are handed in as `services`, each an
async callable `(supervisor, task_status=...)` started inside the supervisor's task group.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, Protocol

import anyio
import structlog

from . import launcher, orphans, procs
from .admission import Admission, inputs_bytes
from .config import ComponentSpec, Config, Paths
from .errors import Refused, UnknownComponent
from .events import EventBus
from .history import History
from .logfiles import RETRY_INITIAL_S, RETRY_MAX_S, disk_problem, tail_lines
from .model import MIB, ComponentState, ComponentStatus, MemoryState, ProcessIdentity, Snapshot
from .monitor import MemoryMonitor
from .predictor import Prediction, RunRecord
from .runner import Runner
from .runtime import ChildRecord, RuntimeDir, ensure_private_dir, stop_leftovers
from .stopping import stop_processes

log = structlog.get_logger("ironcliw.supervisor")

STATUS_SAMPLE_MAX_AGE_S = 0.5
RECORD_EVERY_S = 0.05  # the runtime dir's record is rewritten at most this often


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
        # Disk trouble that is reported, never fatal: path -> (where, problem), e.g. ("log_dir", "no space left").
        self._disk_problems: dict[str, tuple[str, str]] = {}
        self._state_dirty = anyio.Event()  # history to write, or a write to retry (the keeper's wake-up)
        self._record_wanted = anyio.Event()  # the runtime dir's record is out of date
        self._recorded: list[ChildRecord] = []
        env = {
            "IRONCLIW_RUNTIME_DIR": paths.runtime_dir,
            "IRONCLIW_STATE_DIR": paths.state_dir,
            "IRONCLIW_SOCKET": paths.socket,
        }
        self._env = env
        self._echo = echo
        self.runners: dict[str, Runner] = {name: self._make_runner(config.components[name]) for name in config.order}
        self.history = History(paths.state_dir)
        self.memory = MemoryMonitor(config.memory, self.runners, self.bus, predict=self.prediction)
        self.memory.on_walk = self._record_changed
        self.admission = Admission(self.runners, self.history, self.memory, self._fresh_sample)
        self._identities: dict[int, ProcessIdentity] = {}  # of the processes in the record

    def _make_runner(self, spec: ComponentSpec) -> Runner:
        assert spec.name is not None
        return Runner(
            spec,
            log_path=Path(self.paths.log_dir) / f"{spec.name}.log",
            log_max_bytes=self.config.supervisor.log_max_bytes,
            log_backups=self.config.supervisor.log_backups,
            bus=self.bus,
            extra_env=self._env,
            on_change=self._component_changed,
            echo=self._echo,
            on_run_end=self._record_run,
            on_log_problem=lambda path, problem: self._disk_problem("log_dir", path, problem),
            orphans_of=self._orphans_of,
            run_context=lambda name: (self.prediction(name).peak_mb, inputs_bytes(self.config.components[name])),
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
        return runner

    # --- running -----------------------------------------------------------------------

    async def run(
        self, *, services: Iterable[Service] = (), task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until `shutdown()`; every component is stopped before this returns."""
        self.runtime.acquire()
        if self.subreaper and not procs.become_subreaper():
            log.info(
                "no_subreaper",
                reason="this OS cannot reparent orphans to the supervisor; daemons that escape a tree are not seen",
            )
        try:
            ensure_private_dir(Path(self.paths.state_dir))
            Path(self.paths.log_dir).mkdir(parents=True, exist_ok=True)
            self.history.load()
            grace = max((spec.stop_grace_s for spec in self.config.components.values()), default=5.0)
            await stop_leftovers(self.runtime, grace)
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for runner in self.runners.values():
                    await tg.start(runner.run)
                for service in services:
                    await tg.start(service, self)
                tg.start_soon(self._monitor)
                tg.start_soon(self._keep_state)
                tg.start_soon(self._keep_record)
                log.info("supervisor_started", pid=os.getpid(), config=self.config.source, socket=self.paths.socket)
                task_status.started()
                tg.start_soon(self.start_many, [n for n in self.config.order if self.config.components[n].autostart])
                await self._shutdown.wait()
                with anyio.CancelScope(shield=True):
                    await self.stop_many(list(self.runners), "supervisor shutdown")
                    await self._stop_orphans()
                    self._update_record()  # empty now: nothing for the next `up` to clean up
                tg.cancel_scope.cancel()
        finally:
            self.memory.close()
            self._save_history_now()
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

    async def start_many(self, names: list[str]) -> None:
        """Start several components at once; each waits for those in its `after` first."""
        settled = {name: anyio.Event() for name in names}

        async def one(name: str) -> None:
            try:
                for dep in self.config.components[name].after:
                    if dep in settled:
                        await settled[dep].wait()
                if not self._stopping:
                    await self.runners[name].start()
            finally:
                settled[name].set()

        async with anyio.create_task_group() as tg:
            for name in names:
                tg.start_soon(one, name)

    async def stop_many(self, names: list[str], reason: str) -> None:
        """Stop several components at once; each waits until those that run `after` it are down."""
        done = {name: anyio.Event() for name in names}
        dependants: dict[str, list[str]] = {name: [] for name in names}
        for other in names:  # one pass over the `after` lists, not one per component
            for dep in self.config.components[other].after:
                if dep in dependants:
                    dependants[dep].append(other)

        async def one(name: str) -> None:
            try:
                for other in dependants[name]:
                    await done[other].wait()
                await self.runners[name].stop(reason)
            finally:
                done[name].set()

        async with anyio.create_task_group() as tg:
            for name in names:
                tg.start_soon(one, name)

    async def _monitor(self) -> None:
        async with anyio.create_task_group() as actions_tg:  # unloads and reloads run here
            await self.memory.run(actions_tg, lambda: self._stopping)

    def _component_changed(self) -> None:
        """A component changed state or process: the last sample is stale, the record may be."""
        self.memory.roots_changed()
        self._record_changed()

    def _record_changed(self) -> None:
        """The record may be out of date: the keeper rewrites it (O(1) here: a `stop all` of N
        components changes state 3N times, and each rewrite is O(N))."""
        self._record_wanted.set()

    async def _keep_record(self) -> None:
        """The one writer of the runtime dir's record: at most once per RECORD_EVERY_S, with
        every change made meanwhile (a process recorded that late can only be a descendant:
        a leader that outlives a killed supervisor gets its parent-death signal)."""
        while True:
            await self._record_wanted.wait()
            self._record_wanted = anyio.Event()
            self._update_record()
            await anyio.sleep(RECORD_EVERY_S)

    def _update_record(self) -> None:
        """Rewrite the runtime dir's record of every process of the stack when that set changed:
        each leader, every member of its tree at the last walk (orphans included), and the
        unattributed orphans, so the next `up` after a SIGKILL stops them all."""
        records = []
        members = self.memory.members
        known = self._identities
        for name, r in self.runners.items():
            if r.child is None:
                continue
            records.append(ChildRecord(name=name, pid=r.child.pid, create_time=r.child.identity.create_time))
            for pid in members.get(r.child.pid, ()):
                if pid != r.child.pid and (ident := known.get(pid) or procs.find_identity(pid)) is not None:
                    known[pid] = ident
                    records.append(ChildRecord(name=name, pid=pid, create_time=ident.create_time))
        for pid in self.memory.orphans.get("", ()):
            if (ident := known.get(pid) or procs.find_identity(pid)) is not None:
                known[pid] = ident
                records.append(ChildRecord(name="", pid=pid, create_time=ident.create_time))
        for pid in set(known) - {rec.pid for rec in records}:
            del known[pid]
        if records != self._recorded:
            try:
                self.runtime.write_children(records)
            except OSError as exc:  # tried again at the next change; the leftovers check is best effort
                self._disk_problem("runtime_dir", str(self.runtime.children_path), disk_problem(exc))
                return
            self._disk_problem("runtime_dir", str(self.runtime.children_path), None)
            self._recorded = records

    def _orphans_of(self, name: str) -> list[int]:
        """A component's orphans, now: our children that say they are `name`'s, other than
        the leaders (whose exits their runners reap)."""
        return orphans.find({r.child.pid for r in self.runners.values() if r.child is not None}).get(name, [])

    async def _stop_orphans(self) -> None:
        """At shutdown, after every component: whatever is still our child is an orphan that
        no component claimed (it cleared its environment, or outlived its component)."""
        left = orphans.find(set())
        idents = orphans.with_descendants([pid for pids in left.values() for pid in pids])
        if idents:
            log.info("stopping_orphans", pids=[i.pid for i in idents], components=sorted(left))
            grace = max((s.stop_grace_s for s in self.config.components.values()), default=5.0)
            await stop_processes(idents, signal.SIGTERM, grace)
            orphans.reap(set())

    # --- disk trouble: reported, retried, never fatal ----------------------------------------

    def _disk_problem(self, where: str, path: str, problem: str | None) -> None:
        """Record (or clear, with None) a write the disk refused; publish the change once."""
        had = self._disk_problems.get(path)
        if problem is None:
            if had is not None:
                del self._disk_problems[path]
                log.info("disk_recovered", where=where, path=path)
                self.bus.publish("warning", where=where, path=path, problem=None)
            return
        if had == (where, problem):
            return
        self._disk_problems[path] = (where, problem)
        log.warning("disk_write_failed", where=where, path=path, problem=problem, action="kept in memory, retrying")
        self.bus.publish("warning", where=where, path=path, problem=problem)
        self._state_dirty.set()  # the keeper retries with backoff

    def warnings(self) -> list[str]:
        """One line per kind of trouble, e.g. `log_dir: no space left` (in status and report)."""
        return sorted({f"{where}: {problem}" for where, problem in self._disk_problems.values()})

    async def _keep_state(self) -> None:
        """The one writer of the history file (off the loop, in a worker thread), and the
        retrier of every write the disk refused, with backoff until it takes them again."""
        backoff = RETRY_INITIAL_S
        while True:
            await self._state_dirty.wait()
            self._state_dirty = anyio.Event()
            saved = await self._save_history()
            if any(where == "runtime_dir" for where, _ in self._disk_problems.values()):
                self._record_changed()  # the record keeper tries its write again
            logs_ok = all(
                r.log_sink.retry() for r in self.runners.values() if r.log_sink is not None and r.log_sink.problem
            )
            if saved and logs_ok and not self._disk_problems:
                backoff = RETRY_INITIAL_S
                continue
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, RETRY_MAX_S)
            self._state_dirty.set()

    async def _save_history(self) -> bool:
        if not self.history.dirty:
            return True
        data = self.history.encode()  # on the loop: the thread must not read what the loop changes
        try:
            await anyio.to_thread.run_sync(self.history.write, data)
        except OSError as exc:
            self._disk_problem("state_dir", str(self.history.path), disk_problem(exc))
            return False
        self._disk_problem("state_dir", str(self.history.path), None)
        return True

    def _save_history_now(self) -> None:
        """At exit: the last runs are written before the supervisor is gone (or reported)."""
        if self.history.dirty:
            try:
                self.history.save()
            except OSError as exc:
                log.error("history_not_saved", path=str(self.history.path), problem=disk_problem(exc))

    # --- commands ----------------------------------------------------------------------

    def runner(self, name: str) -> Runner:
        try:
            return self.runners[name]
        except KeyError:
            raise UnknownComponent(name) from None

    def component_statuses(self) -> list[ComponentStatus]:
        # Status reads the latest sample while it is fresh: a dashboard or script polling
        # status many times a second must not multiply the sampling work.
        self._fresh_sample()
        now = time.monotonic()
        return [r.status(now) for r in self.runners.values()]

    def status(self) -> dict[str, Any]:
        components = self.component_statuses()
        return {
            "supervisor": {
                "pid": os.getpid(),
                "uptime_s": round(time.monotonic() - self.started_at, 1),
                "rss_mb": round(procs.own_rss_bytes() / MIB, 1),
                "config": self.config.source,
                "runtime_dir": self.paths.runtime_dir,
                "stopping": self._stopping,
            },
            "stack_rss_mb": round(sum(c.rss_mb for c in components), 1),
            **self.memory.summary(),
            "warnings": self.warnings(),
            "components": components,
        }

    def components(self) -> dict[str, Any]:
        rows = []
        for row in self.component_statuses():
            spec = self.config.components[row.name]
            rows.append(
                {
                    **{f: getattr(row, f) for f in row.__struct_fields__},
                    "command": launcher.resolve_command(spec.command),
                    "cwd": spec.cwd,
                    "after": spec.after,
                    "restart": spec.restart.value,
                    "stop_signal": spec.stop_signal,
                    "stop_grace_s": spec.stop_grace_s,
                    "trim_signal": spec.trim_signal,
                    "log_file": str(self.runners[row.name].log_path),
                }
            )
        return {"components": rows}

    # --- prediction and admission (admission.py) ---------------------------------------------

    def prediction(self, name: str) -> Prediction:
        return self.admission.prediction(name)

    def can_load(self, name: str) -> tuple[bool, str, Prediction, int]:
        return self.admission.can_load(name)

    def _record_run(self, name: str, record: RunRecord) -> None:
        self.history.append(name, record)
        self._state_dirty.set()  # written by the keeper, off the loop
        self.admission.forget(name)
        log.info(
            "run_recorded",
            component=name,
            peak_mb=record.peak_mb,
            peak_source=record.peak_source,
            predicted_mb=record.predicted_mb,
            time_to_ready_s=record.time_to_ready_s,
        )

    async def load(self, name: str, make_room: bool = False) -> ComponentStatus:
        runner = self.runner(name)
        self._refuse_while_stopping()
        ok, reason, pred, room = self.can_load(name)
        if not ok:
            if not make_room:
                raise Refused(reason + " (--make-room unloads lower priorities)")
            await self.admission.make_room(name, pred, room)
        state = await runner.start()
        if state is not ComponentState.READY:
            raise Refused(f"{name} did not become ready: {state.value}, {runner.last_exit or 'no exit recorded'}")
        return runner.status(time.monotonic())

    async def unload(self, name: str, reason: str = "unloaded") -> ComponentStatus:
        runner = self.runner(name)
        await runner.stop(reason)
        return runner.status(time.monotonic())

    async def restart(self, name: str) -> ComponentStatus:
        runner = self.runner(name)
        self._refuse_while_stopping()
        await runner.stop("restarting")
        state = await runner.start()  # it was running: admission already let it in
        if state is not ComponentState.READY:
            raise Refused(f"{name} did not become ready: {state.value}, {runner.last_exit or 'no exit recorded'}")
        return runner.status(time.monotonic())

    def touch(self, name: str) -> ComponentStatus:
        runner = self.runner(name)
        runner.touch(time.monotonic())
        return runner.status(time.monotonic())

    def memory_status(self) -> dict[str, Any]:
        self._fresh_sample()
        return self.memory.summary()

    def report(self) -> dict[str, Any]:
        self._fresh_sample()
        return {**self.memory.report(), "warnings": self.warnings()}

    def explain(self) -> dict[str, Any]:
        self._fresh_sample()
        return self.memory.explain()

    async def optimize(self) -> dict[str, Any]:
        """The WARNING actions now: trim requests, and idle LOW components unloaded."""
        return {"actions": await self.memory.act_as(MemoryState.WARNING, self._task_group())}

    async def emergency_cleanup(self) -> dict[str, Any]:
        """The EMERGENCY actions now: freeze and unload everything but CRITICAL."""
        return {"actions": await self.memory.act_as(MemoryState.EMERGENCY, self._task_group())}

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
            raise Refused("the supervisor is shutting down")
