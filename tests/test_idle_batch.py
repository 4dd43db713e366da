"""The idle watcher's minute of readings taken in as a batch must leave every component
exactly where taking them in one by one does (the batch only saves calls). Plain objects:
runners that never start, readings made up."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from supervisor.config import parse_config
from supervisor.events import EventBus
from supervisor.model import ComponentState, SystemMemory, TreeUsage
from supervisor.monitor import MemoryMonitor, Reading
from supervisor.runner import Runner

CONFIG = """
[memory]
sample_interval_s = 0.5
[components.a]
command = ["true"]
[components.b]
command = ["true"]
"""
SYSTEM = SystemMemory(total_bytes=16 << 30, available_bytes=12 << 30, swap_total_bytes=0, swap_used_bytes=0)


def monitor(tmp_path: Path) -> MemoryMonitor:
    config = parse_config(CONFIG, "test.toml")
    bus = EventBus()
    runners = {}
    for name, spec in config.components.items():
        r = runners[name] = Runner(
            spec,
            log_path=tmp_path / f"{name}.log",
            log_max_bytes=1 << 20,
            log_backups=1,
            bus=bus,
            extra_env={},
            on_change=lambda: None,
        )
        r.child = SimpleNamespace(pid=100 if name == "a" else 200)  # type: ignore[assignment]
    runners["a"].state = ComponentState.READY
    return MemoryMonitor(config.memory, runners, bus)


def readings() -> list[Reading]:
    out = []
    for i in range(40):
        t = 1000.0 + 0.5 * i
        roots = {"a": 100, "b": 200 if i >= 10 else 199}  # b restarted: its first readings are another process's
        usage = {
            "a": TreeUsage(rss_bytes=(50 + i % 7) << 20, processes=1),
            "b": TreeUsage(rss_bytes=(80 + i) << 20, processes=2),
        }
        stack = sum(u.rss_bytes for u in usage.values())
        out.append(Reading(t, usage, SYSTEM, stack, SYSTEM.used_percent, roots))
    return out


def test_a_batch_of_readings_is_recorded_as_one_by_one_would_be(tmp_path: Path) -> None:
    one_by_one, batched = monitor(tmp_path / "1"), monitor(tmp_path / "2")
    old = readings()
    for reading in old:
        one_by_one._record([reading])
    assert batched._record(old)
    assert not batched._record(old[:5])  # already taken in: skipped
    for name in ("a", "b"):
        x, y = one_by_one.runners[name], batched.runners[name]
        assert x.peak_rss_bytes == y.peak_rss_bytes > 0 and x.usage == y.usage
        assert x.current_run.ready_samples == y.current_run.ready_samples
        assert list(x.recent_rss) == list(y.recent_rss)
        assert list(x.trend_points) == list(y.trend_points)
    assert len(batched.runners["a"].current_run.ready_samples) == 40
    assert len(batched.runners["a"].trend_points) == 10  # one every TREND_EVERY_S (2 s) of 20 s
    assert batched.runners["b"].peak_rss_bytes == (80 + 39) << 20
