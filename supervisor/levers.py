"""The memory levers on one component, pulled by the enforcer: freeze (SIGSTOP to the whole
tree, verified in the kernel's process states), thaw (SIGCONT), the trim request (the
component's trim signal to the leader, or its trim request over HTTP) and, for a server
that holds models, the unload request over HTTP that keeps the process. Keeps when each
was last pulled, for the policy."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import structlog

from . import launcher
from .config import ComponentSpec
from .httpcalls import CallResult
from .model import ComponentState
from .probes import RunEndpoint

log = structlog.get_logger("ironcliw.runner")

FREEZE_VERIFY_S = 0.1  # the kernel shows a SIGSTOP within microseconds; longer means it did not take

Current = Callable[[], tuple[launcher.Child | None, ComponentState, RunEndpoint | None]]
SetState = Callable[[ComponentState, str], None]


class Levers:
    def __init__(self, spec: ComponentSpec, current: Current, set_state: SetState) -> None:
        assert spec.name is not None
        self.name, self.spec = spec.name, spec
        self._current = current  # the runner's child, state and run endpoint, now
        self._set_state = set_state  # the runner's state change (its transitions table)
        self.frozen_since: float | None = None  # monotonic
        self.last_trim_at: float | None = None  # monotonic
        self.models_unloaded_at: float | None = None  # monotonic: the last unload over HTTP (the process kept)
        self.sigstop_unix: float | None = None  # when the last SIGSTOP was sent (wall clock, for benchmarks)
        self._state_before_freeze = ComponentState.READY

    async def freeze(self, reason: str) -> bool:
        """SIGSTOP the whole tree and verify the kernel stopped it. Stops growth; frees nothing."""
        child, state, _ = self._current()
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
        child, state, _ = self._current()
        if child is None or state is not ComponentState.FROZEN:
            return False
        child.signal_fast(signal.SIGCONT)
        self.frozen_since = None
        self._set_state(self._state_before_freeze, reason)
        return True

    def trim(self) -> str | None:
        """Ask for a trim: "signal" once the trim signal went to the leader (its children may
        not handle it) or an in-process object was asked (its trim()/clear_cache()); "http"
        when the request is to be sent (`send_trim`); None when it cannot be asked."""
        child, _, endpoint = self._current()
        trim = self.spec.trim
        if child is None or (trim is None and not child.in_process):
            return None
        if trim is not None and trim.http is not None:
            if endpoint is None:
                return None
            self.last_trim_at = time.monotonic()
            return "http"
        self.last_trim_at = time.monotonic()
        return "signal" if child.request_trim(trim.signal if trim else None) else None

    async def send_trim(self) -> CallResult | None:
        """The trim request over HTTP (None once the run has ended)."""
        endpoint = self._current()[2]
        return await endpoint.trim() if endpoint is not None else None

    def can_unload_models(self, last_used: float) -> bool:
        """Whether an unload would go over HTTP, keeping the process: it has `unload` requests,
        runs READY, and was used since its models were last unloaded (a second unload with
        memory still short stops it)."""
        _, state, endpoint = self._current()
        if endpoint is None or not self.spec.unload or state is not ComponentState.READY:
            return False
        return self.models_unloaded_at is None or last_used > self.models_unloaded_at

    async def unload_models(self) -> list[CallResult]:
        endpoint = self._current()[2]
        self.models_unloaded_at = time.monotonic()
        return await endpoint.unload() if endpoint is not None else []

    def run_ended(self) -> None:
        self.frozen_since = None
        self.models_unloaded_at = None
