"""Memory backends, one per OS, behind one contract (chosen once, at import):

    read_system() -> SystemMemory
        System-wide figures. Cheap (tens of microseconds on Linux): called on every sample,
        including the fast samples under pressure.
    SystemReader().read() -> SystemMemory, .close()
        The same for a sampling loop: the Linux backend keeps its /proc files open between
        samples; elsewhere it calls read_system().
    read_gpu_limits() -> GpuLimits
        What the OS says the GPU may hold of unified memory (macOS); empty elsewhere. Read
        once at start: it changes only with a sysctl the user sets.
    read_detail(pids) -> MemoryDetail
        Costlier per-tree figures (PSS/USS on Linux from smaps_rollup, which holds the
        target's mmap lock and costs ~10 ms per GB; the footprint on macOS). Only on demand
        (`report`), never on the sampling hot path.

Per-process and tree memory sit behind the process seam (`procs`); the sampler (sampler.py)
reads both from its own thread.
"""

from __future__ import annotations

import sys

from ..model import GpuLimits, SystemMemory

if sys.platform.startswith("linux"):
    from .linux import SystemReader, read_detail, read_system
elif sys.platform == "darwin":  # pragma: no cover - tested on recorded readings (tests/test_darwin.py)
    from .darwin import SystemReader, read_detail, read_system
else:  # pragma: no cover - other Unixes: what psutil knows
    from .generic import read_detail, read_system

    class SystemReader:  # type: ignore[no-redef]
        """Nothing to keep open: each read is a fresh reading."""

        def read(self) -> SystemMemory:
            return read_system()

        def close(self) -> None:
            pass


def read_gpu_limits() -> GpuLimits:
    if sys.platform == "darwin":  # pragma: no cover - tested on recorded readings
        from .darwin import gpu_limits

        try:
            return gpu_limits()
        except OSError:
            return GpuLimits()
    return GpuLimits()


__all__ = ["SystemReader", "read_detail", "read_gpu_limits", "read_system"]


def suspended_seconds() -> float:
    """Seconds the machine has spent asleep since boot, as far as the clocks tell: the gap
    between a clock that counts suspend and `time.monotonic()`, which (on Linux and macOS)
    does not. A jump between two samples means the machine just woke up."""
    import time

    if hasattr(time, "CLOCK_BOOTTIME"):  # Linux
        return time.clock_gettime(time.CLOCK_BOOTTIME) - time.monotonic()
    if sys.platform == "darwin":  # CLOCK_MONOTONIC counts sleep there; time.monotonic() does not
        return time.clock_gettime(time.CLOCK_MONOTONIC) - time.monotonic()
    return 0.0
