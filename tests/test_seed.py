"""The seed's Python usage, run verbatim, and in-process components (an object loaded into the
caller's own process: supervisor/inprocess.py) measured, trimmed and unloaded for real."""

from __future__ import annotations

import asyncio
import re
import textwrap
from typing import Any

import pytest

from supervisor import ComponentPriority, M1MemoryManager, MemoryState
from tests.helpers import REPO, wait_async

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]

MB = 1 << 20


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class NLPEngine:
    """An in-process engine: 40 MB of model, touched (so the pages are resident), and the
    methods the manager calls when it exists."""

    def __init__(self, mb: int = 40) -> None:
        self.model: bytes | None = b"m" * (mb * MB)
        self.cache: bytes | None = b"c" * (mb // 2 * MB)
        self.unloaded = False

    def trim(self) -> None:
        self.cache = None

    def unload(self) -> None:
        self.model = self.cache = None
        self.unloaded = True


async def test_the_seeds_python_usage_runs_verbatim() -> None:
    alerts: list[Any] = []

    async def memory_alert_handler(snapshot: Any) -> None:
        alerts.append(snapshot)

    async def seed() -> tuple[Any, ...]:
        # --- the seed's lines, as written ---------------------------------------------------
        memory_manager = M1MemoryManager()
        memory_manager.register_component("chatbot", ComponentPriority.CRITICAL, 100)
        memory_manager.register_component("nlp_engine", ComponentPriority.HIGH, 1500)
        memory_manager.register_component("voice_engine", ComponentPriority.MEDIUM, 2000)
        await memory_manager.start_monitoring()
        can_load, reason = await memory_manager.can_load_component("nlp_engine")
        if can_load:
            nlp = NLPEngine()
            success = await memory_manager.load_component("nlp_engine", nlp)
        memory_manager.add_state_callback(memory_alert_handler)
        # -------------------------------------------------------------------------------------
        return memory_manager, can_load, reason, nlp, success

    manager, can_load, reason, nlp, success = await seed()
    try:
        assert can_load, reason  # 1.5 GB fits below WARNING on any machine these tests run on
        assert success
        rows = {c["name"]: c for c in manager.supervisor.report()["components"]}
        nlp_row = rows["nlp_engine"]
        assert nlp_row["state"] == "READY" and nlp_row["in_process"]
        # Charged with the process's growth across the load: ~60 MB, not the 1500 MB estimate.
        assert nlp_row["attribution"] == "growth" and 50 <= nlp_row["rss_mb"] <= 120, nlp_row
        assert rows["chatbot"]["state"] == "STOPPED" and rows["chatbot"]["attribution"] == "process tree"
        # Added after start_monitoring: called once at once with the current snapshot.
        await wait_async(lambda: alerts, "the handler's first call")
        assert alerts[0].state is MemoryState.HEALTHY and "nlp_engine" in alerts[0].components_loaded
        explained = {c["name"]: c for c in manager.supervisor.explain()["candidates"]}
        assert explained["nlp_engine"]["can_freeze"] is False and "cannot be frozen" in explained["nlp_engine"]["note"]
        # A second positional argument is the object, never a flag.
        with pytest.raises(TypeError, match="keyword-only"):
            await manager.load_component("voice_engine", True)
        assert not await manager.load_component("voice_engine")  # in-process: needs its object
        assert await manager.unload_component("nlp_engine")
        assert nlp.unloaded and manager.supervisor.runner("nlp_engine").child is None
        assert "came back" in {c["name"]: c for c in manager.components()}["nlp_engine"]["last_exit"]
    finally:
        await manager.stop_monitoring()


class Cache:
    def __init__(self, mb: int) -> None:
        self.data: bytes | None = b"d" * (mb * MB)
        self.closed = False

    def close(self) -> None:
        self.data = None
        self.closed = True


async def test_in_process_components_are_trimmed_and_unloaded_never_frozen() -> None:
    # A 200 MB budget: a 60 MB HIGH engine that can trim a third of itself, then a 115 MB LOW
    # cache that cannot. Together 87.5 %, CRITICAL: the engine is asked to trim, the cache is
    # unloaded (not frozen: SIGSTOP would stop this very process) and does not come back.
    async with M1MemoryManager(budget_mb=200, hold_s=0.2, trim_settle_s=0.3, recovery_hold_s=3600) as manager:
        manager.register_component("engine", ComponentPriority.HIGH, 10)
        manager.register_component("cache", ComponentPriority.LOW, 10)
        await manager.can_load_component("engine")
        engine = NLPEngine(mb=40)  # 40 MB model + 20 MB cache
        assert await manager.load_component("engine", engine)
        await manager.can_load_component("cache")
        assert await manager.load_component("cache", Cache(115), make_room=False)
        runner = manager.supervisor.runner("cache")
        await wait_async(lambda: runner.child is None, "the LOW cache to be unloaded", timeout=30)
        assert "unloaded by policy" in (runner.last_exit or "")
        await wait_async(lambda: engine.cache is None, "the engine to be asked to trim", timeout=30)
        assert engine.model is not None  # trimmed, kept: HIGH
        actions = [(a["kind"], a["component"]) for a in manager.supervisor.memory.enforcer.recent]
        assert ("UNLOAD", "cache") in actions and ("TRIM", "engine") in actions
        assert not any(kind == "FREEZE" for kind, _ in actions)
        engine_row = {c["name"]: c for c in manager.supervisor.report()["components"]}["engine"]
        assert engine_row["rss_mb"] < 50  # the trim's 20 MB came off its charge
        assert manager.supervisor.runner("engine").child is not None


async def test_a_config_names_the_command_and_the_call_overrides_priority_and_estimate(tmp_path: Any) -> None:
    config = tmp_path / "stack.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [memory]
            budget_mb = 4096
            [components.worker]
            command = ["python", "-c", "import time; print('ready', flush=True); time.sleep(60)"]
            cwd = "{REPO}"
            priority = "LOW"
            estimated_mb = 30
            ready = {{ log_pattern = "^ready" }}
            """
        )
    )
    async with M1MemoryManager(config=str(config)) as manager:
        assert manager.supervisor.config.memory.budget_mb == 4096
        assert manager.components() == []  # the config's components are a catalogue
        manager.register_component("worker", ComponentPriority.HIGH, 50)
        spec = manager.supervisor.runner("worker").spec
        assert (spec.priority, spec.estimated_mb, spec.command[0]) == (ComponentPriority.HIGH, 50, "python")
        assert await manager.load_component("worker")
        row = {c["name"]: c for c in manager.components()}["worker"]
        assert row["state"] == "READY" and row["pid"] is not None


async def test_the_readmes_python_section_runs_verbatim(capsys: pytest.CaptureFixture[str]) -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Python API") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    source = code.group(1).replace("asyncio.run(main())", "")
    namespace: dict[str, Any] = {}
    exec(compile(source, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    await asyncio.wait_for(namespace["main"](), 60)
    printed = capsys.readouterr().out
    assert "memory is now MemoryState.HEALTHY" in printed and "nlp_engine loaded: True" in printed


def test_attribution_rule() -> None:
    from supervisor.inprocess import LoadMark, attribute

    before = LoadMark(time=1.0, rss_bytes=100 * MB, traced_bytes=10 * MB)
    grown = LoadMark(time=2.0, rss_bytes=160 * MB, traced_bytes=70 * MB)
    assert attribute(before, grown, 5 * MB) == (60 * MB, "growth")
    # RSS did not move (the allocator reused freed pages) but tracing saw 40 MB allocated
    reused = LoadMark(time=2.0, rss_bytes=100 * MB, traced_bytes=50 * MB)
    assert attribute(before, reused, 5 * MB) == (40 * MB, "tracemalloc")
    untraced = LoadMark(time=1.0, rss_bytes=100 * MB, traced_bytes=None)
    assert attribute(untraced, LoadMark(time=2.0, rss_bytes=100 * MB, traced_bytes=None), 5 * MB) == (
        5 * MB,
        "estimate",
    )
    assert attribute(None, grown, 5 * MB) == (5 * MB, "estimate")  # no can_load_component first: no span to measure
