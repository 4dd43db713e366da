"""In-process components: an object loaded into the caller's own process (the seed's
`load_component("nlp_engine", nlp)`), managed beside real process trees.

It has no process of its own, so:
- its memory is *attributed*: the process's growth across the load (from the caller's
  `can_load_component` to `load_component`), else what tracemalloc traced over the same span
  when it is tracing, else the component's estimate; `report` says which (`attribution`);
- it cannot be frozen (SIGSTOP would stop the caller): the policy skips it for freezing and
  goes straight to trimming and unloading by priority;
- trimming calls the object's `trim()` or `clear_cache()`; unloading calls its `unload()`
  or `close()` (awaited if a coroutine), drops the manager's reference, collects garbage and
  measures what came back;
- it never ends by itself, and once unloaded it cannot be started again: its owner loads a
  new object.
"""

from __future__ import annotations

import _tracemalloc  # the C module: the tracemalloc package's imports would ride along in `up`
import functools
import gc
import inspect
import os
import sys
import time
from typing import Any

import anyio
import msgspec
import structlog

from . import procs
from .launcher import Child
from .model import MIB, ExitInfo, ProcessIdentity

log = structlog.get_logger("ironcliw.inprocess")

GROWTH_NOISE_BYTES = 1 * MIB  # less growth than this across a load says nothing
TRIM_METHODS = ("trim", "clear_cache")
UNLOAD_METHODS = ("unload", "close")


class LoadMark(msgspec.Struct, frozen=True):
    """The process's memory when a load began (at `can_load_component`)."""

    time: float
    rss_bytes: int
    traced_bytes: int | None  # tracemalloc's current total, if it was tracing


def mark_now() -> LoadMark:
    traced = _tracemalloc.get_traced_memory()[0] if _tracemalloc.is_tracing() else None
    return LoadMark(time.monotonic(), procs.own_rss_bytes(), traced)


def attribute(mark: LoadMark | None, now: LoadMark, estimate_bytes: int) -> tuple[int, str]:
    """(bytes, basis) an in-process load is charged with: "growth" of the process across the
    load, "tracemalloc" when RSS did not move (allocations reused freed pages) but tracing saw
    them, else the configured "estimate"."""
    if mark is not None:
        growth = now.rss_bytes - mark.rss_bytes
        if growth >= GROWTH_NOISE_BYTES:
            return growth, "growth"
        if mark.traced_bytes is not None and now.traced_bytes is not None:
            traced = now.traced_bytes - mark.traced_bytes
            if traced >= GROWTH_NOISE_BYTES:
                return traced, "tracemalloc"
    return estimate_bytes, "estimate"


def release_to_os() -> None:
    """Collect garbage, then hand the allocator's free memory back to the OS, so that what an
    object let go of shows in the process's RSS: glibc keeps freed heap (and, once its mmap
    threshold has risen, even blocks of tens of MB) until malloc_trim; macOS's malloc until
    malloc_zone_pressure_relief."""
    gc.collect()
    libc = _libc()
    if libc is None:
        return
    try:
        if sys.platform == "darwin":
            libc.malloc_zone_pressure_relief(None, 0)
        else:
            libc.malloc_trim(0)
    except AttributeError:  # not glibc (musl has no malloc_trim): nothing to hand back
        pass


@functools.cache
def _libc() -> Any:
    """libc through ctypes, imported on the first trim or unload: `up` without in-process
    components does not carry ctypes (its imports cost ~1 MB of the supervisor's RSS)."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c"))
    except OSError:
        return None


def _method(obj: object, names: tuple[str, ...]) -> Any:
    return next((getattr(obj, n) for n in names if callable(getattr(obj, n, None))), None)


class InProcess(Child):
    """The Child of an in-process component: no process, an object."""

    in_process = True

    def __init__(self, obj: object, attributed_bytes: int, basis: str) -> None:
        self.obj: object | None = obj
        self.attributed_bytes = attributed_bytes
        self.attribution = basis
        self.can_trim = _method(obj, TRIM_METHODS) is not None
        self.identity = procs.identity(os.getpid())
        self.pid = os.getpid()  # for status rows; never a sampled root, never signalled
        self.pgid = -1
        self.owns_group = False
        self.find_orphans = None
        self.pidfd = None
        self.output_fd = -1
        self.inherited_peak = 0
        self.freed_bytes: int | None = None
        self._unloaded = anyio.Event()

    @property
    def returncode(self) -> int | None:
        return 0 if self._unloaded.is_set() else None

    async def wait(self) -> int:
        await self._unloaded.wait()
        return 0

    def send(self, sig: int) -> bool:
        return False  # a signal would reach the caller's own process

    def tree(self) -> list[ProcessIdentity]:
        return []

    def group(self) -> list[ProcessIdentity]:
        return []

    def signal_tree(self, sig: int, known: list[ProcessIdentity]) -> list[int]:
        return []

    def signal_fast(self, sig: int) -> list[int]:
        return []

    def tree_hwm_bytes(self) -> int | None:
        return None

    def hot_file_bytes(self) -> int | None:
        return None  # the caller's own process: its pages' bits are not ours to clear

    async def freeze(self, verify_s: float) -> tuple[list[int], list[int]]:
        return [], []  # cannot be frozen: the policy does not ask (ComponentView.can_freeze)

    def attributed(self) -> int:
        """The memory charged to the object now (the sampler's thread reads it every reading)."""
        return self.attributed_bytes

    def request_trim(self, signal_name: str | None) -> bool:
        """Call the object's trim()/clear_cache(); what the process gives back comes off its charge."""
        trim = _method(self.obj, TRIM_METHODS)
        if trim is None:
            return False
        before = procs.own_rss_bytes()
        try:
            trim()
        except Exception:
            log.exception("trim_failed", method=getattr(trim, "__name__", "trim"))
            return False
        release_to_os()
        self.attributed_bytes = max(0, self.attributed_bytes - max(0, before - procs.own_rss_bytes()))
        return True

    async def stop(self, stop_signal: int, grace_s: float, component: str, was_frozen: bool) -> ExitInfo:
        return ExitInfo(code=0, signal=None, reason=await self.unload(component))

    async def unload(self, component: str) -> str:
        """Unload the object and say what came back."""
        obj, self.obj = self.obj, None
        before = procs.own_rss_bytes()
        close = _method(obj, UNLOAD_METHODS)
        try:
            if close is not None:
                result = close()
                if inspect.isawaitable(result):
                    await result
        except Exception:
            log.exception("unload_failed", component=component)
        del obj, close
        release_to_os()
        self.freed_bytes = max(0, before - procs.own_rss_bytes())
        self._unloaded.set()
        log.info("unloaded_in_process", component=component, freed_mb=round(self.freed_bytes / MIB, 1))
        return f"{self.freed_bytes / MIB:.0f} MB came back (references held elsewhere keep the rest)"

    def close(self) -> None:
        pass
