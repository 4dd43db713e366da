"""Fan-out of supervisor events to subscribers (control socket, HTTP, Python callbacks).

Publishing never blocks the supervisor: each subscriber has a bounded buffer, and one that
falls behind by more than that is dropped (its stream is closed, so it notices) rather than
slowing everybody down.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import anyio
import structlog
from anyio.streams.memory import MemoryObjectSendStream

log = structlog.get_logger("ironcliw.events")


class Subscription:
    def __init__(self, bus: EventBus, topics: frozenset[str], components: frozenset[str] | None, buffer: int) -> None:
        self.topics = topics
        self.components = components
        self._send: MemoryObjectSendStream[dict[str, Any]]
        self._send, self.receive = anyio.create_memory_object_stream[dict[str, Any]](buffer)
        self._bus = bus

    def wants(self, topic: str, event: dict[str, Any]) -> bool:
        if topic not in self.topics:
            return False
        return self.components is None or event.get("component") in self.components

    def offer(self, event: dict[str, Any]) -> bool:
        try:
            self._send.send_nowait(event)
            return True
        except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return False

    def close(self) -> None:
        self._bus.unsubscribe(self)
        self._send.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        self.receive.close()


class EventBus:
    def __init__(self) -> None:
        self._subscriptions: list[Subscription] = []
        self.on_subscribe: Callable[[], None] | None = None  # the memory monitor: wake up

    def subscribe(
        self, topics: Iterable[str], components: Iterable[str] | None = None, buffer: int = 1024
    ) -> Subscription:
        sub = Subscription(self, frozenset(topics), frozenset(components) if components is not None else None, buffer)
        self._subscriptions.append(sub)
        if self.on_subscribe is not None:
            self.on_subscribe()
        return sub

    def wants(self, topic: str) -> bool:
        """Whether anyone listens to `topic` (so a publisher can skip building the event)."""
        return any(topic in sub.topics for sub in self._subscriptions)

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subscriptions:
            self._subscriptions.remove(sub)

    def publish(self, topic: str, **fields: Any) -> None:
        if not self._subscriptions:
            return
        event = {"topic": topic, "time_unix": time.time(), **fields}
        for sub in list(self._subscriptions):
            if sub.wants(topic, event) and not sub.offer(event):
                log.warning("subscriber_dropped", reason="fell behind", buffer=sub._send.statistics().max_buffer_size)
                sub.close()
