"""macOS: system memory from the kernel's page counts, the way Activity Monitor counts it.

One path, live and tested: the kernel calls (mach.py's seam) return struct bytes, which are
decoded into `MacReadings`; one pure function, `system_from_readings`, turns those into
`SystemMemory`. The tests feed the same decoder struct bytes built from readings recorded on
a 16 GB M1 Pro (tests/fixtures/macos), and `readings_from_text` parses that machine's
`vm_stat`/`sysctl` text into the same fields, so both must agree.

"Used" is Activity Monitor's "Memory Used": app memory (anonymous pages minus purgeable)
+ wired + the compressor's pages. Cached files and purgeable pages are available: the kernel
drops them without writing anything when it needs the room. (psutil's "available", inactive
+ free, counts every inactive anonymous page as available, which it is not: freeing it means
compressing or swapping it; and it ignores the compressor, which on a Mac under pressure holds
gigabytes: 7.1 GB on the recorded machine.)

The kernel's own verdict, `kern.memorystatus_vm_pressure_level`, comes first (warn -> at
least WARNING, critical -> at least CRITICAL); when it cannot be read, the page-ratio rule of
xnu's vm_pageout.c stands in for it (`kernel_level_from_pages`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable

import msgspec

from ..errors import AccessDenied, NoSuchProcess
from ..model import MIB, GpuLimits, KernelPressure, MemoryDetail, SystemMemory
from . import mach
from .swap import SwapWindow

# kern.memorystatus_vm_pressure_level values (xnu kern_memorystatus.h)
_LEVELS = {1: KernelPressure.NORMAL, 2: KernelPressure.WARN, 4: KernelPressure.CRITICAL}


class VmPages(msgspec.Struct, frozen=True):
    """The page counts of vm_statistics64 this module uses, named as in xnu. `free_count`
    includes the speculative pages, as in the kernel's struct."""

    free_count: int = 0
    active_count: int = 0
    inactive_count: int = 0
    speculative_count: int = 0
    wire_count: int = 0
    purgeable_count: int = 0
    external_page_count: int = 0
    internal_page_count: int = 0
    compressor_page_count: int = 0
    swapouts: int = 0


class MacReadings(msgspec.Struct, frozen=True):
    """One moment's raw figures: the page counts and the sysctls, before any judgement."""

    pages: VmPages
    page_size: int
    memsize: int
    swap_total: int = 0
    swap_used: int = 0
    pressure_level: int | None = None  # kern.memorystatus_vm_pressure_level
    free_percent: int | None = None  # kern.memorystatus_level


def kernel_level_from_pages(pages: VmPages) -> KernelPressure:
    """The kernel's rule (xnu vm_pageout.c) when its level cannot be read: uncompressed
    pageable pages against those plus the compressor's pages; under 0.5 is *warn*, under
    0.25 *critical* (an approximation of the thresholds the kernel derives from it)."""
    pageable = pages.active_count + pages.inactive_count + pages.free_count
    compressed = pages.compressor_page_count
    ratio = pageable / (pageable + compressed) if pageable + compressed else 1.0
    if ratio < 0.25:
        return KernelPressure.CRITICAL
    if ratio < 0.5:
        return KernelPressure.WARN
    return KernelPressure.NORMAL


def system_from_readings(r: MacReadings, swap_out_mb_s: float | None = None) -> SystemMemory:
    """SystemMemory from raw figures: used = app + wired + compressed (see the module's doc)."""
    p, size = r.pages, r.page_size
    app = max(0, p.internal_page_count - p.purgeable_count) * size
    wired = p.wire_count * size
    compressed = p.compressor_page_count * size
    used = app + wired + compressed
    level = _LEVELS.get(r.pressure_level) if r.pressure_level is not None else None
    return SystemMemory(
        total_bytes=r.memsize,
        available_bytes=max(0, r.memsize - used),
        swap_total_bytes=r.swap_total,
        swap_used_bytes=r.swap_used,
        kernel_level=level if level is not None else kernel_level_from_pages(p),
        compressed_bytes=compressed,
        swap_out_mb_s=swap_out_mb_s if r.swap_total else None,
        app_bytes=app,
        wired_bytes=wired,
        cached_bytes=(p.external_page_count + p.purgeable_count) * size,
        kernel_free_percent=r.free_percent,
    )


# --- decoding what the kernel calls return --------------------------------------------------------


def pages_from_struct(raw: bytes) -> VmPages:
    stats = mach.VmStatistics64.from_buffer_copy(raw)
    return VmPages(**{name: getattr(stats, name) for name in VmPages.__struct_fields__})


def readings_from(calls: mach.MachCalls) -> MacReadings:
    """Read the kernel once: host_statistics64 and the sysctls."""
    swap = calls.sysctl("vm.swapusage")
    xsw = mach.XswUsage.from_buffer_copy(swap) if swap and len(swap) >= 24 else None
    return MacReadings(
        pages=pages_from_struct(calls.host_vm_info64()),
        page_size=calls.host_page_size(),
        memsize=mach.int_from(calls.sysctl("hw.memsize")) or 0,
        swap_total=xsw.xsu_total if xsw else 0,
        swap_used=xsw.xsu_used if xsw else 0,
        pressure_level=mach.int_from(calls.sysctl("kern.memorystatus_vm_pressure_level")),
        free_percent=mach.int_from(calls.sysctl("kern.memorystatus_level")),
    )


