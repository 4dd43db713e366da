"""The one owner of the memory readers: a permanent thread that reads every tree and the
system, and wakes the event loop only when the loop needs the reading.

    thread:  every `interval`: read -> queue -> wake the loop if wanted (see below)
    loop:    await wait() -> take() -> classify, record, decide, act -> configure(interval, ...)

The thread wakes the loop for every reading while the loop says it wants them all
(`every_reading`: pressure, something frozen, a component that just changed, a memory
subscriber); otherwise only for a reading `attention.worth_a_look` flags, for a change in a
tree's membership, when asked, and at least every HANDOFF_S, so that an idle stack costs a
thread wake-up every interval and a loop wake-up a minute. Nothing is dropped: the loop
takes every queued reading in, in order.

Only this thread touches the /proc files (procs.TreeSampler, platform.SystemReader); the
loop talks to it through plain attributes it replaces whole (`roots`, `interval`,
`every_reading`), a deque, and `read_now()`, which blocks the loop until the thread has
taken a reading newer than the call (a status request, the enforcer's re-check). Before
`start()` and after `close()` the caller's thread reads itself: there is no other reader.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping
from typing import NamedTuple, Protocol

import anyio
import structlog

from . import platform, procs
from .attention import worth_a_look
from .config import MemorySection
from .errors import SamplerStuck
from .model import MIB, SystemMemory, TreeUsage
from .offloop import OffLoop

log = structlog.get_logger("ironcliw.sampler")

HANDOFF_S = 60.0  # a quiet stack's readings reach the loop at least this often
NUDGE_SPACING_S = 0.1  # the least time between two readings asked for by nudges (a `stop all` burst)
# A reading takes milliseconds; longer means the thread is stuck (a /proc read blocks while
# its process holds its mmap lock, e.g. in a page fault under pressure). The caller (the
# event loop) waits this long once, then not at all until the thread answers again.
READ_NOW_TIMEOUT_S = 1.0
JOIN_TIMEOUT_S = 10.0
FAILED_READ_PAUSE_S = 1.0


class Reading(NamedTuple):
    """One reading of the trees and the system, before it is classified."""

    time: float
    usage: dict[str, TreeUsage]
    system: SystemMemory
    stack: int  # bytes, every tree
    percent: float  # used %, against the budget when there is one
    roots: Mapping[str, int]  # the PID each tree was read from
    members: Mapping[int, list[int]]  # root -> PIDs of its tree at the newest walk
    orphans: Mapping[str, list[int]]  # component ("" unknown) -> orphans found at the newest walk
    walks: int  # how many walks the trees have had (a new one: membership may have changed)


class _Wake:
    """A one-shot wake-up across threads: `threading.Event` without its Python layers.

    Event.wait runs a Condition's Python code on every timeout; here the wait is one C call
    (a lock acquired with a timeout), which matters when it runs every 2 s on a cold cache.
    The lock is held while "clear"; `set` releases it, and a wait that gets it is woken.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def set(self) -> None:
        try:
            self._lock.release()
        except RuntimeError:
            pass  # already set

    def clear(self) -> None:
        self._lock.acquire(blocking=False)

    def wait(self, timeout: float) -> bool:
        """True if set (it stays set), False after `timeout` seconds."""
        if self._lock.acquire(timeout=max(0.0, timeout)):
            self._lock.release()
            return True
        return False


class SystemSource(Protocol):
    def read(self) -> SystemMemory: ...
    def close(self) -> None: ...


