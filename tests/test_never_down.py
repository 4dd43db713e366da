"""The supervisor is the last thing standing: its own output, a full disk and a flood of
component output never stop it from supervising (real pipes, a real full filesystem)."""

from __future__ import annotations

import datetime
import json
import os
import resource
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Stack, python_command, wait_until
from tests.test_memory import events, memory_header, once_balloon

StackFactory = Callable[[str], Stack]
pytestmark = pytest.mark.timeout(90)

# Prints a 200-byte line every millisecond: fills any unread pipe within a second.
TALKER = python_command(
    """
    import signal, sys, time
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    while True:
        print("x" * 200, flush=True)
        time.sleep(0.001)
    """
)


def test_stdout_to_a_pipe_nobody_reads_does_not_stop_enforcement(make_stack: StackFactory, tmp_path: Path) -> None:
    """Before: the loop blocked in write() and a LOW balloon grew to 423 MB on a 300 MB budget."""
    stack = make_stack(
        memory_header()
        + f"""
        [components.talker]
        command = {TALKER}
        priority = "HIGH"
        estimated_mb = 20
        ready = {{ log_pattern = "ready" }}
        """
        + once_balloon(tmp_path / "ran")
    )
    read_end, write_end = os.pipe()
    try:
        stack.up(stdout=write_end)
        os.close(write_end)
        time.sleep(1.0)  # the talker fills the pipe many times over meanwhile
        assert stack.component("talker")["state"] == "READY"
        acted = wait_until(
            lambda: [
                e
                for e in events(stack, "memory_action")
                if e["component"] == "balloon" and e["kind"] in ("FREEZE", "UNLOAD")
            ],
            30,
            what="the balloon to be frozen or unloaded",
        )
        # Acted before the balloon went past the budget (it would stop at 300 MB of its own).
        assert acted[0]["rss_mb"] < 300, acted[0]
        started = time.monotonic()
        assert stack.call("status")["components"]
        assert time.monotonic() - started < 2.0  # a generous bound only a blocked loop misses
    finally:
        os.close(read_end)
    wait_until(lambda: stack.component("talker")["state"] == "READY", 5, what="the talker still READY after EPIPE")
    assert "Traceback" not in stack.output()


def test_up_piped_into_head_keeps_the_stack_running(make_stack: StackFactory) -> None:
    stack = make_stack(f"[components.talker]\ncommand = {TALKER}\nready = {{ log_pattern = 'ready' }}\n")
    proc = stack.up(stdout=subprocess.PIPE)
    assert proc.stdout is not None
    head = [proc.stdout.readline() for _ in range(3)]
    assert all(line.startswith(b"talker | ") for line in head), head
    proc.stdout.close()  # what `head -n 3` does once it has its lines
    time.sleep(1.0)
    assert proc.poll() is None, stack.output()[-3000:]
    row = stack.wait_state("talker", "READY")
    assert row["restarts"] == 0
    assert stack.stop() == 0
    assert "Traceback" not in stack.output() and "BrokenPipeError" not in stack.output()


# --- a full disk ----------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB filesystem of its own (a tmpfs; root only, as in CI)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a small tmpfs needs root and mount (CI runs as root); the RLIMIT_FSIZE test covers the rest")
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("this machine does not let the tests mount a tmpfs")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)  # unbuffered: nothing left to flush at close
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


CRASHER = python_command(
    """
    import time
    print("ready", flush=True)
    time.sleep(0.5)
    raise SystemExit(3)
    """
)


