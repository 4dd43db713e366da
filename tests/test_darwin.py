"""The macOS backend, run on Linux: the live code path (decoding, tree walking, Activity
Monitor's "used", the pressure level, the swap-out rate, the GPU ceiling) with only the
kernel calls faked (tests/macfakes.py), fed readings recorded on a 16 GB M1 Pro. Expected
figures are derived by hand from the fixture files, as their README does."""

from __future__ import annotations

import ctypes
import struct

import pytest

from supervisor import ComponentPriority, M1MemoryManager
from supervisor import platform as platform_seam
from supervisor.accounting import ComponentMemory
from supervisor.admission import gpu_refusal
from supervisor.config import MemorySection
from supervisor.model import MIB, GpuLimits, KernelPressure, MemoryState, TreeUsage
from supervisor.platform import darwin, mach
from supervisor.predictor import Prediction
from supervisor.pressure import PressureTracker, classify, kernel_floor, swap_floor
from supervisor.procs import _darwin

from .helpers import SLEEPER_ARGV
from .macfakes import M1PRO, FakeProcess, RecordedMac

PAGE = 16384
TOTAL_PAGES = 1_048_576  # 17,179,869,184 bytes of 16 KiB pages


# --- the structs, as xnu defines them ----------------------------------------------------------


def test_struct_layouts_match_xnu() -> None:
    # bsd/sys/resource.h: a 16-byte UUID and 35 uint64 fields (v4 ends at ri_runnable_time)
    assert ctypes.sizeof(mach.RusageInfoV4) == 16 + 35 * 8 == 296
    assert mach.RusageInfoV4.ri_resident_size.offset == 64
    assert mach.RusageInfoV4.ri_phys_footprint.offset == 72
    assert mach.RusageInfoV4.ri_lifetime_max_phys_footprint.offset == 240
    # osfmk/mach/vm_statistics.h: 4 natural_t, 9 uint64, 2 natural_t, 4 uint64, 4 natural_t, 1 uint64
    stats = mach.VmStatistics64
    assert ctypes.sizeof(stats) == 152 and mach.HOST_VM_INFO64_COUNT == 38
    offsets = {name: getattr(stats, name).offset for name, _ in stats._fields_}
    assert offsets["wire_count"] == 12 and offsets["purgeable_count"] == 88
    assert offsets["speculative_count"] == 92 and offsets["swapouts"] == 120
    assert offsets["compressor_page_count"] == 128 and offsets["external_page_count"] == 136
    assert offsets["internal_page_count"] == 140
    assert ctypes.sizeof(mach.XswUsage) == 32  # bsd/sys/sysctl.h xsw_usage


def test_integer_sysctls_of_any_width() -> None:
    assert mach.int_from(struct.pack("<Q", 17179869184)) == 17179869184
    assert mach.int_from(struct.pack("<i", 38)) == 38
    assert mach.int_from(None) is None and mach.int_from(b"abc") is None


# --- system memory: the live path on the recorded machine --------------------------------------


