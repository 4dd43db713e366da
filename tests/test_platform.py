"""Memory backends: the Linux parsers and live reading (macOS: tests/test_darwin.py)."""

from __future__ import annotations

import sys

import pytest

from supervisor.config import MemorySection
from supervisor.model import MemoryState
from supervisor.platform import linux
from supervisor.platform.swap import SwapWindow
from supervisor.pressure import kernel_floor

MIB = 1048576


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


def test_linux_swap_out_counter_and_rate() -> None:
    vmstat = b"nr_free_pages 100\npswpin 10\npswpout 123456\npgpgin 7\n"
    assert linux.swapped_out_pages(vmstat) == 123456
    assert linux.swapped_out_pages(b"nr_free_pages 100\n") is None  # a kernel without swap accounting
    meminfo = b"MemTotal: 1000 kB\nMemAvailable: 900 kB\nSwapTotal: 2048 kB\nSwapFree: 2048 kB\n"
    window = SwapWindow()
    assert window.rate_mb_s(0.0, 123456 * 4096) == 0.0
    rate = window.rate_mb_s(4.0, (123456 + 4096) * 4096)  # 16 MiB swapped out in 4 s
    assert rate == 4.0
    system = linux.system_from_bytes(meminfo, None, rate)
    assert system.swap_out_mb_s == 4.0 and kernel_floor(system, MemorySection()) is MemoryState.WARNING
    assert window.rate_mb_s(4.5, 10) == 0.0  # a counter that went back (a reboot's, a wrap): start over
    no_swap = b"MemTotal: 1000 kB\nMemAvailable: 900 kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\n"
    assert linux.system_from_bytes(no_swap, None, 99.0).swap_out_mb_s is None  # off without swap


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_linux_live_swap_rate_only_with_swap() -> None:
    reader = linux.SystemReader()
    try:
        first = reader.read()
        if first.swap_total_bytes:
            assert first.swap_out_mb_s == 0.0  # one reading is no rate yet
        else:
            assert first.swap_out_mb_s is None and reader._vmstat is None  # /proc/vmstat never opened
    finally:
        reader.close()
