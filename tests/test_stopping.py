"""The one stop path (stopping.stop_processes) on real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import anyio
import pytest

from supervisor import procs
from supervisor.model import ProcessIdentity
from supervisor.stopping import stop_processes

from .helpers import ProcessReaper

pytestmark = [pytest.mark.timeout(30), pytest.mark.anyio]

STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"
)
POLITE = "import time; print('ready', flush=True); time.sleep(600)"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs_started: list[subprocess.Popen[bytes]] = []
    yield procs_started
    for proc in procs_started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def start(
    code: str, reaper: ProcessReaper, started: list[subprocess.Popen[bytes]]
) -> tuple[subprocess.Popen[bytes], ProcessIdentity]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    started.append(proc)
    reaper.track(proc.pid)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    ident = procs.identity(proc.pid)
    assert ident is not None
    return proc, ident


async def reaped(proc: subprocess.Popen[bytes]) -> int:
    """Reap our child (stop_processes polls identities; only the parent can reap)."""
    with anyio.fail_after(10):
        while proc.poll() is None:
            await anyio.sleep(0.01)
    return proc.returncode


async def test_the_stop_signal_is_enough_for_a_polite_process_even_a_frozen_one(
    reaper: ProcessReaper, started: list[subprocess.Popen[bytes]]
) -> None:
    proc, ident = start(POLITE, reaper, started)
    os.kill(proc.pid, signal.SIGSTOP)
    async with anyio.create_task_group() as tg:
        tg.start_soon(reaped, proc)
        killed = await stop_processes([ident], signal.SIGTERM, grace_s=5, resume=True)
    assert killed == [] and proc.returncode == -signal.SIGTERM


async def test_what_ignores_the_stop_signal_gets_sigkill_after_the_grace(
    reaper: ProcessReaper, started: list[subprocess.Popen[bytes]]
) -> None:
    proc, ident = start(STUBBORN, reaper, started)
    began = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(reaped, proc)
        killed = await stop_processes([ident], signal.SIGTERM, grace_s=0.3)
    assert killed == [proc.pid] and proc.returncode == -signal.SIGKILL
    assert time.monotonic() - began >= 0.3


async def test_a_pid_that_names_another_process_now_is_not_signalled(
    reaper: ProcessReaper, started: list[subprocess.Popen[bytes]]
) -> None:
    proc, ident = start(POLITE, reaper, started)
    impostor = ProcessIdentity(ident.pid, ident.create_time - 100)  # the recorded process, long gone
    killed = await stop_processes([impostor], signal.SIGTERM, grace_s=0.2)
    assert killed == [] and proc.poll() is None  # the live process with that PID was left alone
