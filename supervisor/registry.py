"""Components registered at run time (HTTP `POST /memory/components/register`), kept in the
state dir as `registered.json` so that they survive a restart of the supervisor, as a config
file's components do. Adoptions of a running `pid` are not kept: the process they name is
gone, or is another one, after a restart. A file that cannot be read is set aside, like the
history, and a table that no longer checks (a cwd since deleted) is skipped with a warning.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import structlog

from . import jsondecode
from .config import ComponentSpec, check_component, decode_component
from .errors import IroncliwError
from .statefile import read_state, set_aside, write_atomically

log = structlog.get_logger("ironcliw.registry")

SCHEMA_VERSION = 1


class RegistryFile(msgspec.Struct, forbid_unknown_fields=True):
    schema: int
    components: dict[str, dict[str, Any]] = {}


class Registry:
    def __init__(self, state_dir: str, base_dir: str) -> None:
        self.path = Path(state_dir) / "registered.json"
        self.base_dir = Path(base_dir)
        self._tables: dict[str, dict[str, Any]] = {}

    def restore(self, register: Callable[[ComponentSpec], object], known: Callable[[str], bool]) -> None:
        """Register again what was registered before the restart (a name the config now
        has is the config's)."""
        for name, table in self._load().items():
            if known(name):
                continue
            try:
                register(
                    check_component(str(self.path), self.base_dir, name, decode_component(str(self.path), name, table))
                )
            except IroncliwError as exc:
                log.warning("registration_skipped", component=name, problem=exc.message)
                continue
            self._tables[name] = table
            log.info("registration_restored", component=name)

    def keep(self, name: str, table: dict[str, Any]) -> str | None:
        """Write the registration down; the problem, if the disk refused (it then lasts until
        the supervisor stops)."""
        self._tables[name] = table
        try:
            write_atomically(self.path, msgspec.json.encode(RegistryFile(SCHEMA_VERSION, self._tables)))
        except OSError as exc:
            log.warning("registration_not_kept", component=name, path=str(self.path), error=exc.strerror or str(exc))
            return f"not kept across restarts: {exc.strerror or exc}"
        return None

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            raw = read_state(self.path)
            decoded = jsondecode.decode(raw, RegistryFile)
            if decoded.schema != SCHEMA_VERSION:
                raise ValueError(f"schema {decoded.schema}, expected {SCHEMA_VERSION}")
        except FileNotFoundError:
            return {}
        except (OSError, msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            try:
                log.warning(
                    "registrations_set_aside", path=str(self.path), moved_to=str(set_aside(self.path)), error=str(exc)
                )
            except OSError as moved:
                log.warning("registrations_ignored", path=str(self.path), error=str(exc), cannot_move=str(moved))
            return {}
        return decoded.components
