"""Starting and stopping many components at once, in the order their `after` lists ask for:
each start waits for the components it comes after; each stop waits for the components
that come after it. All of them run in parallel otherwise."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import anyio

from .config import ComponentSpec
from .runner import Runner


async def start_in_order(
    runners: Mapping[str, Runner],
    specs: Mapping[str, ComponentSpec],
    names: list[str],
    stopping: Callable[[], bool],
    admit: Callable[[str], Awaitable[bool]] | None = None,
) -> None:
    """`admit(name)`, when given, first lets each one in, or not (waitingroom.py: `up`)."""
    settled = {name: anyio.Event() for name in names}

    async def one(name: str) -> None:
        try:
            if admit is not None and not await admit(name):
                return
            for dep in specs[name].after:
                if dep in settled:
                    await settled[dep].wait()
            if not stopping():
                await runners[name].start()
        finally:
            settled[name].set()

    async with anyio.create_task_group() as tg:
        for name in names:
            tg.start_soon(one, name)


async def stop_in_order(
    runners: Mapping[str, Runner], specs: Mapping[str, ComponentSpec], names: list[str], reason: str
) -> None:
    done = {name: anyio.Event() for name in names}
    dependants: dict[str, list[str]] = {name: [] for name in names}
    for other in names:  # one pass over the `after` lists, not one per component
        for dep in specs[other].after:
            if dep in dependants:
                dependants[dep].append(other)

    async def one(name: str) -> None:
        try:
            for other in dependants[name]:
                await done[other].wait()
            await runners[name].stop(reason)
        finally:
            done[name].set()

    async with anyio.create_task_group() as tg:
        for name in names:
            tg.start_soon(one, name)