class Sampler:
    def __init__(
        self,
        cfg: MemorySection,
        extra_roots: Callable[[Collection[int]], dict[str, list[int]]] | None = None,
        system: SystemSource | None = None,
    ) -> None:
        self.cfg = cfg
        self.roots: Mapping[str, int] = {}  # name -> leader PID; replaced whole by the loop
        # In-process components (inprocess.py): name -> (our PID, its attributed bytes now); no
        # tree to read, each reading carries the figure. Replaced whole by the loop, like `roots`.
        self.in_process: Mapping[str, tuple[int, Callable[[], int]]] = {}
        self.interval = cfg.sample_interval_s
        self.off_loop = OffLoop()  # conditions the loop waits for, looked at after each reading
        self.every_reading = True
        self.readings_taken = 0  # every reading ...
        self.readings_asked = 0  # ... of which read_now asked for these
        self.last_read_s = 0.0  # how long the newest reading took
        self._trees = procs.TreeSampler(extra_roots=extra_roots)
        self._system = system if system is not None else platform.SystemReader()
        self._queue: deque[Reading] = deque()
        self._wake = _Wake()
        self._asked = 0  # read_now calls so far (the loop's count) ...
        self._answered = 0  # ... and the newest one the thread has answered
        self._answer_cond = threading.Condition()
        self._failure: Exception | None = None
        self._nudged = False
        self._closed = False
        self._thread: threading.Thread | None = None
        # The thread's wake-up call to the loop: a byte on a socket pair (non-blocking: a
        # wake-up already pending is enough), which any event loop can wait on.
        self._wakeup_r: socket.socket | None = None
        self._wakeup_w: socket.socket | None = None

    # --- the loop's side -----------------------------------------------------------------

    def start(self) -> None:
        if self._wakeup_r is None:
            self._wakeup_r, self._wakeup_w = socket.socketpair()
            self._wakeup_r.setblocking(False)
            self._wakeup_w.setblocking(False)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ironcliw-sampler", daemon=True)
            self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    async def wait(self) -> None:
        """Until the thread has handed readings over (or was asked to)."""
        wakeup = self._wakeup_r
        if wakeup is None:
            raise RuntimeError("Sampler.wait() before start()")
        await anyio.wait_readable(wakeup)
        try:
            while wakeup.recv(4096):
                pass
        except BlockingIOError:
            pass

    def take(self) -> list[Reading]:
        """Every reading queued since the last take, oldest first."""
        queue, out = self._queue, []
        while queue:
            out.append(queue.popleft())
        return out

    def configure(self, interval: float, every_reading: bool) -> None:
        shorter = interval < self.interval
        self.interval, self.every_reading = interval, every_reading
        if shorter:  # the thread may be sleeping out the longer interval: let it re-time
            self._wake.set()

    def set_tree(self, name: str, pid: int | None, in_process_bytes: Callable[[], int] | None = None) -> None:
        """Read `name`'s tree from `pid` from now on (None: no more). O(1) in Python per change
        (a dict copy in C): a `stop all` of N components makes 3N changes. An in-process
        component (`in_process_bytes`, its attributed memory) is no tree (the tree below our
        own PID is the whole stack): each reading carries its figure instead. Both maps are
        replaced whole: the sampler's thread reads them without a lock."""
        held = self.in_process
        if pid is not None and in_process_bytes is not None:
            self.in_process = {**held, name: (pid, in_process_bytes)}
            pid = None
        elif name in held:
            self.in_process = {n: v for n, v in held.items() if n != name}
        if self.roots.get(name) != pid:
            new = dict(self.roots)
            if pid is None:
                del new[name]
            else:
                new[name] = pid
            self.roots = new

    def nudge(self) -> None:
        """Read soon (at most one reading per NUDGE_SPACING_S of a burst) and hand it over."""
        self._nudged = True
        self._wake.set()

    def read_now(self) -> None:
        """Block until a reading taken after this call is queued (then `take()` it). Raises
        SamplerStuck if the thread does not answer, or what the reading raised."""
        self.readings_asked += 1
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._queue.append(self._read())  # no thread: this caller is the one reader
            return
        with self._answer_cond:
            if self._asked != self._answered:  # the last request is still unanswered: stuck
                raise SamplerStuck(0.0)
            self._asked += 1
            asked = self._asked
        self._wake.set()
        with self._answer_cond:
            if not self._answer_cond.wait_for(lambda: self._answered >= asked, READ_NOW_TIMEOUT_S):
                raise SamplerStuck(READ_NOW_TIMEOUT_S)
            failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def close(self) -> None:
        """End the thread (after its current reading) and close the readers."""
        self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(JOIN_TIMEOUT_S)
            self._thread = None
        self._trees.close()
        self._system.close()
        for sock in (self._wakeup_r, self._wakeup_w):
            if sock is not None:
                sock.close()
        self._wakeup_r = self._wakeup_w = None

    def revive(self) -> bool:
        """Start a new thread if the old one died (a bug); False if it lives (then it is stuck
        in a read, and nothing but the kernel can end that)."""
        if self._thread is not None and self._thread.is_alive():
            return False
        log.error("sampler_restarted")
        self._thread = None
        self.start()
        return True

    # --- the thread ----------------------------------------------------------------------

    def _read(self) -> Reading:
        roots = self.roots  # one consistent dict: the loop replaces it, never edits it
        now = time.monotonic()
        usage = self._trees.usage(roots)
        held = self.in_process
        if held:
            usage.update({name: TreeUsage(rss_bytes=size(), processes=0) for name, (_, size) in held.items()})
            roots = {**roots, **{name: pid for name, (pid, _) in held.items()}}
        system = self._system.read()
        self.last_read_s = time.monotonic() - now
        stack = sum(t.memory_bytes for t in usage.values())
        percent = system.used_percent
        if self.cfg.budget_mb:
            percent = max(percent, 100.0 * stack / (self.cfg.budget_mb * MIB))
        trees = self._trees
        self.readings_taken += 1
        return Reading(now, usage, system, stack, percent, roots, trees.members, trees.orphans, trees.walks)

    def _run(self) -> None:
        # The schedule is the sampler's own: readings asked for (status, re-checks) or nudged
        # (a component changed) come on top and do not push the next scheduled one back.
        scheduled_read = nudged_read = float("-inf")
        handoff_at = time.monotonic() + HANDOFF_S
        handed_members: Mapping[int, list[int]] | None = None
        while True:
            if self._asked == self._answered and not self._nudged:
                self._wake.wait(scheduled_read + self.interval - time.monotonic())
                self._wake.clear()  # before the flags are read: a later set is not lost
            if self._closed:
                break
            asked, nudged = self._asked, self._nudged
            on_request = asked != self._answered or nudged
            if not on_request and time.monotonic() < scheduled_read + self.interval:
                continue  # woken to re-time (a shorter interval)
            if nudged and asked == self._answered:  # a burst of changes: one reading per spacing
                time.sleep(max(0.0, nudged_read + NUDGE_SPACING_S - time.monotonic()))
                nudged_read = time.monotonic()
            self._nudged = False
            self.off_loop.poll()  # (it never raises: a condition that does counts as holding)
            try:
                reading = self._read()
            except Exception as exc:  # a bug or an OS surprise must not end the sampling
                log.exception("sample_failed")
                self._answer(asked, exc)
                self._wake.wait(FAILED_READ_PAUSE_S)
                continue
            if not on_request:
                scheduled_read = reading.time
            self._queue.append(reading)
            moved = reading.members is not handed_members and reading.members != handed_members
            if (
                asked != self._answered
                or nudged
                or self.every_reading
                or moved
                or reading.time >= handoff_at
                or worth_a_look(reading.percent, reading.system, reading.stack, self.cfg, self.interval)
            ):
                handoff_at = reading.time + HANDOFF_S
                handed_members = reading.members
                self._wake_loop()
            self._answer(asked, None)

    def _answer(self, asked: int, failure: Exception | None) -> None:
        if asked == self._answered:
            return
        with self._answer_cond:
            self._failure = failure
            self._answered = asked
            self._answer_cond.notify_all()

    def _wake_loop(self) -> None:
        try:
            if self._wakeup_w is not None:
                self._wakeup_w.send(b"\0")
        except OSError:
            pass  # a wake-up is pending already (or the loop is gone)