class SystemReader:
    """The sampling loop's reader: one reading per call, and the swap-out rate across them."""

    def __init__(self, calls: mach.MachCalls | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.calls = calls if calls is not None else mach.LIVE
        self._clock = clock
        self._swap = SwapWindow()

    def read(self) -> SystemMemory:
        r = readings_from(self.calls)
        rate = self._swap.rate_mb_s(self._clock(), r.pages.swapouts * r.page_size) if r.swap_total else None
        return system_from_readings(r, rate)

    def close(self) -> None:
        pass


def read_system() -> SystemMemory:
    return SystemReader().read()


def read_detail(pids: Iterable[int], calls: mach.MachCalls | None = None) -> MemoryDetail:
    """The footprint summed over `pids` (proc_pid_rusage), for `report`."""
    calls = calls if calls is not None else mach.LIVE
    total, seen = 0, False
    for pid in pids:
        try:
            raw = calls.proc_pid_rusage(pid)
        except (NoSuchProcess, AccessDenied):
            continue
        total += mach.rusage_memory(raw)[1]
        seen = True
    return MemoryDetail(footprint_bytes=total) if seen else MemoryDetail()


def gpu_limits(calls: mach.MachCalls | None = None) -> GpuLimits:
    """Metal's recommended working set and the `iogpu.wired_limit_mb` override (0 = unset)."""
    calls = calls if calls is not None else mach.LIVE
    wired_mb = mach.int_from(calls.sysctl("iogpu.wired_limit_mb"))
    return GpuLimits(
        metal_working_set_bytes=calls.metal_max_working_set(),
        wired_limit_bytes=wired_mb * MIB if wired_mb else None,
    )


# --- the recorded tools' text, parsed into the same fields -----------------------------------------

_PAGE_LINE = re.compile(r'^"?([^":]+)"?:\s+(\d+)\.?\s*$')
_PAGE_SIZE = re.compile(r"page size of (\d+)")
_SWAP = re.compile(r"total = ([\d.]+)M\s+used = ([\d.]+)M")
_FREE_PERCENT = re.compile(r"memory free percentage:\s*(\d+)%")
# vm_stat's labels (and memory_pressure's, where they differ) for each field
_LABELS = {
    "active_count": ("Pages active",),
    "inactive_count": ("Pages inactive",),
    "speculative_count": ("Pages speculative",),
    "wire_count": ("Pages wired down",),
    "purgeable_count": ("Pages purgeable",),
    "external_page_count": ("File-backed pages",),
    "internal_page_count": ("Anonymous pages",),
    "compressor_page_count": ("Pages occupied by compressor", "Pages used by compressor"),
    "swapouts": ("Swapouts",),
}


def parse_vm_stat(text: str) -> tuple[int, dict[str, int]]:
    """(page size, {"Pages free": n, ...}) from `vm_stat` (or `memory_pressure`) output."""
    match = _PAGE_SIZE.search(text)
    page_size = int(match.group(1)) if match else 4096
    pages = {}
    for line in text.splitlines():
        m = _PAGE_LINE.match(line.strip())
        if m:
            pages[m.group(1).strip()] = int(m.group(2))
    return page_size, pages


def pages_from_vm_stat(labels: dict[str, int]) -> VmPages:
    """vm_stat prints "Pages free" without the speculative pages; the struct counts them in."""
    values = {field: next((labels[k] for k in keys if k in labels), 0) for field, keys in _LABELS.items()}
    return VmPages(free_count=labels.get("Pages free", 0) + values["speculative_count"], **values)


def parse_sysctl(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def parse_swapusage(value: str) -> tuple[int, int]:
    """`total = 2048.00M  used = 1470.06M  free = ...` -> (total, used) bytes."""
    m = _SWAP.search(value)
    if not m:
        return 0, 0
    return int(float(m.group(1)) * MIB), int(float(m.group(2)) * MIB)


def readings_from_text(vm_stat: str, sysctl: str, memory_pressure: str = "", level: int | None = None) -> MacReadings:
    """MacReadings from what `vm_stat`, `sysctl` and `memory_pressure` printed."""
    page_size, labels = parse_vm_stat(vm_stat)
    values = parse_sysctl(sysctl)
    swap_total, swap_used = parse_swapusage(values.get("vm.swapusage", ""))
    free = _FREE_PERCENT.search(memory_pressure)
    return MacReadings(
        pages=pages_from_vm_stat(labels),
        page_size=page_size,
        memsize=int(values.get("hw.memsize", 0)),
        swap_total=swap_total,
        swap_used=swap_used,
        pressure_level=level,
        free_percent=int(free.group(1)) if free else None,
    )
