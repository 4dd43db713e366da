"""Start a component's command as its own session and stop its whole tree.

Each child:
- runs in a new session (so also a new process group) whose id is its PID, so one
  `killpg` reaches the grandchildren it forks;
- gets SIGTERM if the supervisor dies (Linux `PR_SET_PDEATHSIG`), so a supervisor killed
  with SIGKILL does not leave the stack running; the grandchildren are caught by the next
  `up` from the record in the runtime dir (`runtime.py`);
- writes stdout and stderr into one pipe that a pump (`pump.py`) copies to a rotating log file.

Direct children are waited on and signalled through a pidfd on Linux: a pidfd names one
process for good, so a recycled PID can never be hit. Elsewhere the child is polled, and
signalled only while it is unreaped (an unreaped PID cannot be recycled).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Collection

import anyio
import structlog

from . import fdlimit, orphans, procs
from .config import ComponentSpec
from .errors import SpawnError
from .model import ExitInfo, Priority, ProcessIdentity
from .pump import enlarge_pipe
from .stopping import stop_processes

log = structlog.get_logger("ironcliw.launcher")


def resolve_command(command: list[str]) -> list[str]:
    """`"python"` means the interpreter running the supervisor, so components share its venv."""
    if command[0] == "python":
        return [sys.executable, *command[1:]]
    return list(command)


def signal_number(name: str) -> int:
    return int(signal.Signals[name])


def free_loopback_port(taken: Collection[int] = ()) -> int:
    """A TCP port free on 127.0.0.1 now, for `${PORT}`: the kernel's pick for a bind to port 0,
    skipping ports that other components' current runs were given (they may not listen yet).
    The port is free again once this returns; a server that loses the race to bind it fails
    to start and its restart gets another."""
    for _ in range(64):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port not in taken:
            return port
    raise SpawnError("", [], "no free loopback port")


class Child:
    """One spawned process, the leader of its own process group."""

    exit_peak_bytes: int | None = None  # the leader's lifetime peak RSS, once reaped (not for adopted ones)
    in_process = False  # an object in the caller's process, not a process (inprocess.InProcess)

    def __init__(self, popen: subprocess.Popen[bytes], ident: ProcessIdentity, inherited_peak: int = 0) -> None:
        self.popen = popen
        # wait4's ru_maxrss keeps the high-water mark of the address space the child had
        # before exec, which for a forked or vforked child is the supervisor's own: only a
        # figure above the supervisor's peak at the spawn can be the component's.
        self.inherited_peak = inherited_peak
        self.identity = ident
        self.pid = popen.pid
        self.pgid = popen.pid  # start_new_session: the leader's PID is the group's id
        self.owns_group = True  # the whole group is ours to signal
        # The runner's: this component's orphans (reparented to the supervisor), part of its tree.
        self.find_orphans: Callable[[], list[int]] | None = None
        self.pidfd = procs.pidfd_open(self.pid)
        self.output_fd = popen.stdout.fileno() if popen.stdout else -1
        if self.output_fd >= 0:
            os.set_blocking(self.output_fd, False)
            enlarge_pipe(self.output_fd)

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    async def wait(self) -> int:
        """Wait for the leader to exit and reap it."""
        if self.pidfd is not None and self.popen.returncode is None:
            await anyio.wait_readable(self.pidfd)
            self._reap(0)  # readable: it has exited, so this does not block
        while self.popen.returncode is None:
            self._reap(os.WNOHANG)
            if self.popen.returncode is None:
                await anyio.sleep(0.02)
        return self.popen.returncode

    def _reap(self, flags: int) -> None:
        """Reap through wait4, which also hands over the kernel's peak resident size of the
        leader over its whole life (and of the children it reaped): a peak no sample can miss,
        however short it was or however long since the last high-water-mark read."""
        try:
            pid, status, usage = os.wait4(self.pid, flags)
        except ChildProcessError:  # already reaped through Popen
            self.popen.poll()
            return
        if pid == self.pid:
            peak = usage.ru_maxrss * procs.MAXRSS_UNIT
            self.exit_peak_bytes = peak if peak > self.inherited_peak else None
            self.popen.returncode = os.waitstatus_to_exitcode(status)

    def send(self, sig: int) -> bool:
        """Signal the leader only; False once it has exited."""
        if self.returncode is not None:
            return False
        try:
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, sig)
            else:
                os.kill(self.pid, sig)
            return True
        except ProcessLookupError:
            return False

    async def stop(self, stop_signal: int, grace_s: float, component: str, was_frozen: bool) -> ExitInfo:
        """Stop the whole tree: see `stop_tree`."""
        return await stop_tree(self, stop_signal, grace_s, component, was_frozen)

    def request_trim(self, signal_name: str | None) -> bool:
        """Ask the component to drop caches: its trim signal, to the leader."""
        return signal_name is not None and self.send(signal_number(signal_name))

    def tree(self) -> list[ProcessIdentity]:
        """The leader (while alive), its group and every descendant, each by identity.

        The group is found by a scan of the whole process table, except where the supervisor
        is a subreaper: there every member of the group is below the leader or reparented to
        us (an orphan), so the scan, which made a `stop all` of N components O(N x system),
        is not needed."""
        group = self.group() if self.owns_group and not procs.is_subreaper() else []
        seen = {ident.pid: ident for ident in group}
        for ident in procs.descendants(self.pid) if self.returncode is None else ():
            seen.setdefault(ident.pid, ident)
        escaped = self.find_orphans() if self.find_orphans is not None else []
        for ident in orphans.with_descendants(escaped) if escaped else ():
            seen.setdefault(ident.pid, ident)
        if self.returncode is None:
            seen[self.pid] = self.identity
        return list(seen.values())

    def group(self) -> list[ProcessIdentity]:
        return procs.group_members(self.pgid, self.identity.create_time)

    def signal_tree(self, sig: int, known: list[ProcessIdentity]) -> list[int]:
        """Signal the group and every known member that left it (setsid grandchildren)."""
        hit = []
        if self.send(sig):
            hit.append(self.pid)
        if self.owns_group:
            procs.signal_group(self.pgid, sig)
        hit.extend(procs.signal_all((i for i in known if i.pid != self.pid), sig))
        return sorted(set(hit))

    def signal_fast(self, sig: int) -> list[int]:
        """Signal the leader, its group and descendants that left the group, without scanning
        the whole process table (the hot path of freezing under pressure)."""
        hit = [self.pid] if self.send(sig) else []
        if self.owns_group:
            procs.signal_group(self.pgid, sig)
        if self.returncode is None:
            hit.extend(procs.signal_all(procs.descendants(self.pid), sig))
        return hit

    def tree_hwm_bytes(self) -> int | None:
        """The kernel's high-water mark of the tree while the leader runs (None once it has exited)."""
        return procs.tree_hwm_bytes(self.pid) if self.returncode is None else None

    def hot_file_bytes(self) -> int | None:
        """File-backed memory the tree touched since the previous call (procs.tree_hot_file_bytes)."""
        return procs.tree_hot_file_bytes(self.pid) if self.returncode is None else None

    async def freeze(self, verify_s: float) -> tuple[list[int], list[int]]:
        """SIGSTOP the tree and wait up to `verify_s` for the kernel to show each process
        stopped; returns (PIDs signalled, PIDs seen stopped)."""
        pids = self.signal_fast(signal.SIGSTOP)
        with anyio.move_on_after(verify_s):
            while any(procs.find_state(pid) not in ("T", "t", None) for pid in pids):
                await anyio.sleep(0.001)
        return pids, [pid for pid in pids if procs.find_state(pid) in ("T", "t")]

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        if self.popen.stdout is not None:
            self.popen.stdout.close()


