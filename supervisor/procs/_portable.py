"""The process seam through psutil: macOS and other Unixes (see _contract.py for the contract).

psutil is imported here and only here, and this module only where the Linux backend cannot
serve (the facade chooses once, at import). macOS has no subreaper, no parent-death signal,
no pidfd and no OOM score: those answer "no" and callers fall back (polling, the runtime
dir's record of every process)."""

from __future__ import annotations

import os
import socket
import struct
import sys
from collections.abc import Callable, Iterable, Mapping

import psutil

from ..errors import AccessDenied, NoSuchProcess
from ..model import ProcessIdentity, TreeUsage
from ._contract import ExtraRoots

MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere


def identity(pid: int) -> ProcessIdentity:
    try:
        return ProcessIdentity(pid, psutil.Process(pid).create_time())
    except psutil.AccessDenied:
        raise AccessDenied(pid) from None
    except psutil.Error:  # NoSuchProcess, ZombieProcess
        raise NoSuchProcess(pid) from None


def is_alive(ident: ProcessIdentity) -> bool:
    try:
        proc = psutil.Process(ident.pid)
        return bool(proc.create_time() == ident.create_time and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def process_state(pid: int) -> str:
    try:
        status = psutil.Process(pid).status()
    except psutil.AccessDenied:
        raise AccessDenied(pid) from None
    except psutil.Error:
        raise NoSuchProcess(pid) from None
    return "T" if status == psutil.STATUS_STOPPED else str(status)[:1].upper()


def children_of(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children()]
    except psutil.Error:
        return []


def descendant_pids(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def groups_members(groups: Mapping[int, float]) -> dict[int, list[ProcessIdentity]]:
    found: dict[int, list[ProcessIdentity]] = {}
    for proc in psutil.process_iter(["create_time", "status"]):
        try:
            pgid = os.getpgid(proc.pid)
        except OSError:
            continue
        created = proc.info["create_time"]
        if pgid in groups and created is not None and proc.info["status"] != psutil.STATUS_ZOMBIE:
            if created >= groups[pgid] - 0.01:
                found.setdefault(pgid, []).append(ProcessIdentity(proc.pid, created))
    return found


def own_rss_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


def tree_hwm_bytes(root: int, pids: Iterable[int] | None = None) -> int | None:
    return None  # no per-process high-water mark outside Linux


def tree_hot_file_bytes(root: int, pids: Iterable[int] | None = None) -> int | None:
    return None  # no referenced bits to read outside Linux


def tree_cpu_seconds(root: int, pids: Iterable[int] | None = None) -> float | None:
    total, seen = 0.0, False
    for pid in [root, *descendant_pids(root)] if pids is None else pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
        seen = True
    return total if seen else None


def component_of(pid: int) -> str | None:
    try:
        value = psutil.Process(pid).environ().get("IRONCLIW_COMPONENT")
        return str(value) if value is not None else None
    except psutil.Error:
        return None


def become_subreaper() -> bool:
    return False


def is_subreaper() -> bool:
    return False


def pidfd_open(pid: int) -> int | None:
    return None


def death_signal_launcher() -> tuple[list[str], Callable[[], None] | None]:
    return [], None


def oom_score_base() -> int | None:
    return None


if sys.platform == "darwin":

    def peer_uid(sock: socket.socket) -> int | None:
        # LOCAL_PEERCRED (SOL_LOCAL = 0): struct xucred {version, uid, ngroups, groups[16]}
        creds = sock.getsockopt(0, 0x001, struct.calcsize("IIh16I"))
        _version, uid = struct.unpack_from("II", creds)
        return int(uid)

else:

    def peer_uid(sock: socket.socket) -> int | None:
        return None  # no portable way: the socket's 0600 mode is then the only guard


class TreeSampler:
    """Every reading walks the whole process table once (psutil.process_iter): no files to
    keep open, so `walks` moves with every reading."""

    def __init__(self, max_kept: int | None = None, extra_roots: ExtraRoots | None = None) -> None:
        self.extra_roots = extra_roots
        self.members: dict[int, list[int]] = {}
        self.walks = 0
        self.orphans: dict[str, list[int]] = {}

    def usage(self, roots: Mapping[str, int]) -> dict[str, TreeUsage]:
        self.walks += 1
        children: dict[int, list[int]] = {}
        rss: dict[int, int] = {}
        for proc in psutil.process_iter(["ppid", "memory_info"]):
            info = proc.info
            if info["memory_info"] is None:
                continue
            children.setdefault(info["ppid"], []).append(proc.pid)
            rss[proc.pid] = info["memory_info"].rss
        if self.extra_roots is not None:
            self.orphans = self.extra_roots(set(roots.values()))
        result: dict[str, TreeUsage] = {}
        members_by_root: dict[int, list[int]] = {}
        for name, root in roots.items():
            total = 0
            members = members_by_root[root] = []
            stack = [root, *self.orphans.get(name, ())]
            while stack:
                pid = stack.pop()
                if pid in rss:
                    total += rss[pid]
                    members.append(pid)
                stack.extend(children.get(pid, ()))
            result[name] = TreeUsage(rss_bytes=total, processes=len(members))
        self.members = members_by_root
        return result

    def rewalk(self) -> None:
        pass  # every reading walks

    def close(self) -> None:
        pass
