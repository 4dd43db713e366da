"""One run's HTTP side: its port, its config with `${PORT}` filled in, and the calls the
supervisor makes to it (readiness and liveness probes, HTTP trims and unloads).

- `wait_http_ready`: GET the ready target until it answers as configured (any 2xx, or the
  exact `status`); a model server accepts connections long before it can answer, and
  says 503 while it loads. The caller bounds the wait by the ready timeout.
- `watch_alive`: once READY, a probe every `every_s`; `failures` failed in a row end the
  watch with the reason, and the runner restarts the component. A component that is not
  READY (frozen under pressure, or still starting) is not probed and its count starts over:
  a SIGSTOPped process cannot answer, and that is the supervisor's doing, not a hang.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import anyio
import structlog

from . import endpoints
from .config import ComponentSpec
from .httpcalls import CallResult, HttpCaller, run_exec_probe
from .launcher import free_loopback_port, resolve_command
from .probespec import Liveness, Readiness

log = structlog.get_logger("ironcliw.runner")

READY_RETRY_S = 0.25  # between readiness probes (llama-server answers 503 until its model is loaded)
READY_PROBE_TIMEOUT_S = 5.0  # one readiness probe at most; the whole wait is bounded by ready.timeout_s


class ReadyProbe:
    """The readiness wait of one run; `last` keeps the newest answer for the timeout's message."""

    def __init__(self, ready: Readiness, port: int | None, caller: HttpCaller) -> None:
        assert ready.http is not None
        self.ready, self.port, self.caller = ready, port, caller
        self.last: str | None = None

    async def wait(self) -> None:
        ready = self.ready
        assert ready.http is not None
        timeout_s = min(READY_PROBE_TIMEOUT_S, ready.timeout_s)
        while True:
            result = await self.caller.call(ready.http, self.port, "GET", status=ready.status, timeout_s=timeout_s)
            self.last = result.detail
            if result.ok:
                return
            await anyio.sleep(READY_RETRY_S)


async def watch_alive(
    alive: Liveness,
    port: int | None,
    caller: HttpCaller,
    is_ready: Callable[[], bool],
    component: str,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Probe until `alive.failures` probes in a row fail; returns why, for `last_exit`."""
    failed = 0
    while True:
        await anyio.sleep(alive.every_s)
        if not is_ready():
            failed = 0
            continue
        result = await _probe(alive, port, caller, cwd, env or {})
        if not is_ready():  # frozen (or stopped) while the probe waited: no verdict
            failed = 0
            continue
        if result.ok:
            failed = 0
            continue
        failed += 1
        log.warning("alive_probe_failed", component=component, failed=failed, of=alive.failures, detail=result.detail)
        if failed >= alive.failures:
            return f"not alive: {failed} probes failed in a row (last: {result.detail})"


async def _probe(
    alive: Liveness, port: int | None, caller: HttpCaller, cwd: str | None, env: dict[str, str]
) -> CallResult:
    if alive.http is not None:
        return await caller.call(alive.http, port, "GET", status=alive.status, timeout_s=alive.timeout_s)
    assert alive.exec is not None
    return await run_exec_probe(resolve_command(alive.exec), alive.timeout_s, cwd, env)


class RunEndpoint:
    """What one run of a component answers at: built before the spawn, closed after the run."""

    def __init__(self, spec: ComponentSpec, port: int | None) -> None:
        assert spec.name is not None
        self.spec = endpoints.with_port(spec, port)  # what this run was started with
        self.port = self.spec.port
        self.caller = HttpCaller()
        self.ready = ReadyProbe(self.spec.ready, self.port, self.caller) if self.spec.ready.http else None

    @property
    def url(self) -> str | None:
        return endpoints.proxy_url(self.spec)

    async def watch_alive(self, is_ready: Callable[[], bool]) -> str | None:
        """Until the liveness probe fails `failures` times in a row (its reason); None at once
        when the component has no liveness probe."""
        spec = self.spec
        if spec.alive is None:
            return None
        assert spec.name is not None
        return await watch_alive(spec.alive, self.port, self.caller, is_ready, spec.name, spec.cwd, spec.env)

    async def trim(self) -> CallResult:
        trim = self.spec.trim
        action = trim.action() if trim is not None else None
        assert action is not None
        return await self.caller.send(action, self.port)

    async def unload(self) -> list[CallResult]:
        """Every `unload` request, in order (one per model a server holds)."""
        return [await self.caller.send(action, self.port) for action in endpoints.unload_actions(self.spec)]

    async def aclose(self) -> None:
        await self.caller.aclose()


def port_for_run(spec: ComponentSpec, taken_ports: Callable[[], Collection[int]] | None) -> int | None:
    """Its fixed `port`, or for `${PORT}` a free loopback port that none of the other
    components' current runs was given."""
    if not endpoints.needs_port(spec):
        return spec.port
    return free_loopback_port(taken_ports() if taken_ports is not None else ())
