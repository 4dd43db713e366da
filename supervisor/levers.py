"""The memory levers on one component, pulled by the enforcer: freeze (SIGSTOP to the whole
tree, verified in the kernel's process states), thaw (SIGCONT), and the trim request (the
component's trim signal, to the leader). Keeps when each was last pulled, for the policy."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import structlog

from . import launcher
from .config import ComponentSpec
from .model import ComponentState

log = structlog.get_logger("ironcliw.runner")

FREEZE_VERIFY_S = 0.1  # the kernel shows a SIGSTOP within microseconds; longer means it did not take

Current = Callable[[], tuple[launcher.Child | None, ComponentState]]
SetState = Callable[[ComponentState, str], None]


class Levers:
    def __init__(self, spec: ComponentSpec, current: Current, set_state: SetState) -> None:
        assert spec.name is not None
        self.name, self.spec = spec.name, spec
        self._current = current  # the runner's child and state, now
        self._set_state = set_state  # the runner's state change (its transitions table)
        self.frozen_since: float | None = None  # monotonic
        self.last_trim_at: float | None = None  # monotonic
        self.sigstop_unix: float | None = None  # when the last SIGSTOP was sent (wall clock, for benchmarks)
        self._state_before_freeze = ComponentState.READY

    async def freeze(self, reason: str) -> bool:
        """SIGSTOP the whole tree and verify the kernel stopped it. Stops growth; frees nothing."""
        child, state = self._current()
        if child is None or state not in (ComponentState.READY, ComponentState.STARTING):
            return False
        self.sigstop_unix = time.time()
        pids, stopped = await child.freeze(FREEZE_VERIFY_S)
        if not stopped:
            log.warning("freeze_not_verified", component=self.name, pids=pids)
            return False
        self._state_before_freeze = state
        self.frozen_since = time.monotonic()
        self._set_state(ComponentState.FROZEN, reason)
        return True

    def thaw(self, reason: str) -> bool:
        child, state = self._current()
        if child is None or state is not ComponentState.FROZEN:
            return False
        child.signal_fast(signal.SIGCONT)
        self.frozen_since = None
        self._set_state(self._state_before_freeze, reason)
        return True

    def trim(self) -> bool:
        """Send the trim signal to the leader (its children may not handle it); an in-process
        component's object is asked through its trim()/clear_cache()."""
        child = self._current()[0]
        if child is None or (self.spec.trim_signal is None and not child.in_process):
            return False
        self.last_trim_at = time.monotonic()
        return child.request_trim(self.spec.trim_signal)

    def run_ended(self) -> None:
        self.frozen_since = None
