"""The process seam on Linux: /proc for identity, trees and memory, prctl for the parent-death
signal and the subreaper, pidfds for our children's exits (see _contract.py for the contract).

Tree memory is measured by walking down from our own children, not by scanning the whole
system: each process lists its children in /proc/PID/task/TID/children and its resident size
in /proc/PID/statm, which costs microseconds per process (bench/bench_sampling.py measures it),
and `TreeSampler` keeps those files open between samples. Nothing here imports psutil (it
would be 1 MB of the supervisor's RSS for nothing).

Needs CONFIG_PROC_CHILDREN (the children files, Linux 3.5+); the facade falls back to the
portable backend on a kernel without them.
"""

from __future__ import annotations

import ctypes
import os
import resource
import shutil
import signal
import socket
import struct
from collections.abc import Callable, Collection, Iterable, Mapping
from itertools import repeat

from ..errors import AccessDenied, NoSuchProcess
from ..model import ProcessIdentity, TreeUsage
from ._contract import ExtraRoots

MAXRSS_UNIT = 1024  # ru_maxrss is in KiB

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37
_libc = ctypes.CDLL(None, use_errno=True)
_COMPONENT_VAR = b"IRONCLIW_COMPONENT="


def usable() -> bool:
    """Whether this kernel lists children in /proc (CONFIG_PROC_CHILDREN)."""
    return os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


_boot_time: float | None = None


def _btime() -> float:
    """Boot time in Unix seconds (/proc/stat `btime`), read once."""
    global _boot_time
    if _boot_time is None:
        with open("/proc/stat", "rb") as f:
            _boot_time = next(float(line.split()[1]) for line in f if line.startswith(b"btime"))
    return _boot_time


def _stat_fields(pid: int) -> list[bytes] | None:
    """/proc/PID/stat after the command name (state first), or None if the process is gone.

    The name (field 2) may hold spaces and parentheses: split after the last ')'."""
    data = _read_small(f"/proc/{pid}/stat")
    if not data:
        return None
    return data[data.rindex(b")") + 2 :].split()


def _linux_identity(pid: int) -> tuple[ProcessIdentity, bytes] | None:
    fields = _stat_fields(pid)
    if fields is None:
        return None
    # psutil's formula (start ticks / CLK_TCK + btime), so identities recorded by either agree.
    return ProcessIdentity(pid, int(fields[19]) / _CLOCK_TICKS + _btime()), fields[0]


def identity(pid: int) -> ProcessIdentity:
    found = _linux_identity(pid)
    if found is None:
        if os.path.exists(f"/proc/{pid}"):  # there, but its stat unreadable: hidepid
            raise AccessDenied(pid)
        raise NoSuchProcess(pid)
    return found[0]


def is_alive(ident: ProcessIdentity) -> bool:
    found = _linux_identity(ident.pid)
    return found is not None and found[0] == ident and found[1] != b"Z"


def groups_members(groups: Mapping[int, float]) -> dict[int, list[ProcessIdentity]]:
    """Live processes of each group {pgid: not_before}, created no earlier than `not_before`,
    in one pass over the process table."""
    found: dict[int, list[ProcessIdentity]] = {}
    for pid, pgid, created, state in _all_processes_in_groups(groups):
        if state != "Z" and created >= groups[pgid] - 0.01:
            found.setdefault(pgid, []).append(ProcessIdentity(pid, created))
    return found


