"""The process seam's contract (supervisor/procs/_contract.py) checked on every backend that
imports here: the Linux /proc backend and the portable psutil one (macOS's, run on Linux:
psutil answers the same questions here). Real processes, no fakes."""

from __future__ import annotations

import importlib
import inspect
import os
import signal
import socket
import subprocess
import sys
import types
from collections.abc import Iterator

import pytest

from supervisor.errors import NoSuchProcess
from supervisor.procs import _contract

from .helpers import wait_until
from .macfakes import ProcBackedMac

# _darwin runs here on its kernel-call seam answered from /proc (tests/macfakes.py).
BACKENDS = ["supervisor.procs._linux", "supervisor.procs._portable", "supervisor.procs._darwin"]


def _load(name: str) -> types.ModuleType:
    try:
        module = importlib.import_module(name)
    except ImportError as exc:  # e.g. the Linux backend on macOS
        pytest.skip(f"{name} does not import here: {exc}")
    if getattr(module, "usable", lambda: True)() is False:
        pytest.skip(f"{name} cannot serve this kernel")
    return module


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = _load(request.param)
    if module.__name__.endswith("_darwin"):
        if not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"):
            pytest.skip("the fake libproc answers from /proc's children files")
        monkeypatch.setattr(module, "CALLS", ProcBackedMac())
    return module


def contract_names() -> list[str]:
    return [
        name
        for name, value in vars(_contract).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == _contract.__name__
    ]


def test_every_name_of_the_contract_is_there_with_its_signature(backend: types.ModuleType) -> None:
    assert contract_names(), "the contract lists nothing"
    for name in contract_names():
        expected = getattr(_contract, name)
        actual = getattr(backend, name, None)
        assert actual is not None, f"{backend.__name__} lacks {name}"
        if inspect.isclass(expected):
            for method, stub in vars(expected).items():
                if callable(stub) and not method.startswith("_") or method == "__init__":
                    assert inspect.signature(getattr(actual, method)) == inspect.signature(stub), f"{name}.{method}"
        else:
            assert inspect.signature(actual) == inspect.signature(expected), name
    assert isinstance(backend.MAXRSS_UNIT, int) and backend.MAXRSS_UNIT in (1, 1024)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "IRONCLIW_COMPONENT": "probe"}
    code = "import time; print('ready', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"  # a whole interpreter, loaded
    yield proc
    proc.kill()
    proc.wait()
    proc.stdout.close()


def test_identity_liveness_and_state_of_real_processes(
    backend: types.ModuleType, sleeper: subprocess.Popen[bytes]
) -> None:
    ident = backend.identity(sleeper.pid)
    assert ident.pid == sleeper.pid and backend.is_alive(ident)
    assert backend.process_state(sleeper.pid) in ("S", "R")
    os.kill(sleeper.pid, signal.SIGSTOP)
    wait_until(lambda: backend.process_state(sleeper.pid) == "T", 5, what="the stop")
    os.kill(sleeper.pid, signal.SIGCONT)
    assert sleeper.pid in backend.children_of(os.getpid())
    assert sleeper.pid in backend.descendant_pids(os.getpid())
    members = backend.groups_members({sleeper.pid: ident.create_time})
    assert [m.pid for m in members[sleeper.pid]] == [sleeper.pid]
    assert backend.groups_members({sleeper.pid: ident.create_time + 60}) == {}  # a recycled group number
    wait_until(lambda: backend.component_of(sleeper.pid) == "probe", 5, what="the environment")
    sleeper.kill()
    sleeper.wait()
    assert not backend.is_alive(ident)
    with pytest.raises(NoSuchProcess) as gone:
        backend.identity(sleeper.pid)
    assert gone.value.pid == sleeper.pid
    with pytest.raises(NoSuchProcess):
        backend.process_state(sleeper.pid)
    assert backend.children_of(sleeper.pid) == [] and backend.descendant_pids(sleeper.pid) == []


def test_tree_memory_through_the_sampler(backend: types.ModuleType, sleeper: subprocess.Popen[bytes]) -> None:
    sampler = backend.TreeSampler(extra_roots=lambda leaders: {})
    try:
        usage = sampler.usage({"probe": sleeper.pid})
        assert usage["probe"].processes == 1 and usage["probe"].rss_bytes > 1 << 20
        assert sampler.members == {sleeper.pid: [sleeper.pid]} and sampler.walks >= 1
        assert sampler.orphans == {}
    finally:
        sampler.close()
    assert backend.own_rss_bytes() > 1 << 20
    hwm = backend.tree_hwm_bytes(sleeper.pid)
    assert hwm is None or hwm >= usage["probe"].rss_bytes


def test_process_control_answers(backend: types.ModuleType) -> None:
    prefix, preexec = backend.death_signal_launcher()
    assert isinstance(prefix, list) and (preexec is None or callable(preexec))
    base = backend.oom_score_base()
    assert base is None or -1000 <= base <= 1000
    assert isinstance(backend.is_subreaper(), bool)
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        uid = backend.peer_uid(left)
    assert uid in (os.getuid(), None)
    if backend.__name__.endswith("_linux"):
        assert uid == os.getuid()  # SO_PEERCRED


def test_the_facade_chose_one_backend() -> None:
    from supervisor import procs

    assert procs.BACKEND in ("linux", "darwin", "portable")
    chosen = _load(f"supervisor.procs._{procs.BACKEND}")
    assert procs.identity is chosen.identity and procs.TreeSampler is chosen.TreeSampler
    if sys.platform.startswith("linux"):
        assert procs.BACKEND == "linux"


def test_cpu_seconds_of_a_tree(backend: types.ModuleType) -> None:
    busy = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass\nprint('done', flush=True)\ntime.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert busy.stdout is not None and busy.stdout.readline() == b"done\n"
        used = backend.tree_cpu_seconds(busy.pid)
        assert used is not None and 0.5 <= used <= 5.0
        assert backend.tree_cpu_seconds(busy.pid, [busy.pid]) == pytest.approx(used, abs=0.05)
    finally:
        busy.kill()
        busy.wait()
        busy.stdout.close()  # type: ignore[union-attr]
    assert backend.tree_cpu_seconds(busy.pid) is None  # gone


def test_hot_file_bytes_count_only_what_is_touched_after_the_previous_call(backend: types.ModuleType) -> None:
    code = (
        "import mmap, sys, time\n"
        "f = open(sys.executable, 'rb')\n"
        "m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)\n"
        "print(sum(m[i] for i in range(0, len(m), 4096)), flush=True)\n"  # every page of the file, once
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        first = backend.tree_hot_file_bytes(proc.pid)
        if first is None:  # where the OS does not tell (psutil, macOS): the whole peak counts
            assert backend.__name__.endswith(("_portable", "_darwin"))
            return
        assert first > 0  # the interpreter and the file it read since it started
        again = backend.tree_hot_file_bytes(proc.pid)
        assert again is not None and again < first  # asleep since: little touched after the clear
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert backend.tree_hot_file_bytes(proc.pid) is None  # gone
