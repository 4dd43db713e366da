"""One component's memory accounting (accounting.py): plain data, readings made up."""

from __future__ import annotations

from supervisor.accounting import ComponentMemory
from supervisor.model import MIB, TreeUsage


def readings(n: int = 40) -> list[tuple[float, TreeUsage]]:
    return [(1000.0 + 0.5 * i, TreeUsage(rss_bytes=(50 + i % 7) * MIB, processes=1)) for i in range(n)]


def test_a_quiet_minute_taken_in_at_once_leaves_what_one_by_one_leaves() -> None:
    one_by_one, batched = ComponentMemory(), ComponentMemory()
    for m in (one_by_one, batched):
        m.begin_run(100)
    old = readings()
    trend_times = {t for t, _ in old[::4]}
    for reading in old:
        one_by_one.record([reading], ready=True, trend_times=trend_times)
    batched.record(old, ready=True, trend_times=trend_times)
    assert one_by_one.peak_sampled_bytes == batched.peak_sampled_bytes == 56 * MIB
    assert one_by_one.usage == batched.usage == old[-1][1]
    assert one_by_one.run.ready_samples == batched.run.ready_samples and len(batched.run.ready_samples) == 40
    assert list(one_by_one.recent_bytes) == list(batched.recent_bytes)
    assert list(one_by_one.trend_points) == list(batched.trend_points) and len(batched.trend_points) == 10


def test_a_run_peak_is_the_higher_of_the_sampled_peak_and_the_kernel_marks() -> None:
    m = ComponentMemory()
    m.begin_run(100)
    m.record(readings(10), ready=False, trend_times=set())
    assert m.run_peak(None) == (56 * MIB, "sampled")  # no high-water mark read
    m.fold_hwm(80 * MIB)
    m.fold_hwm(70 * MIB)  # marks only ever raise the peak
    assert m.run_peak(None) == (80 * MIB, "vmhwm")
    assert m.run_peak(90 * MIB) == (90 * MIB, "vmhwm")  # the leader's lifetime peak from wait4
    m.begin_run(200)  # a new run starts from nothing
    assert m.run_peak(None) == (0, "sampled") and m.pid == 200 and not m.run.ready_samples


def test_growth_is_measured_only_while_the_latest_reading_still_rises() -> None:
    m = ComponentMemory()
    m.begin_run(1)
    rising = [(10.0 + 0.1 * i, TreeUsage(rss_bytes=(100 + 10 * i) * MIB, processes=1)) for i in range(5)]
    m.record(rising, ready=True, trend_times=set())
    assert m.growing and abs(m.growth_bytes_s - 100 * MIB) < MIB  # 10 MB per 0.1 s
    m.record([(10.5, TreeUsage(rss_bytes=140 * MIB, processes=1))], ready=True, trend_times=set())
    assert m.growth_bytes_s == 0.0  # the burst ended


def test_steady_size_is_the_median_while_ready_and_trims_are_kept_per_run() -> None:
    m = ComponentMemory()
    m.begin_run(1)
    m.record([(1.0, TreeUsage(rss_bytes=500 * MIB, processes=1))], ready=False, trend_times=set())  # loading
    m.mark_ready()
    m.record([(2.0 + i, TreeUsage(rss_bytes=v * MIB, processes=1)) for i, v in enumerate((100, 120, 110))], True, set())
    assert m.steady_bytes() == 110 * MIB and m.run.ready_peak_bytes == 500 * MIB
    m.trim_measured(12.5)
    m.begin_run(2)
    assert list(m.trim_freed_mb) == [12.5] and m.run.trim_freed_mb == []


def test_a_tree_at_work_counts_as_used() -> None:
    m = ComponentMemory()
    m.begin_run(100)
    assert not m.busy_since_last_look(5.0, now=10.0, busy_share=0.02)  # the first look: nothing to compare
    assert not m.busy_since_last_look(5.1, now=20.0, busy_share=0.02)  # 1 % of a core: idle
    assert m.busy_since_last_look(5.5, now=30.0, busy_share=0.02)  # 4 %: at work
    assert not m.busy_since_last_look(None, now=40.0, busy_share=0.02)  # unreadable: no claim
    assert not m.busy_since_last_look(9.0, now=50.0, busy_share=0.02)  # and the next look starts afresh
    m.begin_run(200)  # a new process: its CPU counter starts from zero, not a fall
    assert not m.busy_since_last_look(0.1, now=60.0, busy_share=0.02)


def test_hot_file_windows_only_for_large_mappings_after_ready_and_the_first_only_opens() -> None:
    from supervisor.accounting import HOT_FILE_MIN_BYTES, ComponentMemory

    m = ComponentMemory()
    m.begin_run(1)
    big = TreeUsage(rss_bytes=HOT_FILE_MIN_BYTES + 10 * MIB, processes=1, anon_bytes=10 * MIB)
    m.record([(1.0, big)], ready=False, trend_times=set())
    assert not m.wants_hot_window()  # not READY yet: what loading reads is not hot
    m.mark_ready()
    assert m.wants_hot_window()
    m.hot_window(300 * MIB)  # the first reading saw everything since exec: it only opens the window
    assert m.run.hot_file_bytes is None and m.run.hot_window_open
    m.hot_window(8 * MIB)
    assert m.run.hot_file_bytes == 8 * MIB
    calls: list[int] = []
    m.last_look(None, lambda: calls.append(1) or 5 * MIB)  # type: ignore[func-returns-value]
    assert calls == [1] and m.run.hot_file_bytes == 8 * MIB  # the largest window counts
    small = ComponentMemory()
    small.begin_run(2)
    small.record([(1.0, TreeUsage(rss_bytes=6 * MIB, processes=1, anon_bytes=2 * MIB))], ready=True, trend_times=set())
    small.mark_ready()
    assert not small.wants_hot_window()  # a small process's libraries: no smaps read at all
    small.last_look(None, lambda: calls.append(2) or 0)  # type: ignore[func-returns-value]
    assert calls == [1]  # no window opened: nothing read at the stop either
