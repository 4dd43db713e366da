"""Keeps the runtime dir in place while the supervisor runs. Cleaners remove what looks
old in /tmp (macOS's periodic scripts after 3 days, systemd-tmpfiles after 10, though it
skips the dir we lock), and so does a stray `rm -rf`: without the lock file a second `up`
would start a second stack, and without the socket the CLI would say nothing runs. So the
dir and the lock are made again, with `up`'s checks (never a symlink, never another
user's), and each owner puts its own file back: the control socket (control.py), the HTTP
token, the children record. Tmux recreates its socket for the same reason.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import structlog

from .errors import AlreadyRunning, IroncliwError
from .logfiles import DiskProblem
from .runtime import RuntimeDir

log = structlog.get_logger("ironcliw.supervisor")

RETRY_S = 2.0  # while it cannot be made again (a symlink in its place): the next try


class RuntimeWatch:
    def __init__(self, runtime: RuntimeDir, on_problem: DiskProblem, restored: list[Callable[[], None]]) -> None:
        self.runtime = runtime
        self._on_problem = on_problem
        self.restored = restored  # each owner's file put back, after the dir (others add theirs)

    async def keep(self, until: Callable[[Callable[[], bool]], Awaitable[None]]) -> None:
        """`until`: the sampler's off-loop wait (offloop.py), so that looking every 2 s wakes
        nothing while the dir is in place."""
        while True:
            await until(lambda: not self.runtime.intact())
            if not self.check():
                await anyio.sleep(RETRY_S)

    def check(self) -> bool:
        """Whether the dir is in place (put back now if it was not)."""
        if self.runtime.intact():
            return True
        path = str(self.runtime.path)
        try:
            self.runtime.restore()
        except AlreadyRunning as exc:  # it went and another `up` took the path: that one serves it
            self._on_problem("runtime_dir", path, f"removed, and taken by another supervisor (pid {exc.pid})")
            return False
        except IroncliwError as exc:  # e.g. a symlink put in its place: never followed, and said
            self._on_problem("runtime_dir", path, f"removed, and not safe to make again: {exc}")
            return False
        except OSError as exc:
            self._on_problem("runtime_dir", path, f"removed, and cannot be made again: {exc.strerror or exc}")
            return False
        log.warning("runtime_dir_restored", path=path)
        self._on_problem("runtime_dir", path, None)
        for put_back in self.restored:
            put_back()
        return True
