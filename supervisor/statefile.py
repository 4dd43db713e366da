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


def read_state(path: Path, max_bytes: int = MAX_STATE_BYTES) -> bytes:
    """A state file's bytes, if it is a regular file of at most `max_bytes`. Anything else
    raises OSError, as an unreadable file does, so that it is set aside: a FIFO in its place
    would block `up` for ever, a link to /dev/zero would read until memory ran out.
    FileNotFoundError when there is none."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # NONBLOCK: a FIFO opens at once
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, f"not a regular file (mode {stat.filemode(info.st_mode)})")
        chunks, total = [], 0
        while chunk := os.read(fd, 1 << 20):
            total += len(chunk)
            if total > max_bytes:  # st_size may have grown since, or lied (procfs says 0)
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
