"""Linux: /proc/meminfo, PSI (/proc/pressure/memory, kernel 4.20+), smaps_rollup (4.14+)."""

from __future__ import annotations

import os
from typing import Iterable

from ..model import MemoryDetail, SystemMemory


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


def parse_psi(text: str) -> tuple[float | None, float | None]:
    """(some avg10, full avg10) from /proc/pressure/memory."""
    some = full = None
    for line in text.splitlines():
        fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
        if line.startswith("some"):
            some = float(fields.get("avg10", "nan"))
        elif line.startswith("full"):
            full = float(fields.get("avg10", "nan"))
    return some, full


_WANTED = ("MemTotal:", "MemAvailable:", "MemFree:", "Cached:", "SwapTotal:", "SwapFree:")


def parse_meminfo_fields(text: str) -> dict[str, int]:
    """Only the fields the backend uses (a full parse of ~55 lines costs more than the read)."""
    out = {}
    for key in _WANTED:
        if text.startswith(key):
            at = 0
        else:
            at = text.find("\n" + key)
            if at < 0:
                continue
            at += 1
        end = text.find("\n", at)
        out[key[:-1]] = int(text[at + len(key) : end if end >= 0 else None].split()[0]) * 1024
    return out


def system_from(meminfo: str, psi: str | None) -> SystemMemory:
    info = parse_meminfo_fields(meminfo)
    total = info["MemTotal"]
    # MemAvailable exists since 3.14; before it, free + cache is the usual approximation.
    available = info.get("MemAvailable", info.get("MemFree", 0) + info.get("Cached", 0))
    some, full = parse_psi(psi) if psi else (None, None)
    return SystemMemory(
        total_bytes=total,
        available_bytes=available,
        swap_total_bytes=info.get("SwapTotal", 0),
        swap_used_bytes=info.get("SwapTotal", 0) - info.get("SwapFree", 0),
        psi_some_avg10=some,
        psi_full_avg10=full,
    )


def read_system() -> SystemMemory:
    meminfo = _read("/proc/meminfo")
    if meminfo is None:
        raise OSError("cannot read /proc/meminfo")
    return system_from(meminfo, _read("/proc/pressure/memory"))


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
