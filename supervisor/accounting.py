"""One component's memory as measured: the newest reading, the run's peaks, the recent
growth and the trend. Plain data changed only through `ComponentMemory`'s methods: the
monitor records readings and high-water marks, the runner marks a run's start, readiness
and end, the enforcer a trim's effect. No clock and no OS: times arrive with the readings.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

from .model import MIB, TreeUsage

GROWTH_WINDOW_S = 1.0  # `growing` compares the readings of this last second
RATE_WINDOW_S = 0.3  # `growth_bytes_s` is measured over this
GROWTH_NOISE_BYTES = 1 << 20
HOT_FILE_MIN_BYTES = 32 * MIB  # file-backed memory below this is not measured for its hot share
READY_SAMPLES_KEPT = 4096  # the run's readings while READY, for its steady (median) size
TREND_POINTS_KEPT = 300  # one point every TREND_EVERY_S (monitor.py): 10 minutes


class RunMemory:
    """What the current run has shown; becomes part of its history record at the end."""

    def __init__(self) -> None:
        self.hwm_bytes: int | None = None  # the kernel's high-water marks, folded in
        self.ready_peak_bytes: int | None = None  # the peak up to READY
        self.ready_samples: list[int] = []
        self.trim_freed_mb: list[float] = []
        self.anon_peak_bytes = 0  # the highest sampled anonymous and file-backed parts
        self.file_peak_bytes = 0
        self.hot_file_bytes: int | None = None  # the most file-backed memory touched in one window since READY
        self.hot_window_open = False  # the referenced bits were cleared at a look: the next one measures


class ComponentMemory:
    def __init__(self) -> None:
        self.pid: int | None = None  # the leader whose tree these figures are of
        self.usage = TreeUsage(0, 0)
        self.peak_sampled_bytes = 0  # highest sampled memory (RSS, or the footprint on macOS) of this run
        self.recent_bytes: deque[tuple[float, int]] = deque()  # (time, bytes) over the last GROWTH_WINDOW_S
        self.trend_points: deque[tuple[float, float]] = deque(maxlen=TREND_POINTS_KEPT)  # (time, MB)
        self.trim_freed_mb: deque[float] = deque(maxlen=20)  # measured effect of each trim request
        self.run = RunMemory()
        self.cpu_seen: tuple[float, float] | None = None  # (when, the tree's CPU seconds) at the last look

    # --- the runner: a run's life --------------------------------------------------------

    def begin_run(self, pid: int) -> None:
        self.pid = pid
        self.cpu_seen = None
        self.peak_sampled_bytes = 0
        self.recent_bytes.clear()
        self.run = RunMemory()

    def mark_ready(self) -> None:
        self.run.ready_peak_bytes = max(self.run.hwm_bytes or 0, self.peak_sampled_bytes)

    def end_run(self) -> None:
        self.pid = None
        self.usage = TreeUsage(0, 0)

    # --- the monitor: readings -----------------------------------------------------------

    def record(self, readings: Sequence[tuple[float, TreeUsage]], ready: bool, trend_times: set[float]) -> None:
        """Readings of this tree, (time, usage) in order: one per sample, or a quiet minute at
        once (a few C-level passes instead of a call per reading). `ready`: the component is
        READY (its steady size counts only those); `trend_times`: readings that are trend points."""
        self.usage = readings[-1][1]
        values = [u.memory_bytes for _, u in readings]
        self.peak_sampled_bytes = max(self.peak_sampled_bytes, *values)
        run = self.run
        run.anon_peak_bytes = max(run.anon_peak_bytes, *(u.anon_bytes for _, u in readings))
        run.file_peak_bytes = max(run.file_peak_bytes, *(u.file_bytes for _, u in readings))
        if ready:
            kept = self.run.ready_samples
            kept.extend(values[: READY_SAMPLES_KEPT - len(kept)])
        last = readings[-1][0]
        self.recent_bytes.extend((t, u.memory_bytes) for t, u in readings if last - t <= GROWTH_WINDOW_S)
        while self.recent_bytes and last - self.recent_bytes[0][0] > GROWTH_WINDOW_S:
            self.recent_bytes.popleft()
        if trend_times:
            self.trend_points.extend((t, u.memory_bytes / MIB) for t, u in readings if t in trend_times)

    def busy_since_last_look(self, cpu_seconds: float | None, now: float, busy_share: float) -> bool:
        """Whether the tree used at least `busy_share` of a core since the previous look: a
        component at work is in use, whoever asked it (a request that did not go through the
        supervisor, a job of its own), so idle unloading and make-room must not take it."""
        previous = self.cpu_seen
        self.cpu_seen = (now, cpu_seconds) if cpu_seconds is not None else None
        if previous is None or cpu_seconds is None or now <= previous[0]:
            return False
        return (cpu_seconds - previous[1]) / (now - previous[0]) >= busy_share

    def fold_hwm(self, hwm_bytes: int | None) -> None:
        """The kernel's high-water mark of the tree, read now, into this run's peak."""
        if hwm_bytes is not None:
            self.run.hwm_bytes = max(self.run.hwm_bytes or 0, hwm_bytes)

    def wants_hot_window(self) -> bool:
        """Whether to read which mapped pages it touches (smaps and clear_refs cost a walk of
        its page tables): only once READY, and only while it maps enough for the answer to
        change a prediction; a small process's libraries are not worth the reads."""
        return self.run.ready_peak_bytes is not None and self.usage.file_bytes >= HOT_FILE_MIN_BYTES

    def hot_window(self, touched_bytes: int | None) -> None:
        """A look's reading (procs.tree_hot_file_bytes, which also starts the next window): it
        counts if a window was open; the first one only opens it (it saw the load, too)."""
        if self.run.hot_window_open:
            self.fold_hot_file(touched_bytes)
        self.run.hot_window_open = touched_bytes is not None

    def last_look(self, hwm_bytes: int | None, read_hot: Callable[[], int | None]) -> None:
        """Before the run's processes go: their high-water mark, and the file-backed memory
        touched since the previous look if a window is open (`read_hot` is called only then)."""
        self.fold_hwm(hwm_bytes)
        if self.run.hot_window_open:
            self.fold_hot_file(read_hot())

    def fold_hot_file(self, hot_bytes: int | None) -> None:
        """File-backed memory touched in the window that just ended (procs.tree_hot_file_bytes)."""
        if hot_bytes is not None:
            self.run.hot_file_bytes = max(self.run.hot_file_bytes or 0, hot_bytes)

    # --- the enforcer: a trim's effect ---------------------------------------------------

    def trim_measured(self, freed_mb: float) -> None:
        self.trim_freed_mb.append(freed_mb)
        self.run.trim_freed_mb.append(freed_mb)

    # --- what it says --------------------------------------------------------------------

    @property
    def growth_bytes_s(self) -> float:
        """Growth rate right now: over the samples of the last RATE_WINDOW_S, and only while
        the latest sample is still higher than the one before (a burst that ended is not growth)."""
        recent = self.recent_bytes
        if len(recent) < 3 or recent[-1][1] <= recent[-2][1]:
            return 0.0
        t1, v1 = recent[-1]
        first = next(((t, v) for t, v in recent if t1 - t <= RATE_WINDOW_S), None)
        if first is None or first[0] >= t1:
            return 0.0
        return (v1 - first[1]) / (t1 - first[0])

    @property
    def growing(self) -> bool:
        """Grew by more than noise over the last GROWTH_WINDOW_S."""
        if len(self.recent_bytes) < 2:
            return False
        return self.recent_bytes[-1][1] - self.recent_bytes[0][1] > GROWTH_NOISE_BYTES

    def run_peak(self, exit_peak_bytes: int | None) -> tuple[int, str]:
        """The run's peak in bytes and where it came from ("vmhwm" or "sampled"), with the
        leader's own lifetime peak from wait4 when it has exited."""
        if exit_peak_bytes:
            self.fold_hwm(exit_peak_bytes)
        hwm, sampled = self.run.hwm_bytes or 0, self.peak_sampled_bytes
        return max(hwm, sampled), "vmhwm" if hwm and hwm >= sampled else "sampled"

    def steady_bytes(self) -> int | None:
        """The median of the run's readings while READY."""
        samples = sorted(self.run.ready_samples)
        return samples[len(samples) // 2] if samples else None