def test_m1_pro_under_pressure_reads_as_activity_monitor_counts() -> None:
    system = darwin.SystemReader(RecordedMac()).read()
    assert system.total_bytes == TOTAL_PAGES * PAGE
    # app = anonymous 247,311 - purgeable 630 = 246,681 pages; wired 159,117; compressor 454,496
    assert system.app_bytes == 246_681 * PAGE
    assert system.wired_bytes == 159_117 * PAGE
    assert system.compressed_bytes == 454_496 * PAGE and system.compressed_bytes // MIB == 7101  # top: "7090M"
    # used = 860,294 pages of 1,048,576 = 82.04 %; cached files = file-backed 141,843 + purgeable 630
    assert system.available_bytes == (TOTAL_PAGES - 860_294) * PAGE
    assert round(system.used_percent, 2) == 82.04
    assert system.cached_bytes == 142_473 * PAGE
    # the level was not recorded, so the kernel's rule stands in: 393,672 / 848,168 = 0.464 -> warn
    assert system.kernel_level is KernelPressure.WARN
    assert (system.swap_total_bytes // MIB, round(system.swap_used_bytes / MIB, 2)) == (2048, 1470.06)
    assert system.kernel_free_percent == 38  # memory_pressure's "free percentage"
    # 82 % is WARNING by the percentage, and the kernel's warn agrees
    tracker = classify(PressureTracker(), system.used_percent, system, MemorySection(), now=0.0)
    assert tracker.state is MemoryState.WARNING


def test_the_tools_text_and_the_kernel_structs_give_the_same_figures() -> None:
    text = darwin.readings_from_text(
        (M1PRO / "vm_stat.txt").read_text(),
        (M1PRO / "sysctl.txt").read_text(),
        (M1PRO / "memory_pressure.txt").read_text(),
    )
    live = darwin.readings_from(RecordedMac())
    assert text.pages == live.pages and text.page_size == live.page_size == PAGE
    assert darwin.system_from_readings(text) == darwin.system_from_readings(live)
    # memory_pressure prints the compressor under another name; the parser knows both
    page_size, labels = darwin.parse_vm_stat((M1PRO / "memory_pressure.txt").read_text())
    assert page_size == PAGE and darwin.pages_from_vm_stat(labels).compressor_page_count == 454_496


def test_the_kernels_own_level_is_primary_over_the_page_rule() -> None:
    mac = RecordedMac()
    mac.sysctls["kern.memorystatus_vm_pressure_level"] = struct.pack("<i", 4)
    system = darwin.SystemReader(mac).read()
    assert system.kernel_level is KernelPressure.CRITICAL
    assert kernel_floor(system, MemorySection()) is MemoryState.CRITICAL
    mac.sysctls["kern.memorystatus_vm_pressure_level"] = struct.pack("<i", 1)
    assert darwin.SystemReader(mac).read().kernel_level is KernelPressure.NORMAL  # the rule alone says warn


def test_sustained_swap_out_raises_the_state_and_stopping_lowers_it() -> None:
    mac = RecordedMac()
    now = [0.0]
    reader = darwin.SystemReader(mac, clock=lambda: now[0])
    cfg = MemorySection()  # 2 MB/s -> WARNING, 20 MB/s -> CRITICAL
    swapouts = 929_703

    def read_after(seconds: float, more_pages: int) -> float | None:
        nonlocal swapouts
        now[0] += seconds
        swapouts += more_pages
        mac.vm_override["swapouts"] = swapouts
        return reader.read().swap_out_mb_s

    assert read_after(0, 0) == 0.0
    assert read_after(5, 1280) == pytest.approx(4.0)  # 20 MiB in 5 s
    system = reader.read()
    assert kernel_floor(system, cfg) is MemoryState.WARNING
    assert read_after(5, 12_800) == pytest.approx(22.0)  # 220 MiB over the 10 s window
    assert kernel_floor(reader.read(), cfg) is MemoryState.CRITICAL
    for _ in range(3):  # swapping stops: the window slides past it
        rate = read_after(5, 0)
    assert rate == 0.0 and swap_floor(rate, cfg) is MemoryState.HEALTHY
    assert kernel_floor(reader.read(), cfg) is MemoryState.WARNING  # what remains: the kernel's page rule
    assert swap_floor(25.0, MemorySection(swap_out_critical_mb_s=0)) is MemoryState.WARNING  # 0: that rule is off


def test_no_swap_no_rate() -> None:
    mac = RecordedMac()
    mac.sysctls["vm.swapusage"] = bytes(mach.XswUsage())
    assert darwin.SystemReader(mac).read().swap_out_mb_s is None


# --- process trees ---------------------------------------------------------------------------------


@pytest.fixture
def mac(monkeypatch: pytest.MonkeyPatch) -> RecordedMac:
    fake = RecordedMac()
    monkeypatch.setattr(_darwin, "CALLS", fake)
    return fake


def test_footprint_summed_over_a_tree_of_three(mac: RecordedMac) -> None:
    # A model server (300 MB footprint, most of it Metal buffers RSS does not see) with a
    # worker, which has a helper of its own; and an orphan of the component found elsewhere.
    mac.processes = {
        100: FakeProcess(children=[101], resident=50 * MIB, footprint=300 * MIB, lifetime_max=900 * MIB),
        101: FakeProcess(children=[102], resident=40 * MIB, footprint=200 * MIB, lifetime_max=250 * MIB),
        102: FakeProcess(resident=30 * MIB, footprint=100 * MIB, lifetime_max=100 * MIB),
        200: FakeProcess(resident=1 * MIB, footprint=10 * MIB, lifetime_max=10 * MIB),
        300: FakeProcess(resident=5 * MIB, footprint=5 * MIB),  # someone else's
    }
    sampler = _darwin.TreeSampler(extra_roots=lambda leaders: {"llm": [200]})
    usage = sampler.usage({"llm": 100})["llm"]
    assert usage == TreeUsage(rss_bytes=121 * MIB, processes=4, footprint_bytes=610 * MIB)
    assert usage.memory_bytes == 610 * MIB  # the footprint, not RSS, is what decisions use
    assert sorted(sampler.members[100]) == [100, 101, 102, 200] and sampler.orphans == {"llm": [200]}
    assert sorted(_darwin.descendant_pids(100)) == [101, 102] and _darwin.children_of(101) == [102]
    del mac.processes[101]  # exited between listing and reading: left out, not an error
    mac.processes[100].children = [101]
    assert sampler.usage({"llm": 100})["llm"].processes == 2  # 100 and the orphan


def test_the_kernels_lifetime_peak_is_the_runs_peak(mac: RecordedMac) -> None:
    mac.processes = {
        100: FakeProcess(children=[101], resident=50 * MIB, footprint=300 * MIB, lifetime_max=900 * MIB),
        101: FakeProcess(resident=40 * MIB, footprint=200 * MIB, lifetime_max=250 * MIB),
    }
    assert _darwin.tree_hwm_bytes(100) == 1150 * MIB
    assert _darwin.tree_hwm_bytes(100, [100]) == 900 * MIB
    assert _darwin.tree_hwm_bytes(999) is None
    memory = ComponentMemory()
    memory.begin_run(100)
    # Samples every two seconds saw 500 MB; the load's spike between them reached 1150 MB.
    memory.record([(1.0, _darwin.TreeSampler().usage({"llm": 100})["llm"])], ready=True, trend_times=set())
    memory.fold_hwm(_darwin.tree_hwm_bytes(100))
    assert memory.run_peak(None) == (1150 * MIB, "vmhwm")


# --- the GPU's share -------------------------------------------------------------------------------


def test_gpu_limits_from_metal_and_the_wired_limit_override() -> None:
    mac = RecordedMac()
    mac.metal = 11_453 * MIB  # what a 16 GB M1 Pro reports (about 70 % of memory)
    limits = darwin.gpu_limits(mac)
    assert limits == GpuLimits(metal_working_set_bytes=11_453 * MIB) and limits.ceiling_bytes == 11_453 * MIB
    mac.sysctls["iogpu.wired_limit_mb"] = struct.pack("<i", 12_288)
    assert darwin.gpu_limits(mac).ceiling_bytes == 12_288 * MIB  # the user's override wins
    mac.sysctls["iogpu.wired_limit_mb"] = struct.pack("<i", 0)  # 0: unset
    assert darwin.gpu_limits(mac).ceiling_bytes == 11_453 * MIB


def test_gpu_refusal_rule() -> None:
    limits = GpuLimits(metal_working_set_bytes=1000 * MIB)
    big = Prediction(peak_mb=1200.0, basis="estimate", runs=0, margin=0.0, confidence=0.0, detail="")
    small = Prediction(peak_mb=800.0, basis="estimate", runs=0, margin=0.0, confidence=0.0, detail="")
    reason = gpu_refusal("llm", True, big, limits)
    assert reason is not None and "1000 MB (Metal's recommended working set)" in reason
    assert gpu_refusal("llm", True, small, limits) is None
    assert gpu_refusal("llm", False, big, limits) is None  # not GPU-resident: no ceiling
    assert gpu_refusal("llm", True, big, GpuLimits()) is None  # nobody says: no ceiling


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_a_load_above_the_gpu_ceiling_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    mac = RecordedMac()
    mac.metal = 300 * MIB
    monkeypatch.setattr(platform_seam, "read_gpu_limits", lambda: darwin.gpu_limits(mac))
    async with M1MemoryManager(budget_mb=4096) as manager:
        manager.register_component("llm", ComponentPriority.HIGH, 500, command=SLEEPER_ARGV, gpu=True)
        manager.register_component("embedder", ComponentPriority.HIGH, 200, command=SLEEPER_ARGV, gpu=True)
        ok, reason = await manager.can_load_component("llm")
        assert not ok and "more than the GPU may hold: 300 MB" in reason
        assert not await manager.load_component("llm", make_room=True)  # unloading others cannot help
        assert manager.supervisor.runner("llm").child is None
        report = manager.supervisor.report()
        assert report["gpu"]["ceiling_mb"] == 300.0 and report["gpu"]["source"] == "Metal recommendedMaxWorkingSetSize"
        explain = manager.supervisor.explain()
        assert explain["gpu"]["ceiling_mb"] == 300.0
        ok, _ = await manager.can_load_component("embedder")
        assert ok  # 200 MB fits under the ceiling and the budget


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_cpu_times_go_through_the_timebase(mac: RecordedMac) -> None:
    # Apple silicon counts in 125/3 ns ticks: reading them as nanoseconds (the old psutil bug)
    # would make 2.5 s of CPU look like 0.06 s, and a busy model server look idle.
    mac.processes = {
        100: FakeProcess(children=[101], cpu_seconds=2.5),
        101: FakeProcess(cpu_seconds=1.0),
    }
    assert _darwin.tree_cpu_seconds(100) == pytest.approx(3.5, rel=1e-6)
    assert _darwin.tree_cpu_seconds(100, [101]) == pytest.approx(1.0, rel=1e-6)
    assert _darwin.tree_cpu_seconds(999) is None
