"""The process table: identity, trees, groups and signals.

Identity is (pid, create_time): a PID alone may have been recycled by the time we signal
it, so every signal to a process we did not spawn ourselves (grandchildren, a previous
run's leftovers) first checks that the create time still matches. Direct children are
signalled through their pidfd instead (see `launcher.Child`).

Tree memory is measured by walking down from our own children, not by scanning the whole
system: on Linux each process lists its children in /proc/PID/task/TID/children and its
resident size in /proc/PID/statm, which costs microseconds per process (see MEASURING in
the design notes). Elsewhere one `psutil.process_iter` pass builds the parent map.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Iterable, Mapping

import psutil

from .model import ProcessIdentity, TreeUsage

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_HAS_PROC_CHILDREN = sys.platform.startswith("linux") and os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


def identity(pid: int) -> ProcessIdentity | None:
    try:
        return ProcessIdentity(pid, psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def is_alive(ident: ProcessIdentity) -> bool:
    """True while that very process exists and has not yet been reaped or become a zombie."""
    try:
        proc = psutil.Process(ident.pid)
        return proc.create_time() == ident.create_time and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def signal_identity(ident: ProcessIdentity, sig: int) -> bool:
    """Send `sig` to that very process; False if it is gone or the PID now names another one."""
    try:
        if psutil.Process(ident.pid).create_time() != ident.create_time:
            return False
        os.kill(ident.pid, sig)
        return True
    except (psutil.NoSuchProcess, psutil.ZombieProcess, ProcessLookupError):
        return False
    except (psutil.AccessDenied, PermissionError):
        return False


def signal_group(pgid: int, sig: int) -> bool:
    """Signal a whole process group; False if it has no members left."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


def group_members(pgid: int, not_before: float) -> list[ProcessIdentity]:
    """Live processes in group `pgid` created no earlier than `not_before` (its leader's start).

    The create-time bound keeps a recycled group number from matching older processes.
    """
    members = []
    for proc in psutil.process_iter(["create_time"]):
        try:
            if os.getpgid(proc.pid) != pgid:
                continue
        except (ProcessLookupError, PermissionError):
            continue
        created = proc.info["create_time"]
        if created is not None and created >= not_before - 0.01:
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
            except psutil.Error:
                continue
            members.append(ProcessIdentity(proc.pid, created))
    return members


def descendants(pid: int) -> list[ProcessIdentity]:
    """Every live process below `pid`, each with its identity."""
    out = []
    for child_pid in _walk(pid):
        ident = identity(child_pid)
        if ident is not None:
            out.append(ident)
    return out


def _walk(root: int) -> list[int]:
    """PIDs of the descendants of `root` (not root itself)."""
    if _HAS_PROC_CHILDREN:
        found: list[int] = []
        stack = [root]
        while stack:
            for child in _proc_children(stack.pop()):
                found.append(child)
                stack.append(child)
        return found
    try:
        return [p.pid for p in psutil.Process(root).children(recursive=True)]
    except psutil.Error:
        return []


def _proc_children(pid: int) -> list[int]:
    # Each thread lists the children it forked, so a process forked from a worker thread
    # appears only under that thread's file: read every task's.
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    children: list[int] = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                children.extend(int(x) for x in f.read().split())
        except OSError:
            continue
    return children


def _read_small(path: str, size: int = 1024) -> bytes | None:
    """One read of a small /proc file with raw os calls (a third of open()'s cost); None if gone."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, size)
    except OSError:
        return None
    finally:
        os.close(fd)


def _statm(pid: int) -> tuple[int, int] | None:
    """(resident, shared) bytes; shared is file-backed plus shmem (RssFile + RssShmem)."""
    data = _read_small(f"/proc/{pid}/statm", 256)
    if data is None:
        return None
    fields = data.split()
    return int(fields[1]) * _PAGE_SIZE, int(fields[2]) * _PAGE_SIZE


def _stat(pid: int) -> tuple[int, int] | None:
    """(resident bytes, thread count) from /proc/PID/stat: one read for both."""
    data = _read_small(f"/proc/{pid}/stat")
    if data is None:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[21]) * _PAGE_SIZE, int(fields[17])


def _children_fast(pid: int, threads: int) -> list[int]:
    if threads != 1:
        return _proc_children(pid)
    data = _read_small(f"/proc/{pid}/task/{pid}/children", 65536)
    return [int(x) for x in data.split()] if data else []


def tree_usage(roots: Mapping[str, int], with_anon: bool = False) -> dict[str, TreeUsage]:
    """RSS summed over each root's whole tree, for every named root PID, in one pass.

    The hot path reads two small files per process (stat: RSS and thread count; the main
    thread's children list) and lists the tasks only of multithreaded processes. The
    anonymous/file split needs statm as well, so it is read only `with_anon`.
    """
    if not _HAS_PROC_CHILDREN:
        return _tree_usage_psutil(roots)
    result = {}
    for name, root in roots.items():
        total = count = anon = 0
        stack = [root]
        while stack:
            pid = stack.pop()
            st = _stat(pid)
            if st is None:
                continue
            total += st[0]
            count += 1
            if with_anon:
                statm = _statm(pid)
                anon += statm[0] - statm[1] if statm else 0
            stack.extend(_children_fast(pid, st[1]))
        result[name] = TreeUsage(rss_bytes=total, processes=count, anon_bytes=anon)
    return result


def _tree_usage_psutil(roots: Mapping[str, int]) -> dict[str, TreeUsage]:
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for proc in psutil.process_iter(["ppid", "memory_info"]):
        info = proc.info
        if info["memory_info"] is None:
            continue
        children.setdefault(info["ppid"], []).append(proc.pid)
        rss[proc.pid] = info["memory_info"].rss
    result = {}
    for name, root in roots.items():
        total = count = 0
        stack = [root]
        while stack:
            pid = stack.pop()
            if pid in rss:
                total += rss[pid]
                count += 1
            stack.extend(children.get(pid, ()))
        result[name] = TreeUsage(rss_bytes=total, processes=count)
    return result


def own_rss_bytes() -> int:
    statm = _statm(os.getpid()) if _HAS_PROC_CHILDREN else None
    return statm[0] if statm is not None else psutil.Process().memory_info().rss


def tree_pids(root: int) -> list[int]:
    return [root, *_walk(root)]


def process_state(pid: int) -> str | None:
    """The kernel's one-letter state ('T' once SIGSTOP took, 'S', 'R', 'Z', ...)."""
    if _HAS_PROC_CHILDREN:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                return f.read().rsplit(b")", 1)[1].split()[0].decode()
        except (OSError, IndexError):
            return None
    try:
        status = psutil.Process(pid).status()
    except psutil.Error:
        return None
    return "T" if status == psutil.STATUS_STOPPED else status[:1].upper()


def signal_all(idents: Iterable[ProcessIdentity], sig: int) -> list[int]:
    """Signal each identity that is still the same process; returns the PIDs signalled."""
    return [ident.pid for ident in idents if signal_identity(ident, sig)]


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def tree_hwm_bytes(root: int) -> int | None:
    """The kernel's high-water mark of resident memory (VmHWM), summed over the tree: catches
    spikes between samples. The sum of each process's own peak bounds the tree's peak from
    above (they need not have peaked at once). None where the OS does not keep it."""
    if not _HAS_PROC_CHILDREN:
        return None
    total = 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmHWM:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total