def test_a_full_disk_is_reported_and_writing_resumes_when_space_returns(
    make_stack: StackFactory, small_disk: Path
) -> None:
    stack = make_stack(
        f"""
        [components.talker]
        command = {TALKER}
        ready = {{ log_pattern = 'ready' }}
        output_limit_mb_s = 0.2
        [components.crasher]
        command = {CRASHER}
        ready = {{ log_pattern = 'ready' }}
        restart = "always"
        backoff_initial_s = 0.2
        max_restarts = 1000
        """
    )
    stack.env["IRONCLIW_STATE_DIR"] = str(small_disk / "state")
    stack.up()
    stack.wait_state("talker", "READY")
    log_file = small_disk / "state" / "logs" / "talker.log"
    filler = fill(small_disk)
    size_when_full = log_file.stat().st_size
    status = wait_until(
        lambda: (s := stack.call("status"))["warnings"] == ["log_dir: no space left", "state_dir: no space left"] and s,
        30,
        what="both warnings",
    )
    assert stack.call("report")["warnings"] == status["warnings"]
    talker = next(c for c in status["components"] if c["name"] == "talker")
    assert talker["state"] == "READY"
    restarts = talker["restarts"]
    crasher = stack.component("crasher")["restarts"]
    wait_until(lambda: stack.component("crasher")["restarts"] > crasher + 1, 15, what="supervision to go on")
    assert any(e.get("event") == "disk_write_failed" for e in stack.log_events())

    filler.unlink()
    wait_until(lambda: stack.call("status")["warnings"] == [], 40, what="the warnings to clear")
    # What was kept in memory meanwhile was written once space returned (whole lines only).
    wait_until(lambda: log_file.stat().st_size > size_when_full + 10_000, 10, what="the kept output to be written")
    lines = log_file.read_bytes().splitlines()[:-1]
    for i, line in enumerate(lines):  # a cut line only where the note says its end was dropped
        cut = line.strip(b"x") == b"" and i + 1 < len(lines) and lines[i + 1].startswith(b"[ironcliw: ")
        assert line in (b"ready", b"x" * 200) or line.startswith(b"[ironcliw: ") or cut, line[:100]
    history = json.loads((small_disk / "state" / "history.json").read_text())  # whole, never half-written
    assert len(history["components"]["crasher"]) > 2
    assert stack.component("talker")["restarts"] == restarts
    assert "Traceback" not in stack.output()


def test_a_file_size_limit_does_not_kill_the_supervisor(make_stack: StackFactory) -> None:
    """RLIMIT_FSIZE (EFBIG, and SIGXFSZ, which would end a process that does not ignore it):
    works without root. The component's own limit is inherited too, but it writes only to a pipe."""
    stack = make_stack(
        f"[components.talker]\ncommand = {TALKER}\nready = {{ log_pattern = 'ready' }}\noutput_limit_mb_s = 1\n"
    )
    limit = 256 * 1024

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    stack.up(preexec_fn=limit_files)
    wait_until(lambda: stack.call("status")["warnings"] == ["log_dir: file too large"], 30, what="the warning")
    assert stack.proc is not None and stack.proc.poll() is None
    assert stack.component("talker")["state"] == "READY"
    report: dict[str, Any] = next(c for c in stack.call("report")["components"] if c["name"] == "talker")
    assert report["output"]["log_problem"] == "file too large"


# Prints a numbered line every 50 ms, so a test can tell which file each line went to.
COUNTER = python_command(
    """
    import itertools, signal, sys, time
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    for i in itertools.count():
        print(f"line {i}", flush=True)
        time.sleep(0.05)
    """
)


def _numbers(path: Path) -> list[int]:
    return [int(x.split()[1]) for x in path.read_text().splitlines() if x.startswith("line ")]


