"""Per-component run history, persisted in the state dir across restarts.

`history.json` holds a schema version and, per component, its last MAX_RUNS runs
(predictor.RunRecord). Writes are atomic (a temp file, fsync, rename). A file that cannot be
read as this schema (corrupt, truncated, another program's, another version) is set aside
as `history.corrupt-<time>.json` with a warning and an empty history is started: losing
predictions is better than refusing to start.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import msgspec
import structlog

from .predictor import RunRecord

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

    def load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        try:
            decoded = msgspec.json.decode(raw, type=HistoryFile)
            if decoded.schema != SCHEMA_VERSION:
                raise ValueError(f"schema {decoded.schema}, expected {SCHEMA_VERSION}")
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            aside = self.path.with_name(f"history.corrupt-{int(time.time() * 1000)}.json")
            self.path.replace(aside)
            self.set_aside = aside
            log.warning("history_set_aside", path=str(self.path), moved_to=str(aside), error=str(exc))
            return
        self._data = {name: runs[-self.max_runs :] for name, runs in decoded.components.items()}

    def runs(self, name: str) -> list[RunRecord]:
        return list(self._data.get(name, ()))

    def append(self, name: str, record: RunRecord) -> None:
        runs = self._data.setdefault(name, [])
        runs.append(record)
        del runs[: -self.max_runs]
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(msgspec.json.encode(HistoryFile(schema=SCHEMA_VERSION, components=self._data)))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)
