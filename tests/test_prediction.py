"""Exact peaks, persisted history and admission, on real processes (budget mode)."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from supervisor.history import History
from supervisor.model import RunRecord
from tests.helpers import HOG_CODE, SLEEPER, Stack, python_command, wait_until

StackFactory = Callable[[str], Stack]
pytestmark = pytest.mark.timeout(90)


def record(peak: float) -> RunRecord:
    return RunRecord(started_unix=1.0, peak_mb=peak, peak_source="vmhwm", time_to_ready_s=0.5)


def test_history_survives_a_restart_and_sets_a_corrupt_file_aside(tmp_path: Path) -> None:
    h = History(str(tmp_path), max_runs=3)
    h.load()
    for peak in (100, 200, 300, 400):
        h.append("nlp", record(peak))
    assert h.dirty
    h.save()
    assert not h.dirty
    again = History(str(tmp_path), max_runs=3)
    again.load()
    assert [r.peak_mb for r in again.runs("nlp")] == [200, 300, 400]  # bounded per component

    (tmp_path / "history.json").write_bytes(b'{"schema": 1, "components": {"nlp": [{"peak_m')  # truncated
    broken = History(str(tmp_path))
    broken.load()
    assert broken.runs("nlp") == [] and broken.set_aside is not None and broken.set_aside.exists()
    assert not (tmp_path / "history.json").exists()
    broken.append("nlp", record(50))  # and it carries on with a fresh file
    broken.save()
    assert json.loads((tmp_path / "history.json").read_text())["schema"] == 1

    (tmp_path / "history.json").write_text(json.dumps({"schema": 99, "components": {}}))
    foreign = History(str(tmp_path))
    foreign.load()
    assert foreign.runs("nlp") == [] and foreign.set_aside is not None

    (tmp_path / "history.json").mkdir()  # a directory where the file should be
    (tmp_path / "history.json" / "x").write_text("x")
    odd = History(str(tmp_path))
    odd.load()
    assert odd.runs("nlp") == [] and odd.set_aside is not None and odd.set_aside.is_dir()
    odd.append("nlp", record(60))
    odd.save()
    assert json.loads((tmp_path / "history.json").read_text())["components"]["nlp"][0]["peak_mb"] == 60


def test_a_failed_history_write_leaves_the_old_file_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = History(str(tmp_path))
    h.append("nlp", record(100))
    h.save()
    before = (tmp_path / "history.json").read_bytes()
    h.append("nlp", record(200))

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError):
        h.save()
    assert h.dirty and (tmp_path / "history.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json"]  # no temp file left behind


SPIKE = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("ready", flush=True)
time.sleep(0.7)
spike = b"x" * (200 << 20)   # 200 MB for 50 ms: between two samples 2 s apart
time.sleep(0.05)
del spike
print("spiked", flush=True)
while True:
    time.sleep(0.05)
"""


def test_the_kernel_high_water_mark_catches_a_spike_that_sampling_misses(make_stack: StackFactory) -> None:
    stack = make_stack(
        f"""
        [memory]
        sample_interval_s = 2.0
        [components.spiky]
        command = {python_command(SPIKE)}
        priority = "MEDIUM"
        estimated_mb = 20
        ready = {{ log_pattern = "^ready" }}
        """
    )
    stack.up()
    stack.wait_state("spiky", "READY")
    wait_until(lambda: "spiked" in stack.call("logs", name="spiky", lines=5)["lines"], 10, what="the spike")
    sampled_peak = next(c for c in stack.call("report")["components"] if c["name"] == "spiky")["peak_mb"]
    assert sampled_peak < 100  # polling never saw it
    assert stack.cli("unload", "spiky").returncode == 0
    history = json.loads((stack.state / "history.json").read_text())
    (run,) = history["components"]["spiky"]
    assert run["peak_mb"] >= 200 and run["peak_source"] == "vmhwm"
    assert run["time_to_ready_s"] > 0 and run["exit_reason"] == "unloaded"
    # The next load is predicted from that run, not from the 20 MB estimate.
    prediction = next(c for c in stack.call("report")["components"] if c["name"] == "spiky")
    assert prediction["predicted_mb"] >= 200 and prediction["prediction"]["runs"] == 1


CRASH_AFTER_SPIKE = """
import sys, time
print("ready", flush=True)
time.sleep(0.3)
spike = b"x" * (150 << 20)
del spike
sys.exit(3)   # gone before any high-water-mark read: only the kernel's exit accounting saw it
"""


def test_a_leader_that_spikes_and_crashes_leaves_its_peak_in_the_history(make_stack: StackFactory) -> None:
    stack = make_stack(
        f"""
        [components.crashy]
        command = {python_command(CRASH_AFTER_SPIKE)}
        priority = "MEDIUM"
        estimated_mb = 20
        restart = "never"
        ready = {{ log_pattern = "^ready" }}
        """
    )
    stack.up()
    stack.wait_state("crashy", "EXITED")
    wait_until(lambda: (stack.state / "history.json").exists(), 10, what="the history")
    (run,) = json.loads((stack.state / "history.json").read_text())["components"]["crashy"]
    assert run["peak_mb"] >= 150 and run["peak_source"] == "vmhwm"


