"""macOS: vm_stat-style page counts, the kernel's pressure level and the compressor.

Live readings use psutil (host_statistics64) and `sysctlbyname` through ctypes, so no
compiled extension of ours is needed. The parsers below take the text that `vm_stat`,
`sysctl` and `memory_pressure` print; the tests run them on readings recorded on a 16 GB
M1 Pro under pressure (tests/fixtures/macos), since no Mac runs these tests.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
from collections.abc import Iterable

from ..model import KernelPressure, MemoryDetail, SystemMemory

_PAGE_LINE = re.compile(r'^"?([^":]+)"?:\s+(\d+)\.?\s*$')
_PAGE_SIZE = re.compile(r"page size of (\d+)")
_SWAP = re.compile(r"total = ([\d.]+)M\s+used = ([\d.]+)M")
# kern.memorystatus_vm_pressure_level values (xnu kern_memorystatus.h)
_LEVELS = {1: KernelPressure.NORMAL, 2: KernelPressure.WARN, 4: KernelPressure.CRITICAL}


def parse_vm_stat(text: str) -> tuple[int, dict[str, int]]:
    """(page size, {"Pages free": n, ...}) from `vm_stat` output."""
    match = _PAGE_SIZE.search(text)
    page_size = int(match.group(1)) if match else 4096
    pages = {}
    for line in text.splitlines():
        m = _PAGE_LINE.match(line.strip())
        if m:
            pages[m.group(1).strip()] = int(m.group(2))
    return page_size, pages


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
    return int(float(m.group(1)) * 1048576), int(float(m.group(2)) * 1048576)


def kernel_level_from_pages(pages: dict[str, int]) -> KernelPressure:
    """The kernel's rule (xnu vm_pageout.c) when its level cannot be read: uncompressed
    pageable pages against those plus the compressor's pages; under 0.5 is *warn*, under
    0.25 *critical* (an approximation of the thresholds the kernel derives from it)."""
    pageable = sum(pages.get(k, 0) for k in ("Pages active", "Pages inactive", "Pages free", "Pages speculative"))
    compressed = pages.get("Pages occupied by compressor", 0)
    ratio = pageable / (pageable + compressed) if pageable + compressed else 1.0
    if ratio < 0.25:
        return KernelPressure.CRITICAL
    if ratio < 0.5:
        return KernelPressure.WARN
    return KernelPressure.NORMAL


def system_from(vm_stat: str, sysctl: str, level: int | None = None) -> SystemMemory:
    """System memory from recorded tool output. Available is inactive + free pages, as psutil
    computes it on macOS, so the percentages match what the live backend reports."""
    page_size, pages = parse_vm_stat(vm_stat)
    values = parse_sysctl(sysctl)
    total = int(values.get("hw.memsize", 0))
    swap_total, swap_used = parse_swapusage(values.get("vm.swapusage", ""))
    available = (pages.get("Pages inactive", 0) + pages.get("Pages free", 0)) * page_size
    kernel = _LEVELS.get(level) if level is not None else kernel_level_from_pages(pages)
    return SystemMemory(
        total_bytes=total,
        available_bytes=available,
        swap_total_bytes=swap_total,
        swap_used_bytes=swap_used,
        kernel_level=kernel,
        compressed_bytes=pages.get("Pages occupied by compressor", 0) * page_size,
    )


def _sysctl_int(name: str) -> int | None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    value = ctypes.c_int64(0)
    size = ctypes.c_size_t(ctypes.sizeof(value))
    if libc.sysctlbyname(name.encode(), ctypes.byref(value), ctypes.byref(size), None, 0) != 0:
        return None
    return value.value if size.value == 8 else ctypes.c_int32.from_buffer(value).value


def read_system() -> SystemMemory:  # pragma: no cover - runs on macOS only
    import psutil

    vm = psutil.virtual_memory()
    swap = psutil.swap_memory()
    level = _sysctl_int("kern.memorystatus_vm_pressure_level")
    compressor_pages = _sysctl_int("vm.compressor_bytes_used")
    return SystemMemory(
        total_bytes=vm.total,
        available_bytes=vm.available,
        swap_total_bytes=swap.total,
        swap_used_bytes=swap.used,
        kernel_level=_LEVELS.get(level) if level is not None else None,
        compressed_bytes=compressor_pages,
    )


class _RusageInfoV2(ctypes.Structure):
    _fields_ = [("ri_uuid", ctypes.c_uint8 * 16)] + [
        (name, ctypes.c_uint64)
        for name in (
            "ri_user_time",
            "ri_system_time",
            "ri_pkg_idle_wkups",
            "ri_interrupt_wkups",
            "ri_pageins",
            "ri_wired_size",
            "ri_resident_size",
            "ri_phys_footprint",
            "ri_proc_start_abstime",
            "ri_proc_exit_abstime",
            "ri_child_user_time",
            "ri_child_system_time",
            "ri_child_pkg_idle_wkups",
            "ri_child_interrupt_wkups",
            "ri_child_pageins",
            "ri_child_elapsed_abstime",
            "ri_diskio_bytesread",
            "ri_diskio_byteswritten",
        )
    ]


def read_detail(pids: Iterable[int]) -> MemoryDetail:  # pragma: no cover - runs on macOS only
    """The footprint Activity Monitor shows (`ri_phys_footprint` from proc_pid_rusage)."""
    libproc = ctypes.CDLL(ctypes.util.find_library("proc") or "/usr/lib/libproc.dylib")
    total = 0
    seen = False
    for pid in pids:
        info = _RusageInfoV2()
        if libproc.proc_pid_rusage(pid, 2, ctypes.byref(info)) == 0:  # RUSAGE_INFO_V2
            total += info.ri_phys_footprint
            seen = True
    return MemoryDetail(footprint_bytes=total) if seen else MemoryDetail()
