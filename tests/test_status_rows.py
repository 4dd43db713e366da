"""A component's status row is kept between calls (runner.component_status) and must follow
every change it shows. Plain objects: a runner that never starts, a made-up process."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from supervisor.config import parse_config
from supervisor.events import EventBus
from supervisor.model import MIB, ComponentState, TreeUsage
from supervisor.runner import Runner, RunnerHooks, component_status


def runner(tmp_path: Path) -> Runner:
    spec = parse_config('[components.a]\ncommand = ["true"]\n', "t.toml").components["a"]
    hooks = RunnerHooks(on_change=lambda name: None)
    return Runner(spec, log_path=tmp_path / "a.log", log_limits=(1 << 20, 1), bus=EventBus(), extra_env={}, hooks=hooks)


def test_a_kept_row_follows_state_process_readings_restarts_and_exits(tmp_path: Path) -> None:
    r = runner(tmp_path)
    row = component_status(r, 0.0)
    assert row.state is ComponentState.STOPPED and row.pid is None and row.uptime_s is None and row.rss_mb == 0.0
    assert component_status(r, 5.0) is row  # nothing changed: the same row

    r.child, r.started_at, r.state = SimpleNamespace(pid=123), 10.0, ComponentState.READY  # type: ignore[assignment]
    r.memory.begin_run(123)
    r.memory.record([(11.0, TreeUsage(rss_bytes=50 * MIB, processes=2))], ready=True, trend_times=set())
    row = component_status(r, 12.0)
    assert (row.state, row.pid, row.rss_mb, row.processes, row.uptime_s) == (ComponentState.READY, 123, 50.0, 2, 2.0)
    assert component_status(r, 13.5).uptime_s == 3.5  # the uptime is always now's

    r.memory.record([(12.0, TreeUsage(rss_bytes=60 * MIB, processes=3))], ready=True, trend_times=set())
    assert (component_status(r, 14.0).rss_mb, component_status(r, 14.0).processes) == (60.0, 3)
    r.restarts, r.last_exit = 2, "exited 1"
    row = component_status(r, 15.0)
    assert row.restarts == 2 and row.last_exit == "exited 1"
    r.state = ComponentState.FROZEN
    assert component_status(r, 15.0).state is ComponentState.FROZEN

    r.child = None
    r.memory.end_run()
    row = component_status(r, 16.0)
    assert row.pid is None and row.rss_mb == 0.0 and row.processes == 0 and row.uptime_s is None


def test_the_rows_are_kept_whole_until_something_they_show_changes(tmp_path: Path) -> None:
    from supervisor.runner import StatusRows

    a, b = runner(tmp_path), runner(tmp_path)
    rows = StatusRows()
    first = rows.rows([a, b], reading_time=10.0, now=100.2)
    assert rows.rows([a, b], reading_time=10.0, now=100.9) is first  # same second, same reading
    assert rows.rows([a, b], reading_time=10.5, now=100.9) is not first  # a newer reading
    again = rows.rows([a, b], reading_time=10.5, now=100.9)
    rows.changed()  # a component changed state or process
    assert rows.rows([a, b], reading_time=10.5, now=100.9) is not again
    kept = rows.rows([a, b], reading_time=10.5, now=100.9)
    assert rows.rows([a, b], reading_time=10.5, now=101.0) is not kept  # the next second: new uptimes
    assert len(rows.rows([a, b, runner(tmp_path)], reading_time=10.5, now=101.0)) == 3  # a registration


def test_the_encoded_rows_are_the_rows_and_follow_every_change(tmp_path: Path) -> None:
    import msgspec

    from supervisor.runner import StatusRows

    r = runner(tmp_path)
    rows = StatusRows()
    listed = rows.rows([r], 1.0, 100.0)
    first = rows.msgpack()
    assert msgspec.msgpack.decode(first) == msgspec.to_builtins(listed)
    assert rows.msgpack() is first  # nothing changed: the same bytes
    r.state = ComponentState.READY
    rows.changed()
    again = rows.rows([r], 1.0, 100.0)
    assert msgspec.msgpack.decode(rows.msgpack())[0]["state"] == "READY" == again[0].state.value
    rows.rows([r], 1.0, 101.0)  # a new second: rows (uptimes) built again, and their bytes
    assert rows.msgpack() is not first
