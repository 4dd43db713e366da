"""The macOS kernel calls the supervisor makes, behind one thin seam (`MachCalls`), and the
structs they fill, defined from xnu's headers.

Everything above this seam (decoding, summing trees, computing "used", the pressure level)
is plain Python over bytes, so the tests run it on Linux with fake calls that hand back
struct bytes built from readings recorded on a real Mac (tests/fixtures/macos). The live
calls go through ctypes: no compiled extension, no root, same user.

    proc_pid_rusage(pid, RUSAGE_INFO_V4)   libproc: footprint, resident, lifetime peak, CPU
    proc_listchildpids(pid)                libproc: one process's children, no table scan
    host_statistics64(HOST_VM_INFO64)      mach: page counts (what vm_stat prints)
    sysctlbyname(name)                     libc: hw.memsize, vm.swapusage, memorystatus
    [MTLCreateSystemDefaultDevice() recommendedMaxWorkingSetSize]   Metal, via objc_msgSend
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import struct
from typing import Protocol

from ..errors import AccessDenied, NoSuchProcess

RUSAGE_INFO_V4 = 4  # bsd/sys/resource.h
HOST_VM_INFO64 = 4  # osfmk/mach/host_info.h
KERN_SUCCESS = 0

# bsd/sys/resource.h, struct rusage_info_v4: a 16-byte UUID, then 35 uint64 fields (296 bytes).
_RUSAGE_V4_FIELDS = (
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
    "ri_cpu_time_qos_default",
    "ri_cpu_time_qos_maintenance",
    "ri_cpu_time_qos_background",
    "ri_cpu_time_qos_utility",
    "ri_cpu_time_qos_legacy",
    "ri_cpu_time_qos_user_initiated",
    "ri_cpu_time_qos_user_interactive",
    "ri_billed_system_time",
    "ri_serviced_system_time",
    "ri_logical_writes",
    "ri_lifetime_max_phys_footprint",
    "ri_instructions",
    "ri_cycles",
    "ri_billed_energy",
    "ri_serviced_energy",
    "ri_interval_max_phys_footprint",
    "ri_runnable_time",
)


class RusageInfoV4(ctypes.Structure):
    _fields_ = [("ri_uuid", ctypes.c_uint8 * 16)] + [(name, ctypes.c_uint64) for name in _RUSAGE_V4_FIELDS]


class VmStatistics64(ctypes.Structure):
    """osfmk/mach/vm_statistics.h, struct vm_statistics64 (natural_t is 32 bits). Note that
    `free_count` includes `speculative_count`: vm_stat prints "Pages free" as the difference."""

    _fields_ = [
        ("free_count", ctypes.c_uint32),
        ("active_count", ctypes.c_uint32),
        ("inactive_count", ctypes.c_uint32),
        ("wire_count", ctypes.c_uint32),
        ("zero_fill_count", ctypes.c_uint64),
        ("reactivations", ctypes.c_uint64),
        ("pageins", ctypes.c_uint64),
        ("pageouts", ctypes.c_uint64),
        ("faults", ctypes.c_uint64),
        ("cow_faults", ctypes.c_uint64),
        ("lookups", ctypes.c_uint64),
        ("hits", ctypes.c_uint64),
        ("purges", ctypes.c_uint64),
        ("purgeable_count", ctypes.c_uint32),
        ("speculative_count", ctypes.c_uint32),
        ("decompressions", ctypes.c_uint64),
        ("compressions", ctypes.c_uint64),
        ("swapins", ctypes.c_uint64),
        ("swapouts", ctypes.c_uint64),
        ("compressor_page_count", ctypes.c_uint32),
        ("throttled_count", ctypes.c_uint32),
        ("external_page_count", ctypes.c_uint32),
        ("internal_page_count", ctypes.c_uint32),
        ("total_uncompressed_pages_in_compressor", ctypes.c_uint64),
    ]


HOST_VM_INFO64_COUNT = ctypes.sizeof(VmStatistics64) // ctypes.sizeof(ctypes.c_int)

_U64 = struct.Struct("<Q")
_RESIDENT = RusageInfoV4.ri_resident_size.offset
_FOOTPRINT = RusageInfoV4.ri_phys_footprint.offset
_LIFETIME_MAX = RusageInfoV4.ri_lifetime_max_phys_footprint.offset
_CPU = (RusageInfoV4.ri_user_time.offset, RusageInfoV4.ri_system_time.offset)


def rusage_memory(raw: bytes) -> tuple[int, int, int]:
    """(resident, footprint, lifetime max footprint) from a RusageInfoV4's bytes."""
    return (
        _U64.unpack_from(raw, _RESIDENT)[0],
        _U64.unpack_from(raw, _FOOTPRINT)[0],
        _U64.unpack_from(raw, _LIFETIME_MAX)[0],
    )


def rusage_cpu_units(raw: bytes) -> int:
    """User + system time from a RusageInfoV4's bytes, in mach absolute time units."""
    return int(_U64.unpack_from(raw, _CPU[0])[0] + _U64.unpack_from(raw, _CPU[1])[0])


class XswUsage(ctypes.Structure):
    """bsd/sys/sysctl.h, struct xsw_usage: what `sysctl vm.swapusage` returns."""

    _fields_ = [
        ("xsu_total", ctypes.c_uint64),
        ("xsu_avail", ctypes.c_uint64),
        ("xsu_used", ctypes.c_uint64),
        ("xsu_pagesize", ctypes.c_uint32),
        ("xsu_encrypted", ctypes.c_int32),
    ]


