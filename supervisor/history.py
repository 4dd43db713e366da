"""Per-component run history, persisted in the state dir across restarts.

`history.json` holds a schema version and, per component, its last MAX_RUNS runs
(predictor.RunRecord). Writes are atomic (a temp file, fsync, rename). A file that cannot be
read as this schema (corrupt, truncated, another program's, another version) is set aside
as `history.corrupt-<time>.json` with a warning and an empty history is started: losing
predictions is better than refusing to start.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import structlog

from . import jsondecode
from .model import RunRecord
from .statefile import read_state, set_aside, write_atomically

log = structlog.get_logger("ironcliw.history")

SCHEMA_VERSION = 1
MAX_RUNS = 50


class HistoryFile(msgspec.Struct, forbid_unknown_fields=True):
    schema: int
    components: dict[str, list[RunRecord]] = {}


class History:
    def __init__(self, state_dir: str, max_runs: int = MAX_RUNS) -> None:
        self.path = Path(state_dir) / "history.json"
        self.max_runs = max_runs
        self._data: dict[str, list[RunRecord]] = {}
        self.set_aside: Path | None = None
        self.dirty = False  # runs recorded since the last successful write

    def load(self, set_aside: bool = True) -> None:
        """Read the file; a corrupt or unreadable one is set aside (renamed), or only ignored
        by a reader that must change nothing (`export`)."""
        error = self._read()
        if error is None:
            return
        if set_aside:
            self._set_aside(error)
        else:
            log.warning("history_ignored", path=str(self.path), error=error)

    def _read(self) -> str | None:
        """Why the file cannot be used, or None (read, or absent)."""
        try:
            raw = read_state(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:  # a directory, unreadable, an I/O error: set aside like a corrupt file
            return f"cannot be read: {exc.strerror or exc}"
        try:
            decoded = jsondecode.decode(raw, HistoryFile)
            if decoded.schema != SCHEMA_VERSION:
                raise ValueError(f"schema {decoded.schema}, expected {SCHEMA_VERSION}")
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            return str(exc)
        self._data = {name: runs[-self.max_runs :] for name, runs in decoded.components.items()}
        return None

    def _set_aside(self, error: str) -> None:
        try:
            aside = set_aside(self.path)
        except OSError as exc:
            log.warning("history_ignored", path=str(self.path), error=error, cannot_move=exc.strerror or str(exc))
            return
        self.set_aside = aside
        log.warning("history_set_aside", path=str(self.path), moved_to=str(aside), error=error)

    def runs(self, name: str) -> list[RunRecord]:
        return list(self._data.get(name, ()))

    def append(self, name: str, record: RunRecord) -> None:
        """Record a run in memory; `dirty` until written (the supervisor writes it off the loop)."""
        runs = self._data.setdefault(name, [])
        runs.append(record)
        del runs[: -self.max_runs]
        self.dirty = True

    def forget(self, name: str) -> int:
        """Drop a component's runs (a runaway must not lock it out forever); how many went."""
        runs = self._data.pop(name, [])
        self.dirty = True
        return len(runs)

    def encode(self) -> bytes:
        """The file's bytes as of now; clears `dirty` (a failed `write` sets it again)."""
        self.dirty = False
        return msgspec.json.encode(HistoryFile(schema=SCHEMA_VERSION, components=self._data))

    def write(self, data: bytes) -> None:
        """Atomically: a temp file, fsync, rename; on an error the old file stays whole and the
        temp file is removed. Blocking I/O: call it from a worker thread."""
        try:
            write_atomically(self.path, data)
        except OSError:
            self.dirty = True
            raise

    def save(self) -> None:
        self.write(self.encode())
