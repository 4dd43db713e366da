"""Descendants that left their component's tree: double-forked daemons, `setsid` escapes.

A component that forks a daemon, which forks again and lets its parent exit, leaves a process
that is in no tree below the component and, after `setsid()`, in no group of it: `down` used
to miss it, and a supervisor killed with SIGKILL left one more with every `up`. systemd
catches these through the unit's cgroup; on Linux we use the same kernel feature tini and
containerd use: the supervisor is a *child subreaper* (`PR_SET_CHILD_SUBREAPER`), so an
orphaned descendant is reparented to it instead of to init. Then:

- an orphan is attributed to the component it came from by the `IRONCLIW_COMPONENT`
  variable every component is started with (inherited by everything it forks, read from
  `/proc/PID/environ`); one that cleared its environment is the stack's, unattributed;
- the sampler walks each component's orphans as part of its tree (memory, high-water marks,
  the record of every process in the runtime dir), a component's stop signals them too, and
  shutdown stops the unattributed ones;
- the supervisor reaps the orphans that exit (their exit status is nobody's business).

Elsewhere (macOS has no subreaper) an orphan goes to launchd: only what a walk saw while it
was still in a tree is recorded, and a daemon that escapes between two walks is not seen.
Only `up` becomes a subreaper: the Python API runs inside someone else's program, whose own
orphans must stay theirs.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Collection

import structlog

from . import procs
from .model import ProcessIdentity
from .stopping import stop_processes

log = structlog.get_logger("ironcliw.supervisor")


def find(leaders: Collection[int]) -> dict[str, list[int]]:
    """Our own live children other than the components' leaders, by component ("" when it
    does not say). Empty unless this process is a subreaper: then every such child is an
    orphan of the stack (`up` starts nothing else)."""
    if not procs.is_subreaper():
        return {}
    found: dict[str, list[int]] = {}
    for pid in procs.children_of(os.getpid()):
        if pid in leaders or procs.find_state(pid) in (None, "Z"):
            continue
        found.setdefault(procs.component_of(pid) or "", []).append(pid)
    return found


class OrphanFinder:
    """`find` for the sampler, which asks at every walk: the process table is asked again
    only when the supervisor's own children changed (an orphan was reparented to it, one
    exited, a component started or ended), otherwise the last answer stands."""

    def __init__(self) -> None:
        self._children: list[int] | None = None
        self._leaders: set[int] = set()
        self._found: dict[str, list[int]] = {}

    def __call__(self, leaders: Collection[int]) -> dict[str, list[int]]:
        if not procs.is_subreaper():
            return {}
        children = procs.children_of(os.getpid())
        if children != self._children or self._leaders != set(leaders):
            self._children, self._leaders = children, set(leaders)
            self._found = find(leaders)
        return self._found


def reap(leaders: Collection[int]) -> list[int]:
    """Reap the orphans that have exited. `leaders` must hold every leader that may still be
    unreaped (their exit status is their runner's): call it where no spawn can interleave."""
    if not procs.is_subreaper():
        return []
    reaped = []
    for pid in procs.children_of(os.getpid()):
        if pid not in leaders and procs.find_state(pid) == "Z":
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    reaped.append(pid)
            except ChildProcessError:
                pass
    return reaped


def with_descendants(pids: Collection[int]) -> list[ProcessIdentity]:
    """Each process and everything below it, by identity."""
    seen: dict[int, ProcessIdentity] = {}
    for pid in pids:
        ident = procs.find_identity(pid)
        if ident is not None:
            seen[pid] = ident
        for below in procs.descendants(pid):
            seen.setdefault(below.pid, below)
    return list(seen.values())


async def stop_unclaimed(grace_s: float) -> None:
    """At shutdown, after every component: whatever is still our child is an orphan that no
    component claimed (it cleared its environment, or outlived its component)."""
    left = find(set())
    idents = with_descendants([pid for pids in left.values() for pid in pids])
    if idents:
        log.info("stopping_orphans", pids=[i.pid for i in idents], components=sorted(left))
        await stop_processes(idents, signal.SIGTERM, grace_s)
        reap(set())
