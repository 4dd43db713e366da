"""The state dir's files (history.json, registered.json): written atomically, and set aside,
not trusted and not fatal, when they cannot be read."""

from __future__ import annotations

import os
import time
from pathlib import Path


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
