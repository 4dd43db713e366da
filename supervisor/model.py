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
    WAITING = "WAITING"  # `up` holds it back until its predicted peak fits below WARNING

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
    anon_bytes: int = 0  # resident minus file-backed and shared (statm): what trimming can free
    # macOS: the physical footprint (resident anonymous + compressed + IOKit/Metal), what
    # Activity Monitor, jetsam and Ollama judge by; None where the OS has no such figure.
    footprint_bytes: int | None = None

    @property
    def memory_bytes(self) -> int:
        """The component's memory for every decision: the footprint where the OS gives one
        (RSS leaves out compressed pages and GPU buffers), RSS otherwise."""
        return self.footprint_bytes if self.footprint_bytes is not None else self.rss_bytes

    @property
    def rss_mb(self) -> float:
        return self.rss_bytes / MIB

    @property
    def file_bytes(self) -> int:
        return self.rss_bytes - self.anon_bytes


MIB = 1024 * 1024


class ExitInfo(msgspec.Struct, frozen=True):
    """How a run ended. `code` is the exit status, `signal` the number that ended it, if any."""

    code: int | None
    signal: int | None
    reason: str  # human words: "exited 1", "killed by SIGKILL after grace", "stopped"

    @property
    def success(self) -> bool:
        return self.code == 0


class ComponentStatus(msgspec.Struct, frozen=True, gc=False):  # scalars only: no cycles to collect
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
    waiting: str | None = None  # WAITING: what for ("waits for 420 MB, 180 MB free before WARNING")
    port: int | None = None  # the port its run was given (`${PORT}`) or its fixed `port`, while it runs
    profile: str | None = None  # the profile it runs (or will next run) in; None: its own table


class KernelPressure(enum.Enum):
    """The kernel's own verdict where it gives one (macOS `kern.memorystatus_vm_pressure_level`)."""

    NORMAL = "normal"
    WARN = "warn"
    CRITICAL = "critical"


class SystemMemory(msgspec.Struct, frozen=True):
    """System-wide figures from the platform backend, in bytes and percent."""

    total_bytes: int
    available_bytes: int
    swap_total_bytes: int = 0
    swap_used_bytes: int = 0
    psi_some_avg10: float | None = None  # Linux PSI: % of time some task stalled on memory
    psi_full_avg10: float | None = None  # ... all non-idle tasks stalled
    kernel_level: KernelPressure | None = None  # macOS
    compressed_bytes: int | None = None  # macOS compressor
    # Swap-out rate over the last few seconds (Linux pswpout, macOS swapouts); None without swap.
    swap_out_mb_s: float | None = None
    # macOS, as Activity Monitor's Memory tab splits "used": app + wired + compressed;
    # cached files and purgeable pages count as available.
    app_bytes: int | None = None
    wired_bytes: int | None = None
    cached_bytes: int | None = None
    kernel_free_percent: int | None = None  # kern.memorystatus_level ("free percentage")

    @property
    def used_percent(self) -> float:
        if self.total_bytes <= 0:
            return 0.0
        return 100.0 * (self.total_bytes - self.available_bytes) / self.total_bytes


class GpuLimits(msgspec.Struct, frozen=True):
    """What the OS says a GPU may hold of unified memory (macOS): Metal's recommended working
    set for the default device, and the `iogpu.wired_limit_mb` override when one is set."""

    metal_working_set_bytes: int | None = None
    wired_limit_bytes: int | None = None

    @property
    def ceiling_bytes(self) -> int | None:
        """The most a GPU-resident model can hold: the override when set, else Metal's figure."""
        return self.wired_limit_bytes or self.metal_working_set_bytes


class MemoryDetail(msgspec.Struct, frozen=True):
    """Costlier figures for one tree (Linux smaps_rollup; macOS footprint), read on demand."""

    pss_bytes: int | None = None
    uss_bytes: int | None = None
    footprint_bytes: int | None = None


class ActionKind(enum.Enum):
    TRIM = "TRIM"  # ask the component to drop caches (its trim_signal)
    FREEZE = "FREEZE"  # SIGSTOP the tree: stops growth, frees nothing
    THAW = "THAW"  # SIGCONT
    UNLOAD = "UNLOAD"  # stop the tree (SIGCONT first if frozen, stop signal, grace, SIGKILL)
    RELOAD = "RELOAD"  # start again a component that pressure unloaded


class Action(msgspec.Struct, frozen=True):
    """One thing the policy wants done, with the rule and the numbers that justify it."""

    kind: ActionKind
    component: str
    rule: str  # e.g. "critical.unload_low"
    reason: str  # human words with the evidence
    state: MemoryState
    percent_used: float
    rss_mb: float  # the component's memory (RSS; the footprint on macOS)
    threshold_percent: float | None = None
    # Who asked, when a person did (`optimize`, `emergency-cleanup`); None when memory pressure
    # decided. What a person unloads stays unloaded; what pressure unloads comes back.
    requested_by: str | None = None


class Requested(msgspec.Struct, frozen=True):
    """A person's request to act as if memory were at some state, and where memory really is."""

    by: str  # "optimize", "emergency-cleanup"
    state: MemoryState
    percent_used: float


class Snapshot(msgspec.Struct, frozen=True):
    """One sample: the system, the stack's trees and the state they put memory in."""

    time: float  # monotonic
    system: SystemMemory
    components: dict[str, TreeUsage]
    stack_bytes: int
    budget_bytes: int | None
    percent_used: float  # max(system used %, stack / budget) in budget mode, else system used %
    state: MemoryState

    @property
    def available_mb(self) -> float:
        """Room before 100 %: the system's available memory, or what is left of the budget if less."""
        avail = self.system.available_bytes
        if self.budget_bytes is not None:
            avail = min(avail, max(0, self.budget_bytes - self.stack_bytes))
        return avail / MIB


MEMORY_STATE_ORDER = (MemoryState.HEALTHY, MemoryState.WARNING, MemoryState.CRITICAL, MemoryState.EMERGENCY)


def state_rank(state: MemoryState) -> int:
    return MEMORY_STATE_ORDER.index(state)


class RunRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One past run of a component, as the history keeps it."""

    started_unix: float
    peak_mb: float  # overall peak: kernel high-water marks summed over the tree, or the highest sample
    peak_source: str = "sampled"  # "vmhwm" (Linux), "footprint" (macOS), "sampled"
    ready_peak_mb: float | None = None  # start-to-ready peak
    steady_mb: float | None = None  # median level once ready
    time_to_ready_s: float | None = None
    trim_freed_mb: list[float] = []
    exit_reason: str | None = None
    inputs_bytes: int | None = None  # total size of the declared inputs at start
    predicted_mb: float | None = None  # what was predicted for this run
    clean_exit: bool = False  # it ended by itself with status 0 (a batch job: a whole run, ready or not)
    # The sampled anonymous and file-backed peaks, and the file-backed memory it kept touching
    # once ready (None where unmeasured): mapped pages it read once are not a need.
    anon_peak_mb: float | None = None
    file_peak_mb: float | None = None
    hot_file_mb: float | None = None

    @property
    def need_mb(self) -> float:
        """The peak less the file-backed pages it did not keep touching (clean, re-readable:
        the kernel drops them before anything is short); the whole peak where unmeasured."""
        if self.file_peak_mb is None or self.hot_file_mb is None:
            return self.peak_mb
        cold = max(0.0, self.file_peak_mb - self.hot_file_mb)
        return max(self.anon_peak_mb or 0.0, self.peak_mb - cold)
