"""The process table and process control, behind one seam: identity, trees, groups,
signals, and what the OS offers to tie children to us (subreaper, parent-death signal,
pidfd, peer credentials).

The backend is chosen once, at import (like psutil's `_pslinux` / `_psosx`): `_linux` reads
/proc and calls prctl; `_darwin` walks trees and reads footprints through libproc (the rest
through psutil); `_portable` asks psutil (other Unixes). Both implement the
contract in `_contract.py`, checked by tests/test_procs_contract.py on every backend that
imports here. OS errors become typed errors at this edge: `NoSuchProcess(pid)`,
`AccessDenied(pid)` (errors.py).

Identity is (pid, create_time): a PID alone may have been recycled by the time we signal
it, so every signal to a process we did not spawn ourselves (grandchildren, a previous
run's leftovers) first checks that the create time still matches. Direct children are
signalled through their pidfd where there is one (see `launcher.Child`).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterable, Mapping

from ..errors import AccessDenied, NoSuchProcess
from ..model import ProcessIdentity, TreeUsage
from ._contract import ExtraRoots

if sys.platform.startswith("linux"):
    from . import _linux

    _backend_is_linux = _linux.usable()
else:
    _backend_is_linux = False

if _backend_is_linux:
    from . import _linux as _backend
elif sys.platform == "darwin":  # pragma: no cover - libproc; tested with recorded figures (test_darwin.py)
    from . import _darwin as _backend  # type: ignore[no-redef]
else:  # pragma: no cover - exercised by the contract test
    from . import _portable as _backend  # type: ignore[no-redef]  # psutil: imported only here

MAXRSS_UNIT = _backend.MAXRSS_UNIT
TreeSampler = _backend.TreeSampler
become_subreaper = _backend.become_subreaper
children_of = _backend.children_of
component_of = _backend.component_of
death_signal_launcher = _backend.death_signal_launcher
descendant_pids = _backend.descendant_pids
groups_members = _backend.groups_members
identity = _backend.identity
is_alive = _backend.is_alive
is_subreaper = _backend.is_subreaper
oom_score_base = _backend.oom_score_base
own_rss_bytes = _backend.own_rss_bytes
peer_uid = _backend.peer_uid
pidfd_open = _backend.pidfd_open
process_state = _backend.process_state
tree_cpu_seconds = _backend.tree_cpu_seconds
tree_hot_file_bytes = _backend.tree_hot_file_bytes
tree_hwm_bytes = _backend.tree_hwm_bytes

BACKEND = _backend.__name__.rsplit("._", 1)[-1]  # "linux", "darwin" or "portable"

__all__ = [
    "BACKEND",
    "MAXRSS_UNIT",
    "AccessDenied",
    "ExtraRoots",
    "NoSuchProcess",
    "TreeSampler",
    "become_subreaper",
    "children_of",
    "component_of",
    "death_signal_launcher",
    "descendant_pids",
    "descendants",
    "find_identity",
    "find_state",
    "group_members",
    "groups_members",
    "identity",
    "is_alive",
    "is_subreaper",
    "oom_score_base",
    "own_rss_bytes",
    "peer_uid",
    "pidfd_open",
    "process_state",
    "signal_all",
    "signal_group",
    "signal_identity",
    "signal_name",
    "tree_cpu_seconds",
    "tree_hot_file_bytes",
    "tree_hwm_bytes",
    "tree_pids",
    "tree_usage",
]


# --- built on the backend, the same everywhere ----------------------------------------------


def find_identity(pid: int) -> ProcessIdentity | None:
    """The identity of `pid` if it exists and may be read; None otherwise (for collections of
    processes, where a gone one is simply left out)."""
    try:
        return identity(pid)
    except (NoSuchProcess, AccessDenied):
        return None


def find_state(pid: int) -> str | None:
    """The one-letter state of `pid`, or None if it is gone or may not be read."""
    try:
        return process_state(pid)
    except (NoSuchProcess, AccessDenied):
        return None


def descendants(pid: int) -> list[ProcessIdentity]:
    """Every live process below `pid`, each with its identity."""
    return [ident for p in descendant_pids(pid) if (ident := find_identity(p)) is not None]


def tree_pids(root: int) -> list[int]:
    return [root, *descendant_pids(root)]


def group_members(pgid: int, not_before: float) -> list[ProcessIdentity]:
    """Live processes in group `pgid` created no earlier than `not_before` (its leader's start)."""
    return groups_members({pgid: not_before}).get(pgid, [])


def tree_usage(roots: Mapping[str, int]) -> dict[str, TreeUsage]:
    """RSS summed over each root's whole tree, for a one-off reading (the sampler keeps its
    own TreeSampler)."""
    sampler = TreeSampler(max_kept=0)
    try:
        return sampler.usage(roots)
    finally:
        sampler.close()


# --- signals: POSIX, the same on every backend ------------------------------------------------


def signal_identity(ident: ProcessIdentity, sig: int) -> bool:
    """Send `sig` to that very process; False if it is gone or the PID now names another one."""
    if find_identity(ident.pid) != ident:
        return False
    try:
        os.kill(ident.pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def signal_group(pgid: int, sig: int) -> bool:
    """Signal a whole process group; False if it has no members left (or none of ours)."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def signal_all(idents: Iterable[ProcessIdentity], sig: int) -> list[int]:
    """Signal each identity that is still the same process; returns the PIDs signalled."""
    return [ident.pid for ident in idents if signal_identity(ident, sig)]


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"
