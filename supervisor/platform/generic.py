"""Any other Unix: what psutil knows, nothing more."""

from __future__ import annotations

from collections.abc import Iterable

import psutil

from ..model import MemoryDetail, SystemMemory


def read_system() -> SystemMemory:
    vm = psutil.virtual_memory()
    swap = psutil.swap_memory()
    return SystemMemory(
        total_bytes=vm.total, available_bytes=vm.available, swap_total_bytes=swap.total, swap_used_bytes=swap.used
    )


def read_detail(pids: Iterable[int]) -> MemoryDetail:
    uss = 0
    for pid in pids:
        try:
            uss += psutil.Process(pid).memory_full_info().uss
        except psutil.Error:
            continue
    return MemoryDetail(uss_bytes=uss)