def test_a_small_leader_is_not_charged_with_the_supervisor_it_was_forked_from(make_stack: StackFactory) -> None:
    # wait4's ru_maxrss counts the address space before exec: the supervisor's own (~30 MB).
    stack = make_stack(
        """
        [components.tiny]
        command = ["sh", "-c", "echo ready; sleep 0.3"]
        restart = "never"
        ready = { log_pattern = "^ready" }
        """
    )
    stack.up()
    stack.wait_state("tiny", "EXITED")
    wait_until(lambda: (stack.state / "history.json").exists(), 10, what="the history")
    (run,) = json.loads((stack.state / "history.json").read_text())["components"]["tiny"]
    supervisor_mb = stack.call("status")["supervisor"]["rss_mb"]
    assert run["peak_mb"] < min(10, supervisor_mb / 2), (run, supervisor_mb)


def admission_stack(make_stack: StackFactory) -> Stack:
    parts = [
        "[memory]\nbudget_mb = 400\nrecovery_hold_s = 3600\n",
        f'[components.core]\ncommand = {SLEEPER}\npriority = "CRITICAL"\nestimated_mb = 10\nready = {{ log_pattern = "ready" }}\n',
        f'[components.peer]\ncommand = {python_command(HOG_CODE.format(mb=40))}\npriority = "HIGH"\nestimated_mb = 50\nready = {{ log_pattern = "ready" }}\n',
        f'[components.voice]\ncommand = {python_command(HOG_CODE.format(mb=60))}\npriority = "MEDIUM"\nestimated_mb = 70\nready = {{ log_pattern = "ready" }}\n',
        f'[components.extra]\ncommand = {python_command(HOG_CODE.format(mb=80))}\npriority = "LOW"\nestimated_mb = 90\nready = {{ log_pattern = "ready" }}\n',
        f'[components.big]\ncommand = {SLEEPER}\npriority = "HIGH"\nestimated_mb = 150\nautostart = false\nready = {{ log_pattern = "ready" }}\n',
        f'[components.huge]\ncommand = {SLEEPER}\npriority = "HIGH"\nestimated_mb = 900\nautostart = false\nready = {{ log_pattern = "ready" }}\n',
    ]
    stack = make_stack("".join(parts))
    stack.up()
    for name in ("core", "peer", "voice", "extra"):
        stack.wait_state(name, "READY")
    return stack


def test_load_is_refused_with_the_numbers_and_make_room_spares_equal_and_higher(make_stack: StackFactory) -> None:
    stack = admission_stack(make_stack)
    refused = stack.cli("load", "big")
    assert refused.returncode == 1
    assert (
        "big needs ~150 MB (its estimate, no history yet), " in refused.stderr
        and "MB free before WARNING" in refused.stderr
    )
    assert stack.component("big")["state"] == "STOPPED"

    made = stack.cli("load", "big", "--make-room")
    assert made.returncode == 0, made.stderr
    states = {c["name"]: c["state"] for c in stack.call("status")["components"]}
    assert states["big"] == "READY"
    assert states["core"] == "READY" and states["peer"] == "READY"  # equal and higher priorities untouched
    assert states["extra"] == "STOPPED"  # the LOW one went first
    extra = stack.component("extra")
    assert extra["last_exit"].startswith("unloaded to make room for big")


def test_make_room_refuses_when_even_all_lower_priorities_would_not_do(make_stack: StackFactory) -> None:
    stack = admission_stack(make_stack)
    proc = stack.cli("load", "huge", "--make-room")
    assert proc.returncode == 1
    assert "huge needs ~900 MB" in proc.stderr and "would free only" in proc.stderr
    states = {c["name"]: c["state"] for c in stack.call("status")["components"]}
    assert states == {
        "core": "READY",
        "peer": "READY",
        "voice": "READY",
        "extra": "READY",
        "big": "STOPPED",
        "huge": "STOPPED",
    }


def recorded_runs(stack: Stack) -> dict[str, list[object]]:
    try:
        return json.loads((stack.state / "history.json").read_text())["components"]  # type: ignore[no-any-return]
    except (OSError, ValueError):  # not written yet, or being replaced
        return {}


