"""Linux: /proc/meminfo, PSI (/proc/pressure/memory, kernel 4.20+), smaps_rollup (4.14+)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

from ..model import MemoryDetail, SystemMemory
from .swap import SwapWindow

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _read(path: str) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, 8192).decode("ascii", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def parse_meminfo(text: str) -> dict[str, int]:
    """`Key:   123 kB` lines -> {Key: bytes}."""
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            out[key] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    return out


def system_from(meminfo: str, psi: str | None) -> SystemMemory:
    """System figures from the text of /proc/meminfo and /proc/pressure/memory."""
    return system_from_bytes(meminfo.encode(), psi.encode() if psi else None)


def _meminfo_kb(meminfo: bytes, key: bytes) -> int | None:
    at = meminfo.find(key)
    if at < 0:
        return None
    at += len(key)
    return int(meminfo[at : meminfo.find(b"kB", at)])


def _psi_avg10(psi: bytes, line: bytes) -> float | None:
    at = psi.find(line)
    if at < 0:
        return None
    at = psi.find(b"avg10=", at) + 6
    return float(psi[at : psi.find(b" ", at)])


def swapped_out_pages(vmstat: bytes) -> int | None:
    """`pswpout` from /proc/vmstat: pages swapped out since boot."""
    at = vmstat.find(b"\npswpout ")
    if at < 0:
        return None
    at += 9
    return int(vmstat[at : vmstat.find(b"\n", at)])


def system_from_bytes(meminfo: bytes, psi: bytes | None, swap_out_mb_s: float | None = None) -> SystemMemory:
    """`system_from` for raw reads: a find per field and no decoding (the sampler's hot path:
    a regex or a full parse of meminfo costs more than the kernel takes to produce it).
    MemAvailable exists since 3.14; before it, free + cached is the usual approximation."""
    total = _meminfo_kb(meminfo, b"MemTotal:")
    if total is None:
        raise OSError("no MemTotal in /proc/meminfo")
    available = _meminfo_kb(meminfo, b"\nMemAvailable:")
    if available is None:
        available = (_meminfo_kb(meminfo, b"\nMemFree:") or 0) + (_meminfo_kb(meminfo, b"\nCached:") or 0)
    swap_total = _meminfo_kb(meminfo, b"\nSwapTotal:") or 0
    swap_free = _meminfo_kb(meminfo, b"\nSwapFree:") or 0
    return SystemMemory(
        total_bytes=total * 1024,
        available_bytes=available * 1024,
        swap_total_bytes=swap_total * 1024,
        swap_used_bytes=(swap_total - swap_free) * 1024,
        psi_some_avg10=_psi_avg10(psi, b"some ") if psi else None,
        psi_full_avg10=_psi_avg10(psi, b"full ") if psi else None,
        swap_out_mb_s=swap_out_mb_s if swap_total else None,
    )


def read_system() -> SystemMemory:
    reader = SystemReader()
    try:
        return reader.read()
    finally:
        reader.close()


class SystemReader:
    """/proc/meminfo and PSI for the sampling loop, through descriptors opened on the first
    read, kept open between samples and re-read with pread (see procs.TreeSampler for why).
    /proc/vmstat, for the swap-out rate, is read only while the machine has swap."""

    def __init__(self) -> None:
        self._meminfo: int | None = None
        self._psi: int | None = None
        self._vmstat: int | None = None
        self._swap = SwapWindow()

    def read(self) -> SystemMemory:
        if self._meminfo is None:
            self._meminfo = os.open("/proc/meminfo", os.O_RDONLY | os.O_CLOEXEC)
            try:
                self._psi = os.open("/proc/pressure/memory", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:  # before 4.20, or PSI switched off (psi=0)
                self._psi = None
        psi = None
        if self._psi is not None:
            try:
                psi = os.pread(self._psi, 512, 0)
            except OSError:  # the file can exist while PSI is unsupported
                psi = None
        meminfo = os.pread(self._meminfo, 8192, 0)
        has_swap = bool(_meminfo_kb(meminfo, b"\nSwapTotal:"))
        return system_from_bytes(meminfo, psi, self._swap_rate() if has_swap else None)

    def _swap_rate(self) -> float | None:
        if self._vmstat is None:
            self._vmstat = os.open("/proc/vmstat", os.O_RDONLY | os.O_CLOEXEC)
        pages = swapped_out_pages(os.pread(self._vmstat, 16384, 0))
        return None if pages is None else self._swap.rate_mb_s(time.monotonic(), pages * PAGE_SIZE)

    def close(self) -> None:
        for fd in (self._meminfo, self._psi, self._vmstat):
            if fd is not None:
                os.close(fd)
        self._meminfo = self._psi = self._vmstat = None


def parse_smaps_rollup(text: str) -> tuple[int, int]:
    """(PSS, USS) in bytes; USS is private clean + private dirty."""
    info = parse_meminfo(text)
    return info.get("Pss", 0), info.get("Private_Clean", 0) + info.get("Private_Dirty", 0)


def read_detail(pids: Iterable[int]) -> MemoryDetail:
    pss = uss = 0
    seen = False
    for pid in pids:
        text = _read(f"/proc/{pid}/smaps_rollup")
        if text is None:
            continue
        p, u = parse_smaps_rollup(text)
        pss += p
        uss += u
        seen = True
    return MemoryDetail(pss_bytes=pss, uss_bytes=uss) if seen else MemoryDetail()
