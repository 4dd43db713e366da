"""One run's output and readiness: the pump from the component's pipe to its log file,
echoed to `up`'s terminal, published as `log` events while somebody listens, and watched
for the ready line; and the wait for READY by whichever way the config names (a log line,
a TCP port, an HTTP answer, or time alive)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import anyio
import structlog

from .config import ComponentSpec
from .events import EventBus
from .logfiles import RotatingLog
from .model import MIB
from .probes import ReadyProbe
from .probespec import Readiness
from .pump import OutputStats, TokenBucket, pump_output, split_lines

log = structlog.get_logger("ironcliw.runner")

PORT_CONNECT_TIMEOUT_S = 1.0
PORT_RETRY_S = 0.1


class RunOutput:
    """The current run's output; a new one for each run (its counters are that run's)."""

    def __init__(
        self,
        spec: ComponentSpec,
        bus: EventBus,
        echo: Callable[[str, bytes], None] | None,
        ready_already: bool,
        ready_probe: ReadyProbe | None = None,
    ) -> None:
        assert spec.name is not None
        self.name, self.spec, self._bus, self._echo = spec.name, spec, bus, echo
        self.ready_probe = ready_probe  # ready = { http = ... }: this run's port
        self.stats = OutputStats()  # what it wrote and what its rate limit did
        self.ready_pattern = re.compile(spec.ready.log_pattern) if spec.ready.log_pattern else None
        self.ready_seen = anyio.Event()
        if ready_already:  # adopted: it runs already
            self.ready_seen.set()

    async def pump(self, output_fd: int, sink: RotatingLog) -> None:
        """Until the pipe closes: output into `sink`, within the configured rate limit."""
        spec = self.spec
        bucket = None
        if spec.output_limit_mb_s:
            bucket = TokenBucket(spec.output_limit_mb_s * MIB, spec.output_burst_mb * MIB, time.monotonic())
        await pump_output(
            output_fd,
            sink,
            self._on_block,
            bucket=bucket,
            drop=spec.output_overflow == "drop",
            stats=self.stats,
            on_throttle=self._on_throttle,
        )

    async def wait_ready(self) -> None:
        """Until the component counts as READY (the caller bounds it by the ready timeout)."""
        if self.ready_seen.is_set():
            return
        if self.ready_pattern is not None:
            await self.ready_seen.wait()
        elif self.ready_probe is not None:
            await self.ready_probe.wait()
        else:
            await wait_port_or_time(self.spec.ready)

    def _on_block(self, block: bytes) -> None:
        """A block of whole lines of output: echoed whole; split into lines only while
        someone needs lines (the ready pattern before READY, subscribers to `log`)."""
        if self._echo is not None:
            self._echo(self.name, block)
        pattern = self.ready_pattern if not self.ready_seen.is_set() else None
        if pattern is None and not self._bus.wants("log"):
            return
        for line in split_lines(block):
            if pattern is not None and pattern.search(line):
                self.ready_seen.set()
                pattern = None
            self._bus.publish("log", component=self.name, line=line)

    def _on_throttle(self, on: bool) -> None:
        spec, stats = self.spec, self.stats
        if on:
            log.warning(
                "output_throttled",
                component=self.name,
                limit_mb_s=spec.output_limit_mb_s,
                burst_mb=spec.output_burst_mb,
                overflow=spec.output_overflow,
                dropped_bytes=stats.dropped_bytes,
            )
        else:
            log.info(
                "output_unthrottled",
                component=self.name,
                dropped_bytes=stats.dropped_bytes,
                throttled_s=round(stats.throttled_s, 1),
            )


async def wait_port_or_time(ready: Readiness) -> None:
    """A TCP port that accepts a connection, or (neither a port nor a pattern) time alive."""
    if ready.port is None:
        await anyio.sleep(ready.effective_alive_s)
        return
    while True:
        try:
            with anyio.fail_after(PORT_CONNECT_TIMEOUT_S):
                stream = await anyio.connect_tcp(ready.host, ready.port)
            await stream.aclose()
            return
        except (OSError, TimeoutError):
            await anyio.sleep(PORT_RETRY_S)
