"""The Python API, with the seed's names:

    from supervisor import M1MemoryManager, ComponentPriority, MemoryState

    manager = M1MemoryManager(budget_mb=8192)
    manager.register_component("nlp_engine", ComponentPriority.HIGH, 180,
                               command=["python", "-m", "components.nlp_engine"])
    await manager.start_monitoring()
    ok, reason = await manager.can_load_component("nlp_engine")
    if ok:
        await manager.load_component("nlp_engine")

Everything goes through the same `Supervisor` as the CLI and the control socket. The
manager runs it in a background task of the running event loop (asyncio), so
`start_monitoring()` returns at once; `async with M1MemoryManager(...)` does the same with
a guaranteed stop. Components given a `command` are started and supervised; given a `pid`
or a `subprocess.Popen` (`process=`), the manager adopts that running tree: it measures,
freezes and unloads it, but cannot start it again.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import msgspec
import structlog

from . import control
from .config import (
    ComponentSpec,
    Config,
    HttpSection,
    MemorySection,
    Paths,
    SupervisorSection,
    check_component,
    decode_component,
    load_config,
    resolve_paths,
    without_command,
)
from .core import Supervisor
from .errors import ConfigError, IroncliwError, Refused
from .inprocess import InProcess, LoadMark, attribute, mark_now
from .model import MIB, ComponentState, MemoryState, Priority
from .runner import adopt_running

log = structlog.get_logger("ironcliw.api")

ComponentPriority = Priority


class MemorySnapshot(msgspec.Struct, frozen=True):
    """What a state callback receives, and what `snapshot()` returns."""

    state: MemoryState
    percent_used: float
    available_mb: float
    components_loaded: list[str]
    stack_mb: float = 0.0


StateCallback = Callable[[MemorySnapshot], Awaitable[None]]


class _SetOnStart:
    """A task_status for running the supervisor in a plain asyncio task."""

    def __init__(self, event: asyncio.Event) -> None:
        self.event = event

    def started(self, value: object = None) -> None:
        self.event.set()


class M1MemoryManager:
    def __init__(
        self,
        *,
        config: str | Path | None = None,
        budget_mb: int | None = None,
        runtime_dir: str | None = None,
        state_dir: str | None = None,
        control_socket: bool = True,
        **memory: Any,
    ) -> None:
        """`memory` takes any key of the config's `[memory]` table (warning_percent, dry_run, ...),
        over the `[memory]` of `config` if one is given; that file's components are a catalogue:
        `register_component(name, ...)` of one of them takes its command and settings."""
        base_memory: dict[str, Any] = {}
        self._catalogue: dict[str, ComponentSpec] = {}
        if config is not None:
            loaded = load_config(config)
            base_memory = msgspec.to_builtins(loaded.memory)
            self._catalogue = dict(loaded.components)
        overrides = {"budget_mb": budget_mb} if budget_mb is not None else {}
        try:
            memory_section = msgspec.convert({**base_memory, **overrides, **memory}, MemorySection)
        except msgspec.ValidationError as exc:
            raise ConfigError(str(config or "<M1MemoryManager>"), "$.memory", str(exc)) from None
        # A private runtime dir unless one is given: it never collides with a CLI stack, and
        # it is removed again at stop_monitoring().
        base = tempfile.mkdtemp(prefix="ironcliw-api-")
        self._owned_dir = base
        own = Config(
            source=str(config) if config is not None else "<python>",
            base_dir=os.getcwd(),
            supervisor=SupervisorSection(),
            memory=memory_section,
            http=HttpSection(enabled=False),
            components={},
            order=[],
        )
        env = {"IRONCLIW_RUNTIME_DIR": runtime_dir or f"{base}/run", "IRONCLIW_STATE_DIR": state_dir or f"{base}/state"}
        self.paths: Paths = resolve_paths(own, env, os.getuid(), str(Path.home()))
        self.supervisor = Supervisor(own, self.paths)
        self._control_socket = control_socket
        self._callbacks: list[StateCallback] = []
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self._load_marks: dict[str, LoadMark] = {}  # in-process loads begun (can_load_component)
        self._pending: set[asyncio.Task[None]] = set()  # first calls of callbacks added while running

    # --- components ------------------------------------------------------------------------

    def register_component(
        self,
        name: str,
        priority: Priority | str,
        estimated_mb: int,
        command: Sequence[str] | None = None,
        *,
        pid: int | None = None,
        process: subprocess.Popen[Any] | None = None,
        **options: Any,
    ) -> None:
        """Register a component: with a `command` to launch, a running `pid` / `process` to adopt,
        or neither: then the config's command if `config` has a component of that name (the
        call's priority and estimate win), else an in-process component, whose object
        `load_component(name, obj)` loads into this process. `options` are the config's
        component keys (cwd, env, after, trim_signal, ready, ...)."""
        adopt_pid = process.pid if process is not None else pid
        if command is not None and adopt_pid is not None:
            raise ConfigError("<register_component>", f"$.components.{name}", "a command or a pid/process, not both")
        table: dict[str, Any] = {
            "priority": priority.value if isinstance(priority, Priority) else priority,
            "estimated_mb": estimated_mb,
            **options,
        }
        if command is not None:
            table.setdefault("autostart", False)
            table["command"] = list(command)
        elif adopt_pid is None and name in self._catalogue:
            table = {**msgspec.to_builtins(self._catalogue[name]), "autostart": False, **table}
            table.pop("name", None)
        else:
            table = without_command(table, adopt_pid)
        spec = check_component(
            "<register_component>", Path(os.getcwd()), name, decode_component("<register_component>", name, table)
        )
        runner = self.supervisor.register(spec)
        if adopt_pid is not None:
            adopt_running(runner, adopt_pid, process)

    # --- running ---------------------------------------------------------------------------

    async def start_monitoring(self) -> None:
        """Start supervising; each state callback is then called once with the current snapshot."""
        if self._task is not None:
            return
        self._task = asyncio.get_running_loop().create_task(self._run())
        waiter = asyncio.ensure_future(self._started.wait())
        done, _ = await asyncio.wait({self._task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            waiter.cancel()
            self._task.result()  # raises what stopped it
        if self._callbacks:
            snap = self.snapshot()
            for callback in list(self._callbacks):
                await _call(callback, snap)

    async def stop_monitoring(self) -> None:
        if self._task is None:
            return
        self.supervisor.shutdown()
        try:
            await self._task
        finally:
            self._task = None
            shutil.rmtree(self._owned_dir, ignore_errors=True)

    async def __aenter__(self) -> M1MemoryManager:
        await self.start_monitoring()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_monitoring()

    async def _run(self) -> None:
        services = [control.serve] if self._control_socket else []
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._deliver_state_changes)
            await self.supervisor.run(services=services, task_status=_SetOnStart(self._started))
            tg.cancel_scope.cancel()

    async def _deliver_state_changes(self) -> None:
        with self.supervisor.bus.subscribe(["memory"]) as sub:
            async for event in sub.receive:
                if event.get("changed") and self._callbacks:
                    snap = self._snapshot_from(event)
                    for callback in list(self._callbacks):
                        await _call(callback, snap)

    # --- the seed's queries --------------------------------------------------------------------

    def add_state_callback(self, callback: StateCallback) -> None:
        """`await callback(snapshot)` once with the current snapshot (at `start_monitoring()`, or
        at once if monitoring already runs), then on every change of memory state."""
        self._callbacks.append(callback)
        if self._task is not None and self._started.is_set():
            task = asyncio.get_running_loop().create_task(_call(callback, self.snapshot()))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    def snapshot(self) -> MemorySnapshot:
        self.supervisor.memory.sample()
        return self._snapshot_from(self.supervisor.memory.summary())

    async def can_load_component(self, name: str) -> tuple[bool, str]:
        """(ok, reason): the predicted peak (history, inputs, margin) against the room before
        WARNING. For an in-process component this also begins its load: the process's growth
        from here to `load_component` is what the object is charged with."""
        ok, reason, _prediction, _room = self.supervisor.admission.can_load(name)
        if self.supervisor.runner(name).in_process:
            self._load_marks[name] = mark_now()
        return ok, reason

    async def load_component(self, name: str, component: object = None, *, make_room: bool = False) -> bool:
        """Load `name`: start its command, or, for an in-process component, take `component`
        (the object) as loaded. False, with the reason logged, when admission refuses it.
        `make_room=True` unloads lower priorities first when it does not fit."""
        if isinstance(component, bool):
            raise TypeError("load_component(name, obj, *, make_room=...): make_room is keyword-only")
        try:
            if self.supervisor.runner(name).in_process:
                await load_in_process(self.supervisor, name, component, make_room, self._load_marks.pop(name, None))
            elif component is not None:
                raise Refused(f"{name} runs its own command: load it without an object")
            else:
                await self.supervisor.load(name, make_room=make_room)
        except IroncliwError as exc:
            log.warning("load_refused", component=name, reason=exc.message)
            return False
        return True

    async def unload_component(self, name: str) -> bool:
        status = await self.supervisor.unload(name)
        return status.state in (ComponentState.STOPPED, ComponentState.EXITED)

    def components(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = msgspec.to_builtins(self.supervisor.components()["components"])
        return rows

    @staticmethod
    def _snapshot_from(summary: dict[str, Any]) -> MemorySnapshot:
        return MemorySnapshot(
            state=MemoryState(summary["state"]),
            percent_used=summary["percent_used"],
            available_mb=summary["available_mb"],
            components_loaded=list(summary["components_loaded"]),
            stack_mb=summary.get("stack_mb", 0.0),
        )


async def _call(callback: StateCallback, snap: MemorySnapshot) -> None:
    try:
        await callback(snap)
    except Exception:
        log.exception("state_callback_failed", callback=getattr(callback, "__name__", repr(callback)))


async def load_in_process(
    supervisor: Supervisor, name: str, obj: object, make_room: bool, mark: LoadMark | None
) -> None:
    """Admit an in-process load like any other (its prediction against the room before
    WARNING), then charge the object with what the load grew the process by (inprocess.py)."""
    runner = supervisor.runner(name)
    if obj is None:
        raise Refused(f"{name} is in-process: load_component({name!r}, obj) with the object to load")
    if runner.child is not None:
        raise Refused(f"{name} is already loaded: unload it first")
    shortfall = supervisor.admission.admit(name, make_room, by_owner=True)
    if shortfall is not None:
        await supervisor.admission.make_room(name, *shortfall)
    size, basis = attribute(mark, mark_now(), runner.spec.estimated_mb * MIB)
    runner.adopt(InProcess(obj, size, basis))
    state = await runner.start()
    if state is not ComponentState.READY:
        raise Refused(f"{name} did not become ready: {state.value}")
    log.info("loaded_in_process", component=name, attributed_mb=round(size / MIB, 1), attribution=basis)