class MachCalls(Protocol):
    """The seam: each method is one kernel call, returning what the kernel returned."""

    def proc_pid_rusage(self, pid: int) -> bytes:
        """The bytes of a RusageInfoV4; raises NoSuchProcess / AccessDenied."""
        ...

    def proc_listchildpids(self, pid: int) -> list[int]:
        """The direct children of `pid` (empty when it has none or is gone)."""
        ...

    def host_vm_info64(self) -> bytes:
        """The bytes of a VmStatistics64; raises OSError."""
        ...

    def host_page_size(self) -> int:
        """The size of the pages host_statistics64 counts (16 KiB on Apple silicon)."""
        ...

    def timebase(self) -> tuple[int, int]:
        """mach_timebase_info: (numer, denom) from mach absolute time units to nanoseconds."""
        ...

    def sysctl(self, name: str) -> bytes | None:
        """The raw value of a sysctl, None when this kernel has no such name."""
        ...

    def metal_max_working_set(self) -> int | None:
        """The default Metal device's recommendedMaxWorkingSetSize, None without Metal."""
        ...


def int_from(raw: bytes | None) -> int | None:
    """An integer sysctl, whatever its width (some are int, some quad)."""
    if raw is None or len(raw) not in (1, 2, 4, 8):
        return None
    return int.from_bytes(raw, "little", signed=len(raw) < 8)


class LiveMachCalls:
    """The real calls, through ctypes; libraries load on first use, so this module imports
    (and its structs are checked) on any OS."""

    def __init__(self) -> None:
        self._libc: ctypes.CDLL | None = None
        self._timebase: tuple[int, int] | None = None

    def _lib(self) -> ctypes.CDLL:
        if self._libc is None:
            # libSystem re-exports libproc, libc and the mach calls.
            libc = ctypes.CDLL(ctypes.util.find_library("System") or "/usr/lib/libSystem.B.dylib", use_errno=True)
            libc.proc_pid_rusage.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
            libc.proc_listchildpids.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
            libc.mach_host_self.restype = ctypes.c_uint32
            libc.host_statistics64.argtypes = [ctypes.c_uint32, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
            libc.host_page_size.argtypes = [ctypes.c_uint32, ctypes.c_void_p]
            libc.sysctlbyname.argtypes = [ctypes.c_char_p, *[ctypes.c_void_p] * 3, ctypes.c_size_t]
            self._libc = libc
            self._host = libc.mach_host_self()
        return self._libc

    def proc_pid_rusage(self, pid: int) -> bytes:
        info = RusageInfoV4()
        if self._lib().proc_pid_rusage(pid, RUSAGE_INFO_V4, ctypes.byref(info)) != 0:
            code = ctypes.get_errno()
            raise AccessDenied(pid) if code == errno.EPERM else NoSuchProcess(pid)
        return bytes(info)

    def proc_listchildpids(self, pid: int) -> list[int]:
        capacity = 64
        while True:
            buffer = (ctypes.c_int * capacity)()
            count = self._lib().proc_listchildpids(pid, buffer, ctypes.sizeof(buffer))
            if count < 0:
                return []
            if count < capacity:  # a full buffer may have cut the list short: ask again, bigger
                return [p for p in buffer[:count] if p > 0]
            capacity *= 4

    def host_vm_info64(self) -> bytes:
        lib = self._lib()
        stats = VmStatistics64()
        count = ctypes.c_uint32(HOST_VM_INFO64_COUNT)
        result = lib.host_statistics64(self._host, HOST_VM_INFO64, ctypes.byref(stats), ctypes.byref(count))
        if result != KERN_SUCCESS:
            raise OSError(f"host_statistics64 returned {result}")
        return bytes(stats)

    def host_page_size(self) -> int:
        size = ctypes.c_size_t(0)  # vm_size_t
        if self._lib().host_page_size(self._host, ctypes.byref(size)) != KERN_SUCCESS or not size.value:
            raise OSError("host_page_size failed")
        return size.value

    def timebase(self) -> tuple[int, int]:
        if self._timebase is None:
            info = (ctypes.c_uint32 * 2)()
            if self._lib().mach_timebase_info(info) != KERN_SUCCESS or not info[1]:
                raise OSError("mach_timebase_info failed")
            self._timebase = (info[0], info[1])
        return self._timebase

    def sysctl(self, name: str) -> bytes | None:
        size = ctypes.c_size_t(0)
        lib = self._lib()
        if lib.sysctlbyname(name.encode(), None, ctypes.byref(size), None, 0) != 0:
            return None
        buffer = ctypes.create_string_buffer(size.value)
        if lib.sysctlbyname(name.encode(), buffer, ctypes.byref(size), None, 0) != 0:
            return None
        return buffer.raw[: size.value]

    def metal_max_working_set(self) -> int | None:
        try:
            metal = ctypes.CDLL("/System/Library/Frameworks/Metal.framework/Metal")
            objc = ctypes.CDLL(ctypes.util.find_library("objc") or "/usr/lib/libobjc.A.dylib")
        except OSError:
            return None
        metal.MTLCreateSystemDefaultDevice.restype = ctypes.c_void_p
        objc.sel_registerName.restype = ctypes.c_void_p
        objc.sel_registerName.argtypes = [ctypes.c_char_p]
        device = metal.MTLCreateSystemDefaultDevice()
        if not device:
            return None
        send = objc.objc_msgSend
        send.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        send.restype = ctypes.c_uint64
        try:
            return int(send(device, objc.sel_registerName(b"recommendedMaxWorkingSetSize")))
        finally:
            send(device, objc.sel_registerName(b"release"))


LIVE = LiveMachCalls()
