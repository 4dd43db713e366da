"""The open-files limit: `up` raises its own soft RLIMIT_NOFILE to the hard limit, and its
components start with the soft limit `up` itself was given.

Why raise it: each component holds about six of the supervisor's descriptors (its output
pipe, its log file, a pidfd, the /proc files the sampler keeps open), and the usual soft
limit (1,024 on Linux desktops, 256 on macOS) ran out at about 220 components on Linux: the
rest went FATAL with "Too many open files", and a flood of clients takes more. The hard
limit is the user's to set; the soft one is each program's to raise, which needs no
privilege: systemd, Go (1.19 on) and supervisord (`minfds`) raise their own.

Why not pass it on: a program built on select() breaks on a descriptor past FD_SETSIZE
(1,024) instead of failing to open it, so programs get 1,024 and raise their own when they
need more (systemd's services get 1024:524288, and Go's os/exec restores the soft limit in
the child). Components start through `prlimit --nofile=SOFT:` (util-linux, where
`setpriv` comes from) with the soft limit `up` was started with; where there is no
`prlimit` (macOS, a minimal Linux) they inherit the raised one.
"""

from __future__ import annotations

import resource
import shutil
from dataclasses import dataclass

SOFT_CAP = 1 << 20  # Linux's default nr_open: a soft limit past it is refused anyway
OPEN_MAX = 10240  # macOS refuses a soft limit past kern.maxfilesperproc: OPEN_MAX is always under it
_PRLIMIT = shutil.which("prlimit")


@dataclass(frozen=True)
class Raised:
    given: int  # the soft limit this process started with, and its components start with
    now: int


_raised: Raised | None = None


def raise_soft_limit() -> Raised | None:
    """Raise this process's soft open-files limit as far as the hard one (or the OS) allows;
    what it was and is now, or None when it could not go higher."""
    global _raised
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = SOFT_CAP if hard == resource.RLIM_INFINITY else min(hard, SOFT_CAP)
    for target in dict.fromkeys((ceiling, min(ceiling, OPEN_MAX))):
        if soft != resource.RLIM_INFINITY and target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            except (ValueError, OSError):
                continue  # past what this OS allows one process: try the lower ceiling
            _raised = Raised(soft, target)
            return _raised
    return None


def child_prefix() -> list[str]:
    """What a component's command is run through so that it starts with the soft limit this
    process was given (empty when the limit was not raised, or there is no `prlimit`)."""
    if _raised is None or _PRLIMIT is None:
        return []
    return [_PRLIMIT, f"--nofile={_raised.given}:", "--"]  # `SOFT:`: the hard limit stays as it is
