"""The sampler's thread (sampler.py) on real processes: it reads on its own, wakes the loop
only when asked to or when a reading is worth it, answers `read_now` with a newer reading,
survives a failing read, and ends on `close`."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import anyio
import pytest

from supervisor.config import MemorySection, parse_config
from supervisor.model import SystemMemory
from supervisor.platform import SystemReader
from supervisor.sampler import Sampler

from .helpers import ProcessReaper, wait_until

pytestmark = [pytest.mark.timeout(30), pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def memory_config() -> MemorySection:
    return parse_config("[memory]\nsample_interval_s = 0.05\n", "t.toml").memory


@pytest.fixture
def sleeper(reaper: ProcessReaper) -> Iterator[int]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    reaper.track(proc.pid)
    yield proc.pid
    proc.kill()
    proc.wait()


async def woken(sampler: Sampler, within: float) -> bool:
    """Whether `await sampler.wait()` (the loop's wait) returns within `within` seconds."""
    with anyio.move_on_after(within):
        await sampler.wait()
        return True
    return False


async def test_a_quiet_stack_is_read_on_schedule_without_waking_the_loop(sleeper: int) -> None:
    sampler = Sampler(memory_config())
    sampler.roots = {"s": sleeper}
    sampler.start()
    try:
        assert await woken(sampler, 5)  # wanted: every reading (the default)
        first = sampler.take()
        assert first and first[-1].usage["s"].processes == 1 and first[-1].usage["s"].rss_bytes > 0
        sampler.configure(0.05, every_reading=False)
        await anyio.sleep(0.2)  # a reading handed over before the switch may still be under way
        await woken(sampler, 0.01)
        sampler.take()
        assert not await woken(sampler, 0.6)  # ~12 quiet readings, none worth a loop wake-up
        queued = sampler.take()
        assert len(queued) >= 5
        assert all(a.time < b.time for a, b in zip(queued, queued[1:], strict=False))
    finally:
        sampler.close()


async def test_read_now_answers_with_a_reading_taken_after_the_call(sleeper: int) -> None:
    sampler = Sampler(memory_config())
    sampler.roots = {"s": sleeper}
    sampler.configure(30.0, every_reading=False)  # its own schedule would not read again for 30 s
    sampler.start()
    try:
        wait_until(lambda: sampler.readings_taken >= 1, what="the first reading")
        sampler.take()
        for _ in range(3):
            asked_at = time.monotonic()
            sampler.read_now()
            got = sampler.take()
            assert got and got[-1].time >= asked_at and got[-1].roots == {"s": sleeper}
        assert sampler.readings_asked == 3 and sampler.readings_taken == 4
    finally:
        sampler.close()


async def test_a_nudge_reads_the_new_roots_soon_and_wakes_the_loop(sleeper: int) -> None:
    sampler = Sampler(memory_config())
    sampler.configure(30.0, every_reading=False)
    sampler.start()
    try:
        wait_until(lambda: sampler.readings_taken >= 1, what="the first reading")
        await woken(sampler, 0.2)
        sampler.take()
        sampler.roots = {"s": sleeper}  # what the loop does when a component starts
        sampler.nudge()
        assert await woken(sampler, 5)
        assert sampler.take()[-1].usage["s"].processes == 1
    finally:
        sampler.close()


class FailsOnce:
    """The system reader with one planted I/O error."""

    def __init__(self) -> None:
        self.real = SystemReader()
        self.calls = 0

    def read(self) -> SystemMemory:
        self.calls += 1
        if self.calls == 2:
            raise OSError(5, "Input/output error")
        return self.real.read()

    def close(self) -> None:
        self.real.close()


async def test_a_failing_read_is_reported_to_the_asker_and_the_thread_goes_on(sleeper: int) -> None:
    sampler = Sampler(memory_config(), system=FailsOnce())
    sampler.roots = {"s": sleeper}
    sampler.configure(30.0, every_reading=False)
    sampler.start()
    try:
        wait_until(lambda: sampler.readings_taken >= 1, what="the first reading")
        with pytest.raises(OSError, match="Input/output error"):
            sampler.read_now()
        assert sampler.running
        sampler.read_now()  # the same thread answers the next request
        assert sampler.take()[-1].roots == {"s": sleeper}
    finally:
        sampler.close()


async def test_close_ends_the_thread_and_later_reads_happen_inline(sleeper: int) -> None:
    sampler = Sampler(memory_config())
    sampler.roots = {"s": sleeper}
    sampler.start()
    assert sampler.running
    sampler.close()
    assert not sampler.running
    sampler.read_now()  # nobody else reads now: the caller does
    assert sampler.take()[-1].usage["s"].processes == 1
    sampler.close()


async def test_requests_do_not_push_the_schedule_back(sleeper: int) -> None:
    sampler = Sampler(memory_config())
    sampler.roots = {"s": sleeper}
    sampler.configure(0.2, every_reading=False)
    sampler.start()
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # a client polling status 20 times a second
            sampler.read_now()
            sampler.take()
            time.sleep(0.05)
        scheduled = sampler.readings_taken - sampler.readings_asked
        assert scheduled >= 4, (sampler.readings_taken, sampler.readings_asked)  # one every 0.2 s, as if alone
    finally:
        sampler.close()


class Blocks:
    """A system reader stuck in a read (as a /proc read is while its process holds its mmap
    lock) until released."""

    def __init__(self) -> None:
        import threading

        self.real = SystemReader()
        self.released = threading.Event()

    def read(self) -> SystemMemory:
        self.released.wait(30)
        return self.real.read()

    def close(self) -> None:
        self.released.set()
        self.real.close()


async def test_a_stuck_reading_costs_the_asker_one_wait_then_none(sleeper: int) -> None:
    from supervisor.errors import SamplerStuck

    source = Blocks()
    sampler = Sampler(memory_config(), system=source)
    sampler.roots = {"s": sleeper}
    sampler.start()  # its first reading is stuck at once
    try:
        began = time.monotonic()
        with pytest.raises(SamplerStuck, match="within"):
            sampler.read_now()
        assert 0.9 <= time.monotonic() - began < 5
        began = time.monotonic()
        with pytest.raises(SamplerStuck, match="still stuck"):
            sampler.read_now()  # no second wait while the first request is unanswered
        assert time.monotonic() - began < 0.1
        source.released.set()
        wait_until(lambda: sampler.readings_taken >= 2, what="the stuck reading and the asked one")
        sampler.take()
        sampler.read_now()  # answered again
        assert sampler.take()[-1].roots == {"s": sleeper}
    finally:
        sampler.close()