class Adopted(Child):
    """A process tree the supervisor did not start (the Python API's `register_component(pid=...)`
    or `process=Popen`). It is measured, frozen and stopped like a child; its process group is
    signalled only if it leads its own (never the caller's), and a process that is not our
    child is watched through its pidfd (Linux) or by polling its identity, not reaped."""

    def __init__(self, ident: ProcessIdentity, popen: subprocess.Popen[bytes] | None = None) -> None:
        self.caller_popen = popen  # the caller's Popen, if it gave one: then it is our child after all
        self.identity = ident
        self.pid = ident.pid
        try:
            self.pgid = os.getpgid(ident.pid)
        except ProcessLookupError:
            self.pgid = -1
        self.owns_group = self.pgid == ident.pid and self.pgid != os.getpgid(0)
        self.find_orphans = None
        self.pidfd = procs.pidfd_open(self.pid)
        self.output_fd = -1
        self._gone: int | None = None

    @property
    def returncode(self) -> int | None:
        if self.caller_popen is not None:
            return self.caller_popen.poll()
        if self._gone is None and not procs.is_alive(self.identity):
            self._gone = 0  # not our child: its exit status is its parent's to read
        return self._gone

    async def wait(self) -> int:
        if self.caller_popen is not None:
            while self.caller_popen.poll() is None:
                if self.pidfd is not None:
                    await anyio.wait_readable(self.pidfd)
                else:
                    await anyio.sleep(0.02)
            return self.caller_popen.returncode
        if self.pidfd is not None and self.returncode is None:
            await anyio.wait_readable(self.pidfd)
        while self.returncode is None:
            await anyio.sleep(0.02)
        return self._gone or 0

    def send(self, sig: int) -> bool:
        if self.returncode is not None:
            return False
        if self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, sig)
                return True
            except ProcessLookupError:
                return False
        return procs.signal_identity(self.identity, sig)

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def oom_score_adj(priority: Priority) -> int | None:
    """Linux OOM-killer bias by priority, so that if it fires anyway it takes LOW first.

    An unprivileged process may raise its score but not lower it below what it inherited,
    so CRITICAL keeps the supervisor's own value and the others go up from there."""
    base = procs.oom_score_base()
    if base is None:
        return None
    step = {Priority.CRITICAL: 0, Priority.HIGH: 300, Priority.MEDIUM: 600, Priority.LOW: 1000}[priority]
    return min(1000, base + step)


