"""Memory backends, one per OS, behind one contract (chosen once, at import):

    read_system() -> SystemMemory
        System-wide figures. Cheap (tens of microseconds on Linux): called on every sample,
        including the fast samples under pressure.
    SystemReader().read() -> SystemMemory, .close()
        The same for a sampling loop: the Linux backend keeps its /proc files open between
        samples; elsewhere it calls read_system().
    read_detail(pids) -> MemoryDetail
        Costlier per-tree figures (PSS/USS on Linux from smaps_rollup, which holds the
        target's mmap lock and costs ~10 ms per GB; the footprint on macOS). Only on demand
        (`report`), never on the sampling hot path.

Per-process and tree memory sit behind the process seam (`procs`); the sampler (sampler.py)
reads both from its own thread.
"""

from __future__ import annotations

import sys

from ..model import SystemMemory

if sys.platform.startswith("linux"):
    from .linux import SystemReader, read_detail, read_system
else:
    if sys.platform == "darwin":
        from .darwin import read_detail, read_system
    else:  # pragma: no cover - other Unixes: what psutil knows
        from .generic import read_detail, read_system

    class SystemReader:  # type: ignore[no-redef]
        """Nothing to keep open: each read is a fresh reading."""

        def read(self) -> SystemMemory:
            return read_system()

        def close(self) -> None:
            pass


__all__ = ["SystemReader", "read_detail", "read_system"]


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
