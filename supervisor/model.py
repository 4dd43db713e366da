"""Plain data shared by every layer: enums and frozen msgspec Structs.

No I/O and no clocks here. Times are `float` seconds from `time.monotonic()` unless a
field name says otherwise (`*_unix` is wall-clock seconds since the epoch).
"""

from __future__ import annotations

import enum

import msgspec


class Priority(enum.Enum):
    """How much a component matters; CRITICAL is never frozen or unloaded by the policy."""

    CRITICAL = "CRITICAL"
    HIGH = "HIGH"
    MEDIUM = "MEDIUM"
    LOW = "LOW"

    @property
    def rank(self) -> int:
        """0 for CRITICAL ... 3 for LOW: sort ascending to put the most important first."""
        return _PRIORITY_RANK[self]


_PRIORITY_RANK = {Priority.CRITICAL: 0, Priority.HIGH: 1, Priority.MEDIUM: 2, Priority.LOW: 3}


class ComponentState(enum.Enum):
    STOPPED = "STOPPED"  # not running, and not wanted
    STARTING = "STARTING"  # spawned, readiness not yet seen
    READY = "READY"  # running and ready
    STOPPING = "STOPPING"  # stop signal sent, waiting for the tree to exit
    EXITED = "EXITED"  # ended on its own and the restart policy says stay down
    BACKOFF = "BACKOFF"  # ended on its own; waiting before the next start
    FATAL = "FATAL"  # crash loop: too many restarts in the window
    FROZEN = "FROZEN"  # stopped with SIGSTOP under memory pressure

    @property
    def is_running(self) -> bool:
        return self in _RUNNING_STATES


_RUNNING_STATES = frozenset(
    {ComponentState.STARTING, ComponentState.READY, ComponentState.STOPPING, ComponentState.FROZEN}
)


class MemoryState(enum.Enum):
    HEALTHY = "HEALTHY"
    WARNING = "WARNING"
    CRITICAL = "CRITICAL"
    EMERGENCY = "EMERGENCY"


class RestartMode(enum.Enum):
    NEVER = "never"
    ON_FAILURE = "on-failure"
    ALWAYS = "always"


class ProcessIdentity(msgspec.Struct, frozen=True):
    """A process as the OS knows it: a PID alone may be recycled, (pid, create_time) may not."""

    pid: int
    create_time: float


class TreeUsage(msgspec.Struct, frozen=True):
    """Memory of one component's whole process tree, summed over its processes."""

    rss_bytes: int
    processes: int

    @property
    def rss_mb(self) -> float:
        return self.rss_bytes / MIB


MIB = 1024 * 1024


class ExitInfo(msgspec.Struct, frozen=True):
    """How a run ended. `code` is the exit status, `signal` the number that ended it, if any."""

    code: int | None
    signal: int | None
    reason: str  # human words: "exited 1", "killed by SIGKILL after grace", "stopped"

    @property
    def success(self) -> bool:
        return self.code == 0


class ComponentStatus(msgspec.Struct, frozen=True):
    """One row of `status`: what the CLI, the socket and the HTTP API show for a component."""

    name: str
    state: ComponentState
    priority: Priority
    pid: int | None
    rss_mb: float
    processes: int
    uptime_s: float | None
    restarts: int
    estimated_mb: int
    autostart: bool
    last_exit: str | None
