"""The process-table layer on real processes: identities (checked against psutil), the tree
walk through kept /proc descriptors, and what happens to those descriptors as processes
come and go."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

from supervisor import procs
from supervisor.errors import NoSuchProcess
from tests.helpers import wait_until

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the /proc walk is Linux's"),
]

# A parent that forks one child from its main thread and one from a worker thread (which the
# kernel lists only under that thread's own children file), then prints their PIDs.
FAMILY = """
import os, subprocess, sys, threading, time
main_child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
holder = {}
def spawn():
    holder["p"] = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    time.sleep(60)   # the thread stays alive, so its child stays listed under it
t = threading.Thread(target=spawn, daemon=True); t.start()
while "p" not in holder: time.sleep(0.01)
print(main_child.pid, holder["p"].pid, flush=True)
main_child.wait()   # reaped at once when a test kills it
time.sleep(60)
"""


@pytest.fixture
def family() -> tuple[subprocess.Popen[str], list[int]]:
    proc = subprocess.Popen([sys.executable, "-c", FAMILY], stdout=subprocess.PIPE, text=True)
    try:
        kids = [int(x) for x in proc.stdout.readline().split()]  # type: ignore[union-attr]
        yield proc, kids
    finally:
        for pid in [proc.pid, *kids]:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]


def test_identity_agrees_with_psutil_and_tells_a_live_process_from_a_gone_one() -> None:
    ident = procs.identity(os.getpid())
    assert ident is not None and ident.create_time == psutil.Process().create_time()
    assert procs.is_alive(ident)
    short = subprocess.Popen([sys.executable, "-c", "pass"])
    short_ident = procs.identity(short.pid)
    short.wait()
    assert short_ident is not None and not procs.is_alive(short_ident)
    assert not procs.signal_identity(short_ident, 0)


def test_tree_includes_children_forked_from_worker_threads(family: tuple[subprocess.Popen[str], list[int]]) -> None:
    parent, kids = family
    expected = sum(psutil.Process(p).memory_info().rss for p in [parent.pid, *kids])
    sampler = procs.TreeSampler()
    try:
        usage = sampler.usage({"family": parent.pid})["family"]
    finally:
        sampler.close()
    assert usage.processes == 3
    assert abs(usage.rss_bytes - expected) < 0.1 * expected  # the same pages, read a moment apart
    assert 0 < usage.anon_bytes < usage.rss_bytes
    assert sorted(procs.tree_pids(parent.pid)) == sorted([parent.pid, *kids])


def test_kept_descriptors_follow_processes_as_they_come_and_go(family: tuple[subprocess.Popen[str], list[int]]) -> None:
    parent, kids = family
    baseline = len(os.listdir("/proc/self/fd"))
    sampler = procs.TreeSampler()
    try:
        first = sampler.usage({"family": parent.pid})["family"]
        kept = len(os.listdir("/proc/self/fd"))
        # three files per process, the parent's two threads' children lists, /proc/loadavg
        assert first.processes == 3 and kept == baseline + 3 * 3 + 2 + 1  # and /proc/loadavg
        assert sampler.usage({"family": parent.pid})["family"].processes == 3
        assert len(os.listdir("/proc/self/fd")) == kept  # a second sample opens nothing new
        os.kill(kids[0], 9)
        wait_until(
            lambda: sampler.usage({"family": parent.pid})["family"].processes == 2,
            10,
            what="the child to leave the tree",
        )
        assert len(os.listdir("/proc/self/fd")) == kept - 3  # its three files were closed
    finally:
        sampler.close()
    assert len(os.listdir("/proc/self/fd")) == baseline


def test_a_gone_root_reads_as_an_empty_tree_and_a_cap_of_zero_keeps_nothing() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    before = len(os.listdir("/proc/self/fd"))
    sampler = procs.TreeSampler(max_kept=0)
    usage = sampler.usage({"gone": gone.pid, "me": os.getpid()})
    assert usage["gone"].processes == 0 and usage["gone"].rss_bytes == 0
    assert usage["me"].processes >= 1
    assert len(os.listdir("/proc/self/fd")) == before


def test_process_state_sees_a_stop_take_effect() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        os.kill(child.pid, 19)  # SIGSTOP
        wait_until(lambda: procs.process_state(child.pid) == "T", 5, what="the stop")
        os.kill(child.pid, 18)  # SIGCONT
        wait_until(lambda: procs.process_state(child.pid) in ("S", "R"), 5, what="the continue")
    finally:
        child.kill()
        child.wait()
    with pytest.raises(NoSuchProcess) as gone:
        procs.process_state(child.pid)
    assert gone.value.pid == child.pid
    with pytest.raises(NoSuchProcess):
        procs.identity(child.pid)
    assert procs.find_state(child.pid) is None and procs.find_identity(child.pid) is None


def test_a_new_process_moves_the_pid_counter_and_is_walked_into_the_tree() -> None:
    script = (
        "import subprocess, sys, time\ninput()\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); print(flush=True); time.sleep(60)"
    )
    sampler = procs.TreeSampler()
    with subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as parent:
        try:
            assert sampler.usage({"p": parent.pid})["p"].processes == 1
            parent.stdin.write("\n")  # type: ignore[union-attr]
            parent.stdin.flush()  # type: ignore[union-attr]
            parent.stdout.readline()  # type: ignore[union-attr]  # forked by now
            walks = sampler.walks
            assert sampler.usage({"p": parent.pid})["p"].processes == 2
            assert sampler.walks == walks + 1
        finally:
            sampler.close()
            for pid in procs.tree_pids(parent.pid)[::-1]:
                os.kill(pid, 9)


def test_while_the_pid_counter_stands_still_members_are_reread_until_one_exits(
    family: tuple[subprocess.Popen[str], list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    parent, kids = family
    # A still counter, as on a quiet machine: this test's own processes must not move it.
    monkeypatch.setattr(procs.TreeSampler, "_pid_counter", lambda self: b"4242")
    sampler = procs.TreeSampler()
    try:
        first = sampler.usage({"family": parent.pid})["family"]
        again = sampler.usage({"family": parent.pid})["family"]
        assert sampler.walks == 1 and again.processes == first.processes == 3
        assert abs(again.rss_bytes - first.rss_bytes) < 0.1 * first.rss_bytes
        # The worker thread's child is never waited for: it stays a zombie, which reads as
        # empty, and is left out of the walk that follows.
        os.kill(kids[1], 9)
        wait_until(lambda: procs.process_state(kids[1]) == "Z", 10, what="the zombie")
        assert sampler.usage({"family": parent.pid})["family"].processes == 2
        assert sampler.walks == 2
        assert sampler.usage({"family": parent.pid})["family"].processes == 2 and sampler.walks == 2
        # The main thread's child is reaped at once: its statm fails.
        os.kill(kids[0], 9)
        wait_until(lambda: procs.find_state(kids[0]) is None, 10, what="the reaping")
        assert sampler.usage({"family": parent.pid})["family"].processes == 1
        assert sampler.walks == 3
        # Another set of roots is walked, whatever the counter says.
        sampler.usage({"family": parent.pid, "me": os.getpid()})
        assert sampler.walks == 4
    finally:
        sampler.close()
