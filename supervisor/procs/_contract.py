"""The process seam's contract, written once as stubs (trio's `_subprocess_platform`): every
backend (`_linux`: /proc and prctl; `_portable`: psutil, for macOS and other Unixes)
implements each of these names with these signatures, and tests/test_procs_contract.py
checks that on every backend it can import.

Errors are typed at this edge (psutil's `wrap_exceptions`): a process that is gone raises
`errors.NoSuchProcess(pid)`, one we may not read raises `errors.AccessDenied(pid)`.
Questions whose answer is a yes/no or a collection (is_alive, children_of, descendants,
groups_members) answer for the processes that exist and raise nothing.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Collection, Iterable, Mapping

from ..model import ProcessIdentity, TreeUsage

ExtraRoots = Callable[[Collection[int]], dict[str, list[int]]]

MAXRSS_UNIT: int
"""Bytes per unit of wait4's ru_maxrss (KiB on Linux, bytes on macOS)."""


def identity(pid: int) -> ProcessIdentity:
    """(pid, create time) of the process; raises NoSuchProcess or AccessDenied."""
    raise NotImplementedError


def is_alive(ident: ProcessIdentity) -> bool:
    """That very process exists and is neither reaped nor a zombie."""
    raise NotImplementedError


def process_state(pid: int) -> str:
    """The kernel's one-letter state ('T' once SIGSTOP took, 'S', 'R', 'Z', ...); raises NoSuchProcess."""
    raise NotImplementedError


def children_of(pid: int) -> list[int]:
    """The direct children of `pid` (empty if it is gone)."""
    raise NotImplementedError


def descendant_pids(pid: int) -> list[int]:
    """Every process below `pid`, not `pid` itself (empty if it is gone)."""
    raise NotImplementedError


def groups_members(groups: Mapping[int, float]) -> dict[int, list[ProcessIdentity]]:
    """Live processes of each group {pgid: not_before}, created no earlier than `not_before`
    (a recycled group number must not match older processes); one pass over the table."""
    raise NotImplementedError


def own_rss_bytes() -> int:
    """This process's resident size."""
    raise NotImplementedError


def tree_hwm_bytes(root: int, pids: Iterable[int] | None = None) -> int | None:
    """The sum of the kernel's resident high-water marks over the tree (`pids` if already
    known); None where the OS keeps none."""
    raise NotImplementedError


def tree_hot_file_bytes(root: int, pids: Iterable[int] | None = None) -> int | None:
    """File-backed memory the tree touched since the previous call (its pages' referenced
    bits), and the bits cleared for the next window: the hot share of its mapped files. None
    where the OS does not tell."""
    raise NotImplementedError


def tree_cpu_seconds(root: int, pids: Iterable[int] | None = None) -> float | None:
    """User + system CPU seconds the tree's processes have used so far (`pids` if already
    known); None if none of them could be read."""
    raise NotImplementedError


def component_of(pid: int) -> str | None:
    """The IRONCLIW_COMPONENT a process was started with, if its environment is readable."""
    raise NotImplementedError


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants; False where the OS cannot."""
    raise NotImplementedError


def is_subreaper() -> bool:
    raise NotImplementedError


def pidfd_open(pid: int) -> int | None:
    """A descriptor that becomes readable when our child `pid` exits; None where there is none."""
    raise NotImplementedError


def death_signal_launcher() -> tuple[list[str], Callable[[], None] | None]:
    """How to make a spawned command die with the supervisor: (argv prefix to exec through,
    or a function to run between fork and exec); ([], None) where the OS has no such signal."""
    raise NotImplementedError


def oom_score_base() -> int | None:
    """The supervisor's own OOM-killer score adjustment (children may only raise theirs); None
    where there is no OOM score."""
    raise NotImplementedError


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket, from the kernel."""
    raise NotImplementedError


class TreeSampler:
    """Tree memory for the sampling loop: `usage(roots)` -> {name: TreeUsage} for each
    root's whole tree. After each reading: `members` (root -> PIDs of the newest walk),
    `walks` (a counter that moves when the trees may have changed shape) and `orphans`
    (what `extra_roots` said at the newest walk). `close()` releases what it keeps open."""

    members: dict[int, list[int]]
    walks: int
    orphans: dict[str, list[int]]

    def __init__(self, max_kept: int | None = None, extra_roots: ExtraRoots | None = None) -> None:
        raise NotImplementedError

    def usage(self, roots: Mapping[str, int]) -> dict[str, TreeUsage]:
        raise NotImplementedError

    def rewalk(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError
