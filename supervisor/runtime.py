"""The runtime dir: one supervisor per dir, and the record of the children it started.

The record (`children.json`: component, pid, create time of every process of the stack:
each leader, every descendant a walk of the trees saw, and the orphans reparented to the
supervisor) is rewritten when that set changes. If the supervisor is killed with SIGKILL,
its children get SIGTERM from the kernel (PR_SET_PDEATHSIG), but grandchildren and daemons
do not; the next `up` reads the record and stops every recorded process that is still the
same one, the rest of each recorded process group, and what is below them, before it
starts anything.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import stat
from pathlib import Path

import msgspec
import structlog

from . import jsondecode, procs
from .errors import AlreadyRunning, IroncliwError
from .model import ProcessIdentity
from .statefile import read_state, set_aside
from .stopping import stop_processes

log = structlog.get_logger("ironcliw.runtime")


class ChildRecord(msgspec.Struct, frozen=True):
    name: str
    pid: int
    create_time: float


def ensure_private_dir(path: Path) -> None:
    """Create `path` with mode 0700, or check that an existing one is ours (the state dir:
    a symlink to another disk is a user's choice there, so it is followed)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid():
        raise IroncliwError(
            f"{path} belongs to uid {info.st_uid}, not to you (uid {os.getuid()});"
            " choose another state dir (IRONCLIW_STATE_DIR)"
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        path.chmod(0o700)


def secure_runtime_dir(path: Path) -> None:
    """Create the runtime dir (mode 0700), or accept an existing one only if it is a real
    directory, ours, and private. The default lives in /tmp, where another user can create
    `/tmp/ironcliw-$UID` first: as a symlink it would take our socket, lock and token to a
    place of their choosing, so it is never followed (lstat, then O_NOFOLLOW | O_DIRECTORY)
    and never repaired (chmod would follow a link too); the user is told how to fix it."""
    fix = "remove it or choose another with IRONCLIW_RUNTIME_DIR"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise IroncliwError(f"cannot create the runtime dir {path}: {exc.strerror or exc}") from None
    if path.is_symlink():
        raise IroncliwError(
            f"the runtime dir {path} is a symlink (to {os.readlink(path)}), which is never followed; {fix}"
        )
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise IroncliwError(
            f"the runtime dir {path} is not a usable directory ({exc.strerror or exc}); {fix}"
        ) from None
    try:
        info = os.fstat(fd)
    finally:
        os.close(fd)
    if info.st_uid != os.getuid():
        raise IroncliwError(
            f"the runtime dir {path} belongs to uid {info.st_uid}, not to you (uid {os.getuid()}); {fix}"
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        mode = oct(stat.S_IMODE(info.st_mode))
        raise IroncliwError(f"the runtime dir {path} has mode {mode}, open to other users; `chmod 700 {path}` or {fix}")


def file_id(path: str | Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of what is at `path` itself (a symlink is not followed), or None:
    whether a file there is still the one this process made."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


class RuntimeDir:
    """The runtime dir, held for the supervisor's life: the lock file (one supervisor per
    dir) and a shared lock on the dir itself, which systemd-tmpfiles' aging honours (it
    skips a locked dir). What removes it anyway (macOS's periodic /tmp cleaning, an `rm`)
    is noticed by `intact()` and put back by `restore()`, with the same checks as at `up`."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.lock_path = self.path / "supervisor.lock"
        self.children_path = self.path / "children.json"
        self._lock_fd: int | None = None
        self._lock_file: tuple[int, int] | None = None  # (st_dev, st_ino) of the file we lock
        self._dir_fd: int | None = None

    def acquire(self) -> None:
        """Take the runtime dir for this process, or raise AlreadyRunning naming the holder."""
        secure_runtime_dir(self.path)
        self._take_lock()
        self._hold_dir()

    def intact(self) -> bool:
        """Whether the lock file at its path is still the one this process holds."""
        return self._lock_file is not None and file_id(self.lock_path) == self._lock_file

    def restore(self) -> None:
        """Make the dir and the lock again after someone removed them. Raises IroncliwError if
        the path is now unsafe (a symlink, another user's), AlreadyRunning if another
        supervisor took it meanwhile."""
        secure_runtime_dir(self.path)
        old = self._lock_fd
        self._lock_fd = None
        try:
            self._take_lock()
        except BaseException:
            self._lock_fd = old
            raise
        if old is not None:
            os.close(old)
        self._hold_dir()

    def _take_lock(self) -> None:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise AlreadyRunning(str(self.path), int(holder) if holder.isdigit() else None) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        info = os.fstat(fd)
        self._lock_fd, self._lock_file = fd, (info.st_dev, info.st_ino)

    def _hold_dir(self) -> None:
        """A shared lock on the dir: systemd-tmpfiles does not age a locked directory."""
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return  # hardly (the lock was just made in it); write_children would then refuse, reported
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            pass
        self._dir_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            os.ftruncate(self._lock_fd, 0)
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    def write_children(self, records: list[ChildRecord]) -> None:
        """Written in the dir this process holds, by its descriptor, never by path: if the dir
        was removed and someone put a symlink at its path (in /tmp, another user can), a
        write by path would land in their dir, through any link they planted there."""
        if self._dir_fd is None or not self.intact():
            raise OSError(errno.ENOENT, "the runtime dir is gone (it is made again within seconds)")
        data, at = msgspec.json.encode(records), self._dir_fd
        fd = os.open(
            "children.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=at
        )
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace("children.tmp", "children.json", src_dir_fd=at, dst_dir_fd=at)

    def read_children(self) -> list[ChildRecord]:
        try:
            return jsondecode.decode(read_state(self.children_path), list[ChildRecord])
        except FileNotFoundError:
            return []
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            path, error = str(self.children_path), (isinstance(exc, OSError) and exc.strerror) or str(exc)
            try:
                log.warning(
                    "children_record_corrupt", path=path, moved_to=str(set_aside(self.children_path)), error=error
                )
            except OSError as moved:
                log.warning("children_record_ignored", path=path, error=error, cannot_move=str(moved))
            return []


def leftover_processes(records: list[ChildRecord]) -> list[tuple[str, ProcessIdentity]]:
    """The live processes a previous supervisor recorded: each recorded process that is still
    the same one (pid and create time), the rest of each recorded leader's process group,
    and everything below them. A number that now names another process was recycled and
    is skipped."""
    found: dict[int, tuple[str, ProcessIdentity]] = {}
    groups: dict[int, tuple[str, float]] = {}  # pgid -> (component, not before)
    for rec in records:
        now = procs.find_identity(rec.pid)
        same = now is not None and abs(now.create_time - rec.create_time) <= 0.01
        if now is not None and not same:
            continue
        if same and now is not None and procs.is_alive(now):
            found.setdefault(rec.pid, (rec.name, now))
        groups.setdefault(rec.pid, (rec.name, rec.create_time))
    members = procs.groups_members({pgid: created for pgid, (_, created) in groups.items()})  # one scan for all
    for pgid, idents in members.items():
        for ident in idents:
            found.setdefault(ident.pid, (groups[pgid][0], ident))
    for name, ident in list(found.values()):
        for below in procs.descendants(ident.pid):
            found.setdefault(below.pid, (name, below))
    return list(found.values())


async def stop_leftovers(runtime: RuntimeDir, grace_s: float = 5.0) -> list[int]:
    """Stop what a previous, killed supervisor left running; returns the PIDs it stopped."""
    leftovers = leftover_processes(runtime.read_children())
    if not leftovers:
        _clear_record(runtime)
        return []
    idents = [ident for _, ident in leftovers]
    log.warning(
        "stopping_leftovers",
        processes=[{"component": name, "pid": i.pid} for name, i in leftovers],
        reason="a previous supervisor on this runtime dir ended without stopping them",
    )
    stubborn = await stop_processes(idents, signal.SIGTERM, grace_s)
    if stubborn:
        log.warning("killed_leftovers_after_grace", pids=stubborn, grace_s=grace_s)
    _clear_record(runtime)
    return [i.pid for i in idents]


def _clear_record(runtime: RuntimeDir) -> None:
    try:
        runtime.write_children([])
    except OSError as exc:  # the record keeper writes it again, and reports what stops it
        log.warning("children_record_not_cleared", path=str(runtime.children_path), error=exc.strerror or str(exc))
