"""The process seam on macOS (see _contract.py for the contract).

Trees and their memory come from the kernel through libproc (platform/mach.py's seam, so the
tests run this code on Linux with fake calls fed recorded figures): each component's tree is
walked from its root with `proc_listchildpids`, no scan of the whole process table, and each
process is read with one `proc_pid_rusage(RUSAGE_INFO_V4)`, which gives
    ri_phys_footprint               the footprint: what the component's memory is here
    ri_resident_size                RSS, still reported
    ri_lifetime_max_phys_footprint  the kernel's high-water mark (macOS's VmHWM)
The rest (identity, groups, environment, peer credentials) is the portable backend's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..errors import AccessDenied, NoSuchProcess
from ..model import TreeUsage
from ..platform import mach
from ._contract import ExtraRoots
from ._portable import (
    MAXRSS_UNIT,
    become_subreaper,
    component_of,
    death_signal_launcher,
    groups_members,
    identity,
    is_alive,
    is_subreaper,
    oom_score_base,
    own_rss_bytes,
    peer_uid,
    pidfd_open,
    process_state,
)

__all__ = [
    "MAXRSS_UNIT",
    "TreeSampler",
    "become_subreaper",
    "children_of",
    "component_of",
    "death_signal_launcher",
    "descendant_pids",
    "groups_members",
    "identity",
    "is_alive",
    "is_subreaper",
    "oom_score_base",
    "own_rss_bytes",
    "peer_uid",
    "pidfd_open",
    "process_state",
    "tree_cpu_seconds",
    "tree_hwm_bytes",
]

CALLS: mach.MachCalls = mach.LIVE  # the tests put fakes here


def tree_cpu_seconds(root: int, pids: Iterable[int] | None = None) -> float | None:
    """ri_user_time + ri_system_time, in mach absolute time units (1 ns on Intel, 125/3 ns on
    Apple silicon: psutil's macOS CPU times were off by that factor until it read the timebase)."""
    numer, denom = CALLS.timebase()
    units, seen = 0, False
    for pid in pids if pids is not None else [root, *descendant_pids(root)]:
        try:
            units += mach.rusage_cpu_units(CALLS.proc_pid_rusage(pid))
        except (NoSuchProcess, AccessDenied):
            continue
        seen = True
    return units * numer / denom / 1e9 if seen else None


def children_of(pid: int) -> list[int]:
    return CALLS.proc_listchildpids(pid)


def descendant_pids(pid: int) -> list[int]:
    found: list[int] = []
    seen = {pid}
    stack = [pid]
    while stack:
        for child in CALLS.proc_listchildpids(stack.pop()):
            if child not in seen:
                seen.add(child)
                found.append(child)
                stack.append(child)
    return found


def tree_hot_file_bytes(root: int, pids: Iterable[int] | None = None) -> int | None:
    return None  # macOS does not expose pages' referenced bits; the footprint leaves out clean file pages anyway


def tree_hwm_bytes(root: int, pids: Iterable[int] | None = None) -> int | None:
    """The sum of each process's lifetime peak footprint over the tree."""
    total, seen = 0, False
    for pid in pids if pids is not None else [root, *descendant_pids(root)]:
        try:
            total += mach.rusage_memory(CALLS.proc_pid_rusage(pid))[2]
            seen = True
        except (NoSuchProcess, AccessDenied):
            continue
    return total if seen else None


class TreeSampler:
    """Every reading walks each tree from its root (a few children lists and one rusage call
    per process), so `walks` moves with every reading."""

    def __init__(self, max_kept: int | None = None, extra_roots: ExtraRoots | None = None) -> None:
        self.extra_roots = extra_roots
        self.members: dict[int, list[int]] = {}
        self.walks = 0
        self.orphans: dict[str, list[int]] = {}

    def usage(self, roots: Mapping[str, int]) -> dict[str, TreeUsage]:
        self.walks += 1
        if self.extra_roots is not None:
            self.orphans = self.extra_roots(set(roots.values()))
        result: dict[str, TreeUsage] = {}
        members_by_root: dict[int, list[int]] = {}
        for name, root in roots.items():
            members = members_by_root[root] = []
            resident = footprint = 0
            stack = [root, *self.orphans.get(name, ())]
            seen: set[int] = set()
            while stack:
                pid = stack.pop()
                if pid in seen:
                    continue
                seen.add(pid)
                try:
                    r, f, _ = mach.rusage_memory(CALLS.proc_pid_rusage(pid))
                except (NoSuchProcess, AccessDenied):
                    continue
                resident += r
                footprint += f
                members.append(pid)
                stack.extend(CALLS.proc_listchildpids(pid))
            result[name] = TreeUsage(rss_bytes=resident, processes=len(members), footprint_bytes=footprint)
        self.members = members_by_root
        return result

    def rewalk(self) -> None:
        pass  # every reading walks

    def close(self) -> None:
        pass
