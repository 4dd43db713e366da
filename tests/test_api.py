"""The Python API with the seed's names, run as its users would: real processes, asyncio."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import psutil
import pytest

from supervisor import ComponentPriority, M1MemoryManager, MemoryState
from supervisor.client import ControlClient
from tests.helpers import HOG_CODE, REPO, SLEEPER_ARGV, wait_async

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_the_seed_usage_example() -> None:
    # As the README shows it.
    manager = M1MemoryManager(budget_mb=4096)
    manager.register_component(
        "chatbot",
        ComponentPriority.CRITICAL,
        40,
        command=["python", "-m", "components.chatbot"],
        cwd=str(REPO),
        ready={"log_pattern": '"event": "ready"'},
    )
    manager.register_component(
        "nlp_engine", ComponentPriority.HIGH, 180, command=SLEEPER_ARGV, ready={"log_pattern": "ready"}
    )
    changes = []

    async def on_change(snapshot):  # type: ignore[no-untyped-def]
        changes.append(snapshot.state)

    manager.add_state_callback(on_change)
    await manager.start_monitoring()
    try:
        ok, reason = await manager.can_load_component("nlp_engine")
        assert ok and "nlp_engine needs ~180 MB (its estimate, no history yet)" in reason
        assert await manager.load_component("chatbot")
        assert await manager.load_component("nlp_engine")
        snap = manager.snapshot()
        assert snap.state is MemoryState.HEALTHY
        assert sorted(snap.components_loaded) == ["chatbot", "nlp_engine"]
        assert 0 < snap.percent_used < 70 and snap.available_mb > 0
        assert await manager.unload_component("nlp_engine")
        assert manager.snapshot().components_loaded == ["chatbot"]

        # The same stack is visible from the CLI's control socket (a blocking client: off the loop).
        def status() -> list[str]:
            with ControlClient(manager.paths.socket) as client:
                return [c["name"] for c in client.call("status")["components"]]

        assert await asyncio.to_thread(status) == ["chatbot", "nlp_engine"]
    finally:
        await manager.stop_monitoring()
    assert all(c["pid"] is None for c in manager.components())


async def test_can_load_refuses_with_the_numbers() -> None:
    async with M1MemoryManager(budget_mb=200) as manager:
        manager.register_component("llm", ComponentPriority.HIGH, 500, command=SLEEPER_ARGV)
        ok, reason = await manager.can_load_component("llm")
        assert not ok
        assert (
            reason.startswith("llm needs ~500 MB (its estimate, no history yet), ")
            and "MB free before WARNING" in reason
        )


async def test_adopting_outside_processes_and_unloading_them_under_pressure() -> None:
    popen = subprocess.Popen(
        [sys.executable, "-c", HOG_CODE.format(mb=145)], stdout=subprocess.PIPE, start_new_session=True
    )
    loose = subprocess.Popen([sys.executable, "-c", HOG_CODE.format(mb=10)], stdout=subprocess.PIPE)  # same group as us
    try:
        assert popen.stdout is not None and popen.stdout.readline() == b"ready\n"
        assert loose.stdout is not None and loose.stdout.readline() == b"ready\n"
        states = []

        async def on_change(snapshot):  # type: ignore[no-untyped-def]
            states.append(snapshot.state)

        manager = M1MemoryManager(budget_mb=200, hold_s=0.2, recovery_hold_s=3600)
        manager.register_component("adopted_hog", ComponentPriority.LOW, 100, process=popen)
        manager.register_component("adopted_pid", ComponentPriority.MEDIUM, 10, pid=loose.pid)
        manager.add_state_callback(on_change)
        async with manager:
            rows = {c["name"]: c for c in manager.components()}
            await asyncio.sleep(0.3)
            assert rows["adopted_hog"]["pid"] == popen.pid
            # 145 MB + two Pythons of a 200 MB budget: CRITICAL (~88 %); the LOW hog goes, the rest stays.
            await wait_async(lambda: popen.poll() is not None, "the adopted hog to be unloaded")
            assert MemoryState.CRITICAL in states or MemoryState.EMERGENCY in states
            hog = {c["name"]: c for c in manager.components()}["adopted_hog"]
            assert hog["state"] == "STOPPED" and "unloaded by policy" in hog["last_exit"]
            assert loose.poll() is None  # MEDIUM, not growing: kept
            # An adopted process cannot be started again: it has no command.
            assert not await manager.load_component("adopted_hog")
            assert await manager.unload_component("adopted_pid")
            assert loose.wait(10) is not None
    finally:
        for p in (popen, loose):
            if p.poll() is None:
                p.kill()
            p.wait(10)
            p.stdout.close()  # type: ignore[union-attr]
    assert psutil.Process().is_running()  # the test runner's own group was never signalled