def test_forget_clears_a_runaways_history_so_it_can_load_again(make_stack: StackFactory) -> None:
    # A run that peaked far above the component's need taught a prediction that no longer fits
    # the budget; `forget` puts the estimate back in charge, on disk too.
    stack = make_stack(
        f"""
        [memory]
        budget_mb = 300
        [components.runaway]
        command = {python_command(HOG_CODE.format(mb=180))}
        priority = "MEDIUM"
        estimated_mb = 20
        autostart = false
        ready = {{ log_pattern = "^ready" }}
        """
    )
    stack.up()
    stack.call("load", name="runaway")
    stack.call("unload", name="runaway")
    wait_until(
        lambda: "runaway" in recorded_runs(stack),
        10,
        what="the run's record",
    )
    report = {c["name"]: c for c in stack.call("report")["components"]}
    assert report["runaway"]["prediction"]["runs"] == 1
    assert "rests on one run" in report["runaway"]["prediction"]["detail"]
    refused = stack.cli("load", "runaway")
    assert refused.returncode == 1 and "predicted from 1 run" in refused.stderr
    result = stack.call("forget", name="runaway")
    assert result["runs_forgotten"] == 1 and "no history" in result["prediction"]
    assert stack.call("report")["components"][0]["prediction"]["basis"] == "estimate"
    wait_until(
        lambda: "runaway" not in recorded_runs(stack),
        10,
        what="the file",
    )
    forgot = stack.cli("forget", "runaway")
    assert forgot.returncode == 0 and "forgot 0 runs" in forgot.stdout
    assert stack.cli("forget", "nobody").returncode != 0


def test_a_short_batch_job_teaches_its_prediction(make_stack: StackFactory) -> None:
    """Ended (status 0) before the default readiness of 1 s alive: still a whole run."""
    stack = make_stack(
        f"""
        [components.batch]
        command = {python_command("data = b'x' * (120 << 20)")}
        estimated_mb = 20
        restart = "never"
        """
    )
    stack.up()
    row = stack.wait_state("batch", "EXITED")
    assert "exited 0" in row["last_exit"]
    wait_until(lambda: (stack.state / "history.json").exists(), 10, what="the history")
    (record,) = json.loads((stack.state / "history.json").read_text())["components"]["batch"]
    assert record["clean_exit"] and record["time_to_ready_s"] is None and record["peak_mb"] >= 120
    predicted = next(c for c in stack.call("report")["components"] if c["name"] == "batch")["predicted_mb"]
    assert predicted >= 120  # not its 20 MB estimate


MAPS_A_FILE = """
import mmap, sys, time
f = open(sys.argv[1], "rb")
m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
total = sum(m[i] for i in range(0, len(m), 4096))  # the whole input, read once while loading
print("ready", flush=True)
while True:  # then only its first 8 MB, over and over
    total += sum(m[i] for i in range(0, 8 << 20, 4096))
    time.sleep(0.02)
"""


def test_mapped_pages_read_once_are_not_counted_as_need(make_stack: StackFactory, tmp_path: Path) -> None:
    """Anonymous and file-backed apart: a process that maps a 96 MB input and keeps reading
    8 MB of it needs its own memory and those 8 MB, not the 96."""
    data = tmp_path / "input.bin"
    data.write_bytes(bytes(range(256)) * (96 << 12))  # 96 MB
    command = json.loads(python_command(MAPS_A_FILE)) + [str(data)]
    # WARNING in a 200 MB budget (no action touches a MEDIUM component there) has the monitor
    # look every second instead of every 10 s: the first look opens a window, the next measures.
    stack = make_stack(
        f"""
        [memory]
        budget_mb = 200
        warning_percent = 40
        critical_percent = 90
        emergency_percent = 99
        [components.mapper]
        command = {json.dumps(command)}
        estimated_mb = 20
        ready = {{ log_pattern = "^ready" }}
        """
    )
    stack.up()
    stack.wait_state("mapper", "READY")
    wait_until(lambda: stack.component("mapper")["rss_mb"] > 96, 10, what="the mapped input resident")

    def reported() -> dict[str, Any] | None:
        row = next(c for c in stack.call("report")["components"] if c["name"] == "mapper")
        return row if row["hot_file_mb"] is not None else None

    row = wait_until(reported, 15, what="a measured window of re-reading")
    assert row["file_peak_mb"] > 90 and row["anon_peak_mb"] < 40, row
    candidate = next(c for c in stack.call("explain")["candidates"] if c["name"] == "mapper")
    assert candidate["file_mb"] > 90 and candidate["anon_mb"] < 40, candidate  # the split, in explain too
    stack.cli("unload", "mapper")
    stack.wait_state("mapper", "STOPPED")
    wait_until(lambda: (stack.state / "history.json").exists(), 10, what="the history")
    (record,) = json.loads((stack.state / "history.json").read_text())["components"]["mapper"]
    assert record["file_peak_mb"] > 90 and record["peak_mb"] > 96
    assert 4 <= record["hot_file_mb"] <= 40, record  # the 8 MB it kept reading, and its libraries
    predicted = next(c for c in stack.call("report")["components"] if c["name"] == "mapper")["predicted_mb"]
    assert predicted < record["peak_mb"] - 40, (predicted, record)  # not the 96 MB it read once