def spawn(spec: ComponentSpec, extra_env: dict[str, str]) -> Child:
    assert spec.name is not None and spec.cwd is not None
    argv = resolve_command(spec.command)
    env = {**os.environ, **extra_env, **spec.env}
    oom_adj = oom_score_adj(spec.priority)
    # The child dies with the supervisor: exec'd through a launcher (setpriv) or set up
    # between fork and exec (prctl), whatever this OS offers (procs.death_signal_launcher).
    prefix, preexec = procs.death_signal_launcher()
    prefix = fdlimit.child_prefix() + prefix  # the open-files limit `up` was given, not the one it raised
    launch = argv
    if prefix:
        # Found here, as Popen would, so that a missing program is a spawn failure, not the launcher's exit 127.
        program = _find_program(argv[0], spec.cwd, env)
        if program is None:
            raise SpawnError(spec.name, argv, "No such file or directory, or not executable")
        launch = [*prefix, program, *argv[1:]]

    try:
        popen = subprocess.Popen(
            launch,
            cwd=spec.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            preexec_fn=preexec,
        )
    except OSError as exc:
        raise SpawnError(spec.name, argv, exc.strerror or str(exc)) from None
    if oom_adj is not None:  # raising another process's score needs no privilege
        try:
            with open(f"/proc/{popen.pid}/oom_score_adj", "w") as f:
                f.write(str(oom_adj))
        except OSError:
            pass
    ident = procs.find_identity(popen.pid) or ProcessIdentity(popen.pid, 0.0)  # exited already
    return Child(popen, ident, inherited_peak=_own_peak())


def _own_peak() -> int:
    """The supervisor's own resident high-water mark (its RSS where the OS keeps no mark)."""
    return procs.tree_hwm_bytes(os.getpid(), [os.getpid()]) or procs.own_rss_bytes()


def _find_program(name: str, cwd: str, env: dict[str, str]) -> str | None:
    """The executable `name` names, looked up as execvp would (a path relative to `cwd`, or in
    the child's PATH)."""
    if "/" in name:
        path = os.path.join(cwd, name)
        return path if os.path.isfile(path) and os.access(path, os.X_OK) else None
    return shutil.which(name, path=env.get("PATH", os.defpath))


def exit_info(returncode: int, reason_prefix: str = "") -> ExitInfo:
    if returncode < 0:
        sig = -returncode
        return ExitInfo(code=None, signal=sig, reason=f"{reason_prefix}killed by {procs.signal_name(sig)}")
    return ExitInfo(code=returncode, signal=None, reason=f"{reason_prefix}exited {returncode}")


async def stop_tree(child: Child, stop_signal: int, grace_s: float, component: str, was_frozen: bool) -> ExitInfo:
    """Stop a component's whole tree (stopping.stop_processes): the stop signal to the group
    and every member by identity, `grace_s`, then SIGKILL to what is left. Frozen processes
    get SIGCONT first so they can act on the stop signal and exit cleanly. Returns how the
    leader ended, with "after grace" when SIGKILL was needed."""
    known = child.tree()

    def stragglers() -> list[ProcessIdentity]:
        # killpg reaches the whole group; the scan finds members that left it (not needed
        # where the supervisor is a subreaper: see Child.tree).
        return child.group() if child.owns_group and not procs.is_subreaper() else []

    killed = await stop_processes(
        known,
        stop_signal,
        grace_s,
        resume=was_frozen,
        leader_exit=child.wait,
        leader_pid=child.pid,
        send=lambda idents, sig: child.signal_tree(sig, list(idents)),
        also_kill=stragglers,
    )
    if killed:
        log.warning(
            "killed_after_grace",
            component=component,
            pids=killed,
            grace_s=grace_s,
            signal=procs.signal_name(stop_signal),
        )
    code = await child.wait()
    if killed and code == -signal.SIGKILL:
        return ExitInfo(code=None, signal=signal.SIGKILL, reason=f"killed by SIGKILL after {grace_s:g} s grace")
    return exit_info(code)
