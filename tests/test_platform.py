"""Memory backends: the Linux parsers and live reading; macOS against recorded readings."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from supervisor.model import KernelPressure
from supervisor.platform import darwin, linux

FIXTURES = Path(__file__).parent / "fixtures" / "macos" / "m1pro-16gb-under-pressure"
MIB = 1048576


def test_macos_readings_under_pressure() -> None:
    system = darwin.system_from((FIXTURES / "vm_stat.txt").read_text(), (FIXTURES / "sysctl.txt").read_text())
    assert system.total_bytes == 17179869184
    # Figures derived in the fixture's README: inactive + free = 195,711 pages -> 81.3 % used.
    assert system.available_bytes == 195_711 * 16384
    assert round(system.used_percent, 1) == 81.3
    assert system.compressed_bytes // MIB == 7101  # 454,496 pages; top says "7090M compressor"
    assert (system.swap_total_bytes // MIB, round(system.swap_used_bytes / MIB, 2)) == (2048, 1470.06)
    # The kernel's own rule: 393,672 / 848,168 = 0.464 < 0.5 -> warn.
    assert system.kernel_level is KernelPressure.WARN


def test_macos_level_read_from_the_kernel_wins_over_the_estimate() -> None:
    vm_stat = (FIXTURES / "vm_stat.txt").read_text()
    sysctl = (FIXTURES / "sysctl.txt").read_text()
    assert darwin.system_from(vm_stat, sysctl, level=4).kernel_level is KernelPressure.CRITICAL
    assert darwin.system_from(vm_stat, sysctl, level=1).kernel_level is KernelPressure.NORMAL


def test_macos_memory_pressure_tool_output_parses_as_pages() -> None:
    page_size, pages = darwin.parse_vm_stat((FIXTURES / "memory_pressure.txt").read_text())
    assert page_size == 16384
    assert pages["Pages used by compressor"] == 454_496
    assert pages["Pages free"] == 4490


def test_linux_meminfo_and_psi_parsers() -> None:
    meminfo = (
        "MemTotal:       16000000 kB\nMemFree:  100 kB\nMemAvailable:    4000000 kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\n"
    )
    psi = "some avg10=12.50 avg60=3.00 avg300=1.00 total=123\nfull avg10=4.25 avg60=1.00 avg300=0.00 total=45\n"
    system = linux.system_from(meminfo, psi)
    assert system.total_bytes == 16_000_000 * 1024
    assert system.used_percent == pytest.approx(75.0)
    assert (system.psi_some_avg10, system.psi_full_avg10) == (12.5, 4.25)
    assert linux.parse_smaps_rollup("Rss: 10 kB\nPss: 8 kB\nPrivate_Clean: 1 kB\nPrivate_Dirty: 5 kB\n") == (8192, 6144)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_linux_live_reading() -> None:
    system = linux.read_system()
    assert system.total_bytes > system.available_bytes > 0
    assert 0 < system.used_percent < 100
    detail = linux.read_detail([__import__("os").getpid()])
    assert detail.pss_bytes and detail.uss_bytes and detail.uss_bytes <= detail.pss_bytes * 2
