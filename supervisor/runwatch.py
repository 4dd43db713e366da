"""The tasks that watch one run of a component while its runner waits for the end: the
output pump, the wait for READY (bounded by the ready timeout), and the liveness probe.
Either of the last two can end the run: `abort` is set and `reason` says why ("not ready
within 30 s (last: GET ...: 503)", "not alive: 3 probes failed in a row (...)")."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.abc

from .launcher import Child
from .logfiles import RotatingLog
from .probes import RunEndpoint
from .runoutput import RunOutput

PUMP_DRAIN_S = 0.5  # after the end, the output still in the pipe gets this long to reach the log


class RunWatch:
    def __init__(
        self,
        child: Child,
        output: RunOutput,
        endpoint: RunEndpoint,
        on_ready: Callable[[], None],
        is_ready: Callable[[], bool],
    ) -> None:
        self.child, self.output, self.endpoint = child, output, endpoint
        self._on_ready = on_ready  # the runner's: STARTING -> READY, with the figures of the load
        self._is_ready = is_ready  # probed only while READY (not while frozen or starting)
        self.abort = anyio.Event()
        self.reason: str | None = None
        self._pump_done = anyio.Event()

    def start(self, tg: anyio.abc.TaskGroup, sink: RotatingLog) -> None:
        tg.start_soon(self._pump, sink)
        tg.start_soon(self._readiness)
        tg.start_soon(self._liveness)

    async def drain(self) -> None:
        with anyio.move_on_after(PUMP_DRAIN_S):
            await self._pump_done.wait()

    def _end(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self.abort.set()

    async def _pump(self, sink: RotatingLog) -> None:
        try:
            if self.child.output_fd >= 0:
                await self.output.pump(self.child.output_fd, sink)
        finally:
            self._pump_done.set()

    async def _readiness(self) -> None:
        timeout_s = self.endpoint.spec.ready.timeout_s
        with anyio.move_on_after(timeout_s):
            await self.output.wait_ready()
            self._on_ready()
            return
        probe = self.output.ready_probe
        last = probe.last if probe is not None else None
        self._end(f"not ready within {timeout_s:g} s" + (f" (last: {last})" if last else ""))

    async def _liveness(self) -> None:
        reason = await self.endpoint.watch_alive(self._is_ready)
        if reason is not None:
            self._end(reason)
