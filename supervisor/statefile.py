"""The state dir's files (history.json, registered.json): written atomically, and set aside,
not trusted and not fatal, when they cannot be read."""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path

# Far above any real file (1,000 components' histories are a few MB), far below what would
# hurt: a state file larger than this is set aside unread.
MAX_STATE_BYTES = 64 << 20


class NotARegularFile(OSError):
    """A FIFO, a device, a directory, ... where a regular file was expected."""

    def __init__(self) -> None:
        super().__init__(errno.EINVAL, "not a regular file")


def open_regular(path: Path, flags: int, mode: int = 0o644) -> tuple[int, os.stat_result]:
    """Open `path` without waiting, if it is a regular file: (fd, its stat). Something else
    put there raises NotARegularFile, an OSError as an unreadable file raises: a FIFO
    would block open() until it had a peer (a writer never comes to a read, a reader to a
    write), and a device such as /dev/zero never ends."""
    try:
        fd = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a FIFO (or socket) without a reader, opened for writing
            raise NotARegularFile() from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise NotARegularFile()
    return fd, info


def read_state(path: Path, max_bytes: int = MAX_STATE_BYTES) -> bytes:
    """A state file's bytes, if it is a regular file of at most `max_bytes` (open_regular
    says why anything else is refused; refused, it is set aside like a corrupt file).
    FileNotFoundError when there is none."""
    fd, _ = open_regular(path, os.O_RDONLY)
    try:
        chunks, total = [], 0
        while chunk := os.read(fd, 1 << 20):
            total += len(chunk)
            if total > max_bytes:  # read, not taken from st_size: the file may grow meanwhile
                raise OSError(errno.EFBIG, f"larger than {max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """A temp file, fsync, rename: on an error the old file stays whole, the temp file is
    removed and the OSError raised. Blocking I/O."""
    tmp = path.with_suffix(".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def set_aside(path: Path) -> Path:
    """Move an unreadable file (or a directory in its place) to `<stem>.corrupt-<time>.json`
    and return where; raises OSError when it cannot be moved."""
    stamp = int(time.time() * 1000)
    aside = path.with_name(f"{path.stem}.corrupt-{stamp}.json")
    n = 1
    while aside.exists() or aside.is_symlink():  # two in one millisecond must not collide
        aside = path.with_name(f"{path.stem}.corrupt-{stamp}-{n}.json")
        n += 1
    path.rename(aside)  # rename, not replace: a directory moves as a whole too
    return aside