def _all_processes_in_groups(pgids: Collection[int]) -> Iterable[tuple[int, int, float, str]]:
    """(pid, pgid, create time, state letter) of every process in one of `pgids`: one pass."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None and int(fields[2]) in pgids:
            yield int(entry), int(fields[2]), int(fields[19]) / _CLOCK_TICKS + _btime(), fields[0].decode()


def descendant_pids(pid: int) -> list[int]:
    """PIDs of the descendants of `pid` (not `pid` itself)."""
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children_of(stack.pop()):
            found.append(child)
            stack.append(child)
    return found


def children_of(pid: int) -> list[int]:
    # Each thread lists the children it forked, so a process forked from a worker thread
    # appears only under that thread's file: read every task's.
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    children: list[int] = []
    for tid in tids:
        data = _read_small(f"/proc/{pid}/task/{tid}/children", 65536)
        if data:
            children.extend(map(int, data.split()))
    return children


def _read_small(path: str, size: int = 1024) -> bytes | None:
    """One read of a small /proc file with raw os calls (a third of open()'s cost); None if gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, size)
    except OSError:
        return None
    finally:
        os.close(fd)


THREAD_REFRESH_SAMPLES = 30  # a minute at the default 2 s


class TreeSampler:
    """Tree memory for the sampling loop, through /proc files kept open between samples.

    Per process: statm (resident and file-backed pages), the thread count (the link count of
    /proc/PID/task is 2 + threads) and the main thread's children list; only multithreaded
    processes list their tasks. Every 2 s for as long as the stack runs, and cold: opening
    and closing the files, and layers of small helpers, cost three times what the reads do,
    so this is one flat loop over descriptors opened once, re-read with pread (which makes
    the kernel generate the file afresh).

    Walks only when a tree may have changed shape. A tree gains a process only through a
    fork or clone, which allocates a PID and moves the kernel's last-allocated-PID counter
    (/proc/loadavg's last field); it loses one only when a member exits, after which its
    statm reads all zeros (a zombie: no address space) or fails (reaped). So while that counter stands still and
    every member's statm reads, re-reading the members' statm is the whole sample. On a
    machine that creates processes or threads all the time the walk runs every sample, as it
    would without this; every THREAD_REFRESH_SAMPLES samples it runs regardless.

    PID reuse: /proc/PID descriptors stay bound to the process they were opened on; once it
    is gone, statm fails (ESRCH) instead of describing whoever has the number now. statm is
    read first, and its failure reopens all three files once, on the current process.
    Descriptors of processes that left the trees are closed after each sample, and at most
    `max_kept` processes (a ninth of the soft RLIMIT_NOFILE: three files each) keep theirs.
    Not thread-safe: one thread (the sampler's) owns it.
    """

    def __init__(self, max_kept: int | None = None, extra_roots: ExtraRoots | None = None) -> None:
        # extra_roots(leaders) -> {name: [pid, ...]}: more roots of a tree, asked at each walk
        # (orphans.find: a component's descendants that were reparented to the supervisor).
        self.extra_roots = extra_roots
        self.orphans: dict[str, list[int]] = {}  # what extra_roots said when last asked
        if max_kept is None:
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            max_kept = min(soft, 1 << 16) // 9
        self.max_kept = max_kept
        self._files: dict[int, tuple[int, int, int]] = {}  # pid -> (statm, task dir, children)
        self._threads: dict[int, tuple[int, list[int]]] = {}  # pid -> (task link count, children files)
        self.members: dict[int, list[int]] = {}  # root -> the PIDs of its tree at the last walk
        self._samples = 0
        self.walks = 0
        self._walked: tuple[bytes, dict[str, int]] | None = None  # (PID counter, roots) of the last walk
        # What the last walk or re-read saw: every member's statm descriptor and text, in order.
        self._statm_fds: list[int] = []
        self._statm: list[bytes] = []
        self._result: dict[str, TreeUsage] = {}
        self._loadavg: int | None = None

    def _open(self, pid: int) -> tuple[int, int, int] | None:
        base = f"/proc/{pid}"
        opened: list[int] = []
        try:
            for path, flags in (
                (f"{base}/statm", os.O_RDONLY),
                (f"{base}/task", os.O_RDONLY | os.O_DIRECTORY),
                (f"{base}/task/{pid}/children", os.O_RDONLY),
            ):
                opened.append(os.open(path, flags | os.O_CLOEXEC))
        except OSError:
            for fd in opened:
                os.close(fd)
            return None
        fds = (opened[0], opened[1], opened[2])
        self._files[pid] = fds
        return fds

    def _forget(self, pid: int) -> None:
        for fd in self._files.pop(pid, ()):
            os.close(fd)
        self._forget_threads(pid)

    def _forget_threads(self, pid: int) -> None:
        for fd in self._threads.pop(pid, (0, []))[1]:
            os.close(fd)

    def _thread_files(self, pid: int, links: int) -> list[int]:
        """The children files of every thread of a multithreaded process, kept while its
        thread count stays the same (a thread that ends hands its children to another, whose
        file we read). A thread replaced by a new one between two samples keeps the count:
        the new one's children would be missed, so the lists are refreshed every
        THREAD_REFRESH_SAMPLES samples."""
        cached = self._threads.get(pid)
        if cached is not None and cached[0] == links:
            return cached[1]
        self._forget_threads(pid)
        fds = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                fds.append(os.open(f"/proc/{pid}/task/{tid}/children", os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                continue  # that thread just ended
        self._threads[pid] = (links, fds)
        return fds

    def _pid_counter(self) -> bytes | None:
        """The last PID the kernel allocated in our namespace (/proc/loadavg's last field)."""
        try:
            if self._loadavg is None:
                self._loadavg = os.open("/proc/loadavg", os.O_RDONLY | os.O_CLOEXEC)
            return os.pread(self._loadavg, 128, 0).rsplit(None, 1)[-1]
        except (OSError, IndexError):
            return None

    def _reread(self) -> dict[str, TreeUsage] | None:
        """The last walk's members re-read; None as soon as one has exited. The reads run in
        one C-level map, and an idle stack's statm rarely moves by a page: then the last
        result stands as it is (the same object: callers treat results as read-only)."""
        fds = self._statm_fds
        try:
            now = list(map(os.pread, fds, repeat(256, len(fds)), repeat(0, len(fds))))
        except OSError:  # reaped since the walk
            return None
        if now == self._statm:
            return self._result
        page, result, at = _PAGE_SIZE, {}, 0
        for name, root in self._walked[1].items():  # type: ignore[index]  # the walk's order
            members = self.members[root]
            resident = shared = 0
            for raw in now[at : at + len(members)]:
                fields = raw.split(None, 3)
                if fields[0] == b"0":  # no address space: a zombie, whose children went elsewhere
                    return None
                resident += int(fields[1])
                shared += int(fields[2])
            at += len(members)
            result[name] = TreeUsage(
                rss_bytes=resident * page, processes=len(members), anon_bytes=(resident - shared) * page
            )
        self._statm, self._result = now, result
        return result

    def usage(self, roots: Mapping[str, int]) -> dict[str, TreeUsage]:
        self._samples += 1
        counter = self._pid_counter() if self.max_kept else None  # nothing kept: nothing to re-read
        walked = self._walked
        if (
            counter is not None
            and walked is not None
            and walked[0] == counter
            and walked[1] == roots
            and self._samples % THREAD_REFRESH_SAMPLES
        ):
            result = self._reread()
            if result is not None:
                return result
        self._walked = (counter, dict(roots)) if counter is not None else None  # read before the walk
        return self._walk_trees(roots)

    def _walk_trees(self, roots: Mapping[str, int]) -> dict[str, TreeUsage]:
        self.walks += 1
        if self._samples % THREAD_REFRESH_SAMPLES == 0:
            for pid in list(self._threads):
                self._forget_threads(pid)
        result = self._walk_once(roots, self.orphans)
        # Every walk asks (a walk follows any fork or exit in the trees, and only an exit
        # reparents a process to us); extra_roots keeps that cheap (orphans.OrphanFinder).
        if self.extra_roots is not None:
            found = self.extra_roots(set(roots.values()))
            if found != self.orphans:
                self.orphans = found
                result = self._walk_once(roots, found)
        return result

    def _walk_once(self, roots: Mapping[str, int], extra: Mapping[str, list[int]]) -> dict[str, TreeUsage]:
        files, pread, fstat, page = self._files, os.pread, os.fstat, _PAGE_SIZE
        result = {}
        members_by_root: dict[int, list[int]] = {}
        statm_fds: list[int] = []
        statms: list[bytes] = []
        for name, root in roots.items():
            resident = shared = count = 0
            members_by_root[root] = members = []
            stack = [root, *extra.get(name, ())]
            while stack:
                pid = stack.pop()
                fds = files.get(pid) or self._open(pid)
                if fds is None:
                    continue  # gone
                try:
                    statm = pread(fds[0], 256, 0)
                except OSError:  # exited since the last sample; the PID may name another process
                    self._forget(pid)
                    fds = self._open(pid)
                    if fds is None:
                        continue
                    try:
                        statm = pread(fds[0], 256, 0)
                    except OSError:
                        self._forget(pid)
                        continue
                fields = statm.split(None, 3)
                # No address space at all: a zombie, whose children went to another parent.
                # (Not resident pages: a stopped process under pressure may have none left.)
                if fields[0] == b"0":
                    continue
                members.append(pid)
                statm_fds.append(fds[0])
                statms.append(statm)
                resident += int(fields[1])
                shared += int(fields[2])  # file-backed + shmem
                count += 1
                try:
                    links = fstat(fds[1]).st_nlink
                    if links == 3:  # one thread: only its children list
                        children = pread(fds[2], 65536, 0)
                        if children:
                            stack.extend(map(int, children.split()))
                    else:
                        for fd in self._thread_files(pid, links):
                            children = pread(fd, 65536, 0)
                            if children:
                                stack.extend(map(int, children.split()))
                except OSError:
                    pass  # exited between the reads: no children to follow
            result[name] = TreeUsage(rss_bytes=resident * page, processes=count, anon_bytes=(resident - shared) * page)
        self.members = members_by_root  # whole, so another thread never sees it half-built
        everyone = {pid for m in members_by_root.values() for pid in m}
        walked = len(everyone)
        if len(files) != walked or len(files) > self.max_kept:  # some left the trees (or too many)
            self._close_except(everyone)
            if len(files) < walked:  # over the cap: no descriptors to re-read
                self._walked = None
        self._statm_fds, self._statm, self._result = statm_fds, statms, result
        return result

    def _close_except(self, keep: set[int]) -> None:
        for pid in [p for p in self._files if p not in keep]:
            self._forget(pid)
        for pid in list(self._files)[self.max_kept :]:
            self._forget(pid)

    def rewalk(self) -> None:
        """Make the next sample walk the trees, whatever the PID counter says (bench_sampling
        measures the walk this way)."""
        self._walked = None

    def close(self) -> None:
        for pid in list(self._files):
            self._forget(pid)
        if self._loadavg is not None:
            os.close(self._loadavg)
            self._loadavg = None
        self._walked = None
        self._statm_fds, self._statm = [], []


def own_rss_bytes() -> int:
    statm = _read_small(f"/proc/{os.getpid()}/statm", 256)
    return int(statm.split()[1]) * _PAGE_SIZE if statm else 0


def process_state(pid: int) -> str:
    fields = _stat_fields(pid)
    if fields is None:
        raise NoSuchProcess(pid)
    return fields[0].decode()


def tree_hwm_bytes(root: int, pids: Iterable[int] | None = None) -> int | None:
    """The kernel's high-water mark of resident memory (VmHWM), summed over the tree: catches
    spikes between samples. The sum of each process's own peak bounds the tree's peak from
    above (they need not have peaked at once). `pids`: the tree's members if already known
    (the sampler's last walk). None where the OS does not keep it."""
    total = 0
    for pid in [root, *descendant_pids(root)] if pids is None else pids:
        status = _read_small(f"/proc/{pid}/status", 4096)
        if not status:
            continue
        at = status.find(b"VmHWM:")
        if at >= 0:  # absent for kernel threads and zombies
            total += int(status[at + 6 : status.find(b"kB", at)]) * 1024
    return total


def tree_hot_file_bytes(root: int, pids: Iterable[int] | None = None) -> int | None:
    """`Referenced` summed over the file-backed mappings (a non-zero inode) of each process's
    smaps, then `3` into its clear_refs (the bits of file-mapped pages only: anonymous pages
    keep theirs for the kernel's LRU) so the next call sees only what is touched after this
    one (Brendan Gregg's wss method). None if no process could be read."""
    total, seen = 0, False
    for pid in [root, *descendant_pids(root)] if pids is None else pids:
        try:
            with open(f"/proc/{pid}/smaps", "rb") as smaps:
                total += _referenced_file_bytes(smaps.read())
            with open(f"/proc/{pid}/clear_refs", "w") as clear:
                clear.write("3")
            seen = True
        except OSError:  # gone, or not ours to read
            continue
    return total if seen else None


def _referenced_file_bytes(smaps: bytes) -> int:
    total, file_backed = 0, False
    for line in smaps.split(b"\n"):
        if line.startswith(b"Referenced:"):
            if file_backed:
                total += int(line.split()[1]) * 1024
        elif line[:1] in b"0123456789abcdef" and b"-" in line.split(b" ", 1)[0]:
            fields = line.split()
            file_backed = len(fields) >= 5 and fields[4] != b"0"  # the inode: a mapped file
    return total


def tree_cpu_seconds(root: int, pids: Iterable[int] | None = None) -> float | None:
    ticks, seen = 0, False
    for pid in [root, *descendant_pids(root)] if pids is None else pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
            seen = True
    return ticks / _CLOCK_TICKS if seen else None


def component_of(pid: int) -> str | None:
    environ = _read_small(f"/proc/{pid}/environ", 1 << 20)
    if not environ:
        return None
    for entry in environ.split(b"\0"):
        if entry.startswith(_COMPONENT_VAR):
            return entry[len(_COMPONENT_VAR) :].decode("utf-8", "replace")
    return None


# --- process control -----------------------------------------------------------------------


def become_subreaper() -> bool:
    return bool(_libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def is_subreaper() -> bool:
    flag = ctypes.c_int(0)
    return bool(_libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0) == 0 and flag.value != 0)


def pidfd_open(pid: int) -> int | None:
    if not hasattr(os, "pidfd_open"):  # Python built without it (it needs Linux 5.3)
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


# util-linux's setpriv sets the parent-death signal and then execs the command. Spawning
# through it lets CPython use vfork (no preexec_fn): a Python function run between fork and
# exec costs a fork of the whole supervisor plus its copy-on-write faults at every spawn
# (bench/bench_scale.py: `up` with 1,000 components took 19.6 s before, 6.4 s after).
_SETPRIV = shutil.which("setpriv")


def death_signal_launcher() -> tuple[list[str], Callable[[], None] | None]:
    if _SETPRIV is not None:
        return [_SETPRIV, "--pdeathsig", "TERM", "--"], None
    parent = os.getpid()

    def preexec() -> None:  # between fork and exec: no allocation-heavy work here
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the supervisor died before prctl took effect
            os._exit(1)

    return [], preexec


def oom_score_base() -> int | None:
    try:
        with open("/proc/self/oom_score_adj") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def peer_uid(sock: socket.socket) -> int | None:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)
