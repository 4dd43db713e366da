"""Fakes for the one seam no Linux machine can offer: the macOS kernel calls
(supervisor/platform/mach.py's `MachCalls`). Each returns the struct bytes the real call would,
built here field by field from recorded readings (tests/fixtures/macos) or, for whole process
trees, from this machine's /proc, so everything above the seam runs for real."""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from supervisor.errors import NoSuchProcess
from supervisor.platform import mach

FIXTURES = Path(__file__).parent / "fixtures" / "macos"
M1PRO = FIXTURES / "m1pro-16gb-under-pressure"

# vm_stat's labels for each vm_statistics64 field (xnu names), written out here rather than
# taken from the code under test.
VM_STAT_FIELDS = {
    "active_count": "Pages active",
    "inactive_count": "Pages inactive",
    "speculative_count": "Pages speculative",
    "throttled_count": "Pages throttled",
    "wire_count": "Pages wired down",
    "purgeable_count": "Pages purgeable",
    "faults": "Translation faults",
    "cow_faults": "Pages copy-on-write",
    "zero_fill_count": "Pages zero filled",
    "reactivations": "Pages reactivated",
    "purges": "Pages purged",
    "external_page_count": "File-backed pages",
    "internal_page_count": "Anonymous pages",
    "total_uncompressed_pages_in_compressor": "Pages stored in compressor",
    "compressor_page_count": "Pages occupied by compressor",
    "decompressions": "Decompressions",
    "compressions": "Compressions",
    "pageins": "Pageins",
    "pageouts": "Pageouts",
    "swapins": "Swapins",
    "swapouts": "Swapouts",
}


def vm_stat_labels(text: str) -> dict[str, int]:
    return {m[0]: int(m[1]) for m in re.findall(r'^"?([A-Za-z -]+)"?:\s+(\d+)\.$', text, re.M)}


def vm_statistics_bytes(labels: dict[str, int], **override: int) -> bytes:
    """A vm_statistics64 as host_statistics64 fills it. vm_stat prints "Pages free" without
    the speculative pages; the kernel's free_count includes them."""
    stats = mach.VmStatistics64()
    for name, label in VM_STAT_FIELDS.items():
        setattr(stats, name, labels.get(label, 0))
    stats.free_count = labels["Pages free"] + labels["Pages speculative"]
    for name, value in override.items():
        setattr(stats, name, value)
    return bytes(stats)


def xsw_usage_bytes(total: int, used: int) -> bytes:
    return bytes(mach.XswUsage(xsu_total=total, xsu_avail=total - used, xsu_used=used, xsu_pagesize=16384))


APPLE_SILICON_TIMEBASE = (125, 3)  # mach_timebase_info on an M1: 1 tick = 125/3 ns


def rusage_bytes(resident: int, footprint: int, lifetime_max: int, cpu_seconds: float = 0.0) -> bytes:
    info = mach.RusageInfoV4(ri_resident_size=resident, ri_phys_footprint=footprint)
    info.ri_lifetime_max_phys_footprint = lifetime_max
    ticks = int(cpu_seconds * 1e9 * APPLE_SILICON_TIMEBASE[1] / APPLE_SILICON_TIMEBASE[0])
    info.ri_user_time, info.ri_system_time = ticks * 3 // 4, ticks - ticks * 3 // 4
    return bytes(info)


@dataclass
class FakeProcess:
    children: list[int] = field(default_factory=list)
    resident: int = 0
    footprint: int = 0
    lifetime_max: int = 0
    cpu_seconds: float = 0.0


class RecordedMac:
    """The kernel of the recorded M1 Pro (16 GB, under pressure), plus whatever processes,
    pressure level and GPU figures a test gives it."""

    def __init__(self, fixture: Path = M1PRO) -> None:
        self.labels = vm_stat_labels((fixture / "vm_stat.txt").read_text())
        self.vm_override: dict[str, int] = {}
        swap = re.search(r"total = ([\d.]+)M\s+used = ([\d.]+)M", (fixture / "sysctl.txt").read_text())
        assert swap is not None
        free = re.search(r"free percentage: (\d+)%", (fixture / "memory_pressure.txt").read_text())
        assert free is not None
        self.sysctls: dict[str, bytes] = {
            "hw.memsize": struct.pack("<Q", 17179869184),
            "vm.swapusage": xsw_usage_bytes(int(float(swap[1]) * 1048576), int(float(swap[2]) * 1048576)),
            "kern.memorystatus_level": struct.pack("<i", int(free[1])),
            # kern.memorystatus_vm_pressure_level was not recorded: absent unless a test sets it
        }
        self.processes: dict[int, FakeProcess] = {}
        self.metal: int | None = None

    def proc_pid_rusage(self, pid: int) -> bytes:
        proc = self.processes.get(pid)
        if proc is None:
            raise NoSuchProcess(pid)
        return rusage_bytes(proc.resident, proc.footprint, proc.lifetime_max, proc.cpu_seconds)

    def proc_listchildpids(self, pid: int) -> list[int]:
        proc = self.processes.get(pid)
        return list(proc.children) if proc else []

    def host_vm_info64(self) -> bytes:
        return vm_statistics_bytes(self.labels, **self.vm_override)

    def host_page_size(self) -> int:
        return 16384

    def timebase(self) -> tuple[int, int]:
        return APPLE_SILICON_TIMEBASE

    def sysctl(self, name: str) -> bytes | None:
        return self.sysctls.get(name)

    def metal_max_working_set(self) -> int | None:
        return self.metal


class ProcBackedMac(RecordedMac):
    """Process calls answered from this machine's /proc (children from the tasks' `children`
    files; resident = RSS, footprint = RssAnon, lifetime max = VmHWM), so the macOS backend
    walks real trees of real processes."""

    def proc_pid_rusage(self, pid: int) -> bytes:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            raise NoSuchProcess(pid) from None
        kb = {k: int(v) * 1024 for k, v in re.findall(r"^(VmRSS|RssAnon|VmHWM):\s+(\d+) kB", status, re.M)}
        if "VmRSS" not in kb:  # a zombie: no memory left
            raise NoSuchProcess(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            raise NoSuchProcess(pid) from None
        fields = stat[stat.rindex(")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return rusage_bytes(kb["VmRSS"], kb.get("RssAnon", 0), kb.get("VmHWM", 0), cpu)

    def proc_listchildpids(self, pid: int) -> list[int]:
        children: list[int] = []
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                children += map(int, Path(f"/proc/{pid}/task/{task}/children").read_text().split())
        except OSError:
            return []
        return children