def test_stray_signals_leave_the_stack_running_and_usr2_reopens_the_logs(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    """Components get SIGTERM when the supervisor dies, so a signal whose default action ends
    the supervisor (USR1, USR2, ALRM, ...) would end the whole stack: none may. USR2 (and
    USR1) reopens the log files, the way logrotate's postrotate expects; QUIT stops cleanly."""
    import signal

    stack = make_stack(f"[components.counter]\ncommand = {COUNTER}\nready = {{ log_pattern = 'ready' }}\n")
    stack.up()
    pid = stack.wait_state("counter", "READY")["pid"]
    assert stack.proc is not None
    log = stack.state / "logs" / "counter.log"
    stray = [n for n in ("SIGALRM", "SIGVTALRM", "SIGPROF", "SIGIO", "SIGPWR") if hasattr(signal, n)]  # no PWR on macOS
    for name in ("SIGUSR1", *stray):
        stack.proc.send_signal(getattr(signal, name))
    ignored = lambda: [e["signal"] for e in stack.log_events() if e["event"] == "signal_ignored"]  # noqa: E731
    wait_until(lambda: sorted(ignored()) == sorted(stray), 10, what="each stray signal logged as ignored")
    assert stack.proc.poll() is None and stack.component("counter")["pid"] == pid

    moved = log.rename(log.with_name("counter.log.moved"))  # logrotate's `create`, before postrotate
    stack.proc.send_signal(signal.SIGUSR2)
    wait_until(lambda: log.exists() and len(_numbers(log)) >= 3, 10, what="lines in the reopened file")
    before, after = _numbers(moved), _numbers(log)
    assert after[0] > before[-1] and before + after == list(range(before[0], after[-1] + 1)), "a line lost"
    reopened = [e for e in stack.log_events() if e["event"] == "logs_reopened"]
    assert len(reopened) == 2 and reopened[-1]["files"] == 1  # USR1 earlier, then USR2
    assert stack.component("counter")["pid"] == pid

    stack.proc.send_signal(signal.SIGQUIT)
    assert stack.proc.wait(30) == 0
    assert not stack.reaper.alive(), "a component outlived a SIGQUIT to the supervisor"


def test_up_started_with_its_standard_fds_closed_is_not_stopped_by_its_own_output(make_stack: StackFactory) -> None:
    """`up <&- >&- 2>&-`: the event loop's epoll and wake-up socket pair took fds 0, 1 and 2,
    and `up` echoed component output and wrote its log into that pair; /dev/null takes them
    first now. The output is control bytes, in case any of it reached the loop as a wake-up."""
    import signal

    noisy = python_command(
        """
        import sys, time
        print("ready", flush=True)
        while True:
            sys.stdout.write("\\x02\\x0f\\x01 stop?\\n")
            sys.stdout.flush()
            time.sleep(0.01)
        """
    )
    stack = make_stack(f"[components.noisy]\ncommand = {noisy}\nready = {{ log_pattern = 'ready' }}\n")

    def close_standard_fds() -> None:
        for fd in (0, 1, 2):
            os.close(fd)

    stack.up(preexec_fn=close_standard_fds)
    pid = stack.wait_state("noisy", "READY")["pid"]
    assert stack.proc is not None
    time.sleep(2)  # 200 lines of would-be signals
    assert stack.proc.poll() is None, "the stack stopped itself"
    assert stack.component("noisy")["pid"] == pid
    if Path(f"/proc/{stack.proc.pid}/fd").exists():
        assert {os.readlink(f"/proc/{stack.proc.pid}/fd/{fd}") for fd in (0, 1, 2)} == {os.devnull}
    assert stack.proc.send_signal(signal.SIGTERM) is None and stack.proc.wait(30) == 0


@pytest.mark.parametrize("how", ["moved", "removed", "truncated"])
def test_a_log_file_moved_removed_or_truncated_under_it_is_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """As `tail -F`: logrotate's `create` (moved) and `copytruncate` (truncated), or an `rm`,
    without a signal: the next write after FOLLOW_EVERY_S goes to a file at the path."""
    from supervisor import logfiles

    monkeypatch.setattr(logfiles, "FOLLOW_EVERY_S", 0.0)
    path = tmp_path / "c.log"
    log = logfiles.RotatingLog(path, max_bytes=1000, backups=1)
    log.write(b"x" * 900 + b"\n")
    if how == "moved":
        path.rename(tmp_path / "c.log.old")
    elif how == "removed":
        path.unlink()
    else:
        os.truncate(path, 0)
    log.write(b"after\n")
    log.write(b"y" * 50 + b"\n")  # 960 bytes in all: no rotation if the truncation was seen
    log.close()
    assert path.read_bytes() == b"after\n" + b"y" * 50 + b"\n"
    assert not (tmp_path / "c.log.1").exists() and log.problem is None
    if how == "moved":
        assert (tmp_path / "c.log.old").read_bytes() == b"x" * 900 + b"\n"


# --- the log file's own behaviour, with the disk's refusals injected -----------------------------


def test_rotating_log_keeps_the_newest_output_and_notes_what_it_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from supervisor import logfiles

    problems: list[tuple[str, str | None]] = []
    log = logfiles.RotatingLog(tmp_path / "c.log", 10_000_000, 1, on_problem=lambda path, p: problems.append((path, p)))
    log.write(b"before\n")
    real_write = os.write
    refusing = True

    def write(fd: int, data: Any) -> int:
        if refusing and fd == log._fd:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(logfiles.os, "write", write)
    monkeypatch.setattr(logfiles, "PENDING_MAX_BYTES", 1000)
    for i in range(100):
        log.write(f"line {i:03d} {'.' * 40}\n".encode())
    assert log.problem == "no space left" and problems == [(str(tmp_path / "c.log"), "no space left")]
    assert not log.retry()  # still full
    refusing = False
    assert log.retry() and log.problem is None and problems[-1] == (str(tmp_path / "c.log"), None)
    lines = (tmp_path / "c.log").read_text().splitlines()
    assert lines[0] == "before" and lines[-1].startswith("line 099")
    assert lines[1].startswith("[ironcliw: ") and "bytes of output were not kept" in lines[1]
    kept = lines[2:]
    assert 15 <= len(kept) < 100 and kept == [f"line {i:03d} {'.' * 40}" for i in range(100 - len(kept), 100)]
    log.close()


def test_a_disk_that_fills_at_any_byte_leaves_only_whole_lines_and_notes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills mid-line, output is dropped, and space returns a few bytes at a time:
    whatever byte the disk stops at, the file never gains an empty line or a stray fragment."""
    import errno

    from supervisor import logfiles

    monkeypatch.setattr(logfiles, "PENDING_MAX_BYTES", 1000)
    real_write = os.write
    for room_at_retry in range(0, 120):
        path = tmp_path / f"c{room_at_retry}.log"
        log = logfiles.RotatingLog(path, 10_000_000, 1)
        room = [10_000 + 30]  # the disk fills 30 bytes into a line

        def write(fd: int, data: Any, log: logfiles.RotatingLog = log, room: list[int] = room) -> int:
            if fd != log._fd:
                return real_write(fd, data)
            if room[0] <= 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            written = real_write(fd, bytes(data[: room[0]]))
            room[0] -= written
            return written

        monkeypatch.setattr(logfiles.os, "write", write)
        for i in range(400):
            log.write(f"line {i:03d} {'.' * 40}\n".encode())
        assert log.problem == "no space left"
        room[0] = room_at_retry  # a little space returns: the note may be cut anywhere
        log.retry()
        room[0] = 0
        for i in range(400, 450):  # more output while the note is cut short: more is dropped
            log.write(f"line {i:03d} {'.' * 40}\n".encode())
        room[0] = 1 << 30
        assert log.retry()
        monkeypatch.setattr(logfiles.os, "write", real_write)
        log.close()
        lines = path.read_bytes().splitlines()
        assert lines[-1] == b"line 449 " + b"." * 40
        for i, line in enumerate(lines):
            whole = line.startswith(b"line ") and len(line) == 49
            cut = i + 1 < len(lines) and lines[i + 1].startswith(b"[ironcliw: ")  # its end was dropped
            assert whole or line.startswith(b"[ironcliw: ") or (cut and line), (room_at_retry, i, line)


# --- reading logs back ------------------------------------------------------------------------


def test_tail_reads_only_what_is_asked_and_cuts_giant_lines(tmp_path: Path) -> None:
    from supervisor.logfiles import MAX_LINE_BYTES, tail_lines

    path = tmp_path / "c.log"
    path.write_bytes(b"".join(f"line {i}\n".encode() for i in range(1000)) + b"z" * 50_000_000)
    (last,) = tail_lines(path, 1)
    assert last.startswith(f"[ironcliw: a longer line, its last {MAX_LINE_BYTES} bytes] ") and last.endswith("z" * 100)
    assert len(last) < MAX_LINE_BYTES + 100
    # With more lines asked, the budget grows with them: still bounded, the giant line cut.
    assert tail_lines(path, 5) == [last]  # the lines before it are further back than 5 lines' budget
    with open(path, "ab") as f:
        f.write(b"\nshort\n")
    lines = tail_lines(path, 3)
    assert lines[-1] == "short" and lines[-2].startswith("[ironcliw: a longer line, its last") and len(lines) == 2
    assert tail_lines(path, 0) == [] and tail_lines(tmp_path / "missing.log", 5) == []
    normal = tmp_path / "n.log"
    normal.write_text("".join(f"{i}\n" for i in range(100)))
    assert tail_lines(normal, 3) == ["97", "98", "99"] and tail_lines(normal, 500) == [str(i) for i in range(100)]
    long_middle = tmp_path / "m.log"
    long_middle.write_bytes(b"a\n" + b"q" * (MAX_LINE_BYTES * 2) + b"\nb\n")
    got = tail_lines(long_middle, 3)
    assert (
        got[0] == "a"
        and got[2] == "b"
        and got[1] == "q" * MAX_LINE_BYTES + f" [ironcliw: line cut at {MAX_LINE_BYTES} of {MAX_LINE_BYTES * 2} bytes]"
    )


def test_logs_of_a_50_mb_line_answer_at_once_and_the_loop_keeps_going(make_stack: StackFactory) -> None:
    """Before: `logs NAME -n 5` took 44 s, the loop blocked 37 s, RSS +100 MB. Now the read is
    bounded and off the loop: the call answers at once and `status` right after it too."""
    stack = make_stack(
        f"[components.s]\ncommand = {python_command('import time; time.sleep(600)')}\nready = {{ alive_s = 0.1 }}\n"
    )
    stack.up()
    stack.wait_state("s", "READY")
    with open(stack.state / "logs" / "s.log", "ab") as f:
        f.write(b"w" * 50_000_000)
    started = time.monotonic()
    proc = stack.cli("logs", "s", "-n", "5")
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert "[ironcliw: a longer line" in proc.stdout and len(proc.stdout) < 100_000
    assert took < 5.0, took  # a generous bound only a whole-file read misses; bench/ has the figures
    status_started = time.monotonic()
    stack.call("status")
    assert time.monotonic() - status_started < 2.0


@pytest.mark.timeout(10)
def test_a_fifo_put_where_a_log_file_was_neither_blocks_nor_takes_the_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opened for writing, a FIFO without a reader blocks (the event loop with it); read for
    `logs`, one without a writer blocks a worker thread. Neither waits: output is kept as for
    a full disk, and written into a real file once the FIFO is gone."""
    from supervisor import logfiles

    monkeypatch.setattr(logfiles, "FOLLOW_EVERY_S", 0.0)
    problems: list[str | None] = []
    path = tmp_path / "c.log"
    log = logfiles.RotatingLog(path, 1_000_000, 1, on_problem=lambda _, problem: problems.append(problem))
    log.write(b"before\n")
    path.unlink()
    os.mkfifo(path)
    log.write(b"kept\n")
    assert log.problem == "not a regular file" and problems == ["not a regular file"]
    assert logfiles.tail_lines(path, 10) == []
    path.unlink()
    assert log.retry() and problems[-1] is None
    log.close()
    assert path.read_bytes() == b"kept\n"


def test_the_standard_librarys_log_lines_are_rendered_like_ours() -> None:
    """asyncio reports (an accept out of descriptors, a task's lost exception) through the
    standard library's logging, which wrote raw tracebacks straight to stderr: a JSON-lines
    reader got text, and a full pipe would have blocked the writer. JSON lines are stamped in
    UTC, with the `Z` that says so (they were naive local time)."""
    import io
    import logging

    import structlog

    from supervisor import logsetup

    out = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        logsetup.configure("json", stream=out)
        try:
            raise OSError(24, "Too many open files")
        except OSError:
            logging.getLogger("asyncio").error("socket.accept() out of system resource", exc_info=True)
        logging.getLogger("asyncio").info("below WARNING: not shown")
    finally:
        root.handlers, root.level = handlers, level
        structlog.reset_defaults()
    (line,) = out.getvalue().splitlines()
    record = json.loads(line)
    assert record["event"] == "socket.accept() out of system resource" and record["logger"] == "asyncio"
    assert record["level"] == "error" and "Too many open files" in record["exception"]
    stamp = datetime.datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00"))
    assert record["timestamp"].endswith("Z") and stamp.utcoffset() == datetime.timedelta(0)
