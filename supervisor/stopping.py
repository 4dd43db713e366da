"""The one way the supervisor stops processes: (SIGCONT,) the stop signal, a grace period,
then SIGKILL to whatever is left, every signal by identity (pid + start time), so a PID the
kernel reused for somebody else's process is never hit.

A component's tree (launcher.stop_tree) passes its leader, which is our child: its exit is
awaited through its pidfd and reaped by Popen; leftovers of a killed supervisor and orphans
at shutdown (runtime.py, core.py) are nobody's children and are polled.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable, Sequence

import anyio

from . import procs
from .model import ProcessIdentity

KILL_WAIT_S = 2.0  # after SIGKILL: the kernel frees a process within milliseconds unless in D state
POLL_S = 0.02

Send = Callable[[Sequence[ProcessIdentity], int], list[int]]


def _send_each(idents: Sequence[ProcessIdentity], sig: int) -> list[int]:
    return procs.signal_all(idents, sig)


async def stop_processes(
    idents: Sequence[ProcessIdentity],
    stop_signal: int,
    grace_s: float,
    *,
    resume: bool = True,
    leader_exit: Callable[[], Awaitable[int]] | None = None,
    leader_pid: int | None = None,
    send: Send = _send_each,
    also_kill: Callable[[], list[ProcessIdentity]] | None = None,
) -> list[int]:
    """Stop `idents` and return the PIDs that needed SIGKILL (empty if the stop signal was enough).

    resume:      SIGCONT first, so stopped (frozen) processes can act on the stop signal.
    leader_exit: awaits the leader's exit (and reaps it) when the leader is our child, whose
                 PID is `leader_pid`; it counts as gone once that returns.
    send:        how a signal reaches the processes (a component's tree also signals its group).
    also_kill:   more processes to SIGKILL at the end (found only then, e.g. by a group scan).
    """
    leader_gone = leader_exit is None

    def others_alive() -> list[ProcessIdentity]:
        return [i for i in idents if i.pid != leader_pid and procs.is_alive(i)]

    async def all_gone() -> None:
        nonlocal leader_gone
        if leader_exit is not None:
            await leader_exit()
            leader_gone = True
        while others_alive():
            await anyio.sleep(POLL_S)

    if resume:
        send(idents, signal.SIGCONT)
    send(idents, stop_signal)
    with anyio.move_on_after(grace_s):
        await all_gone()
    left = others_alive()
    if leader_gone and not left:
        return []
    extra = also_kill() if also_kill is not None else []
    killed = send([*(i for i in idents if i.pid == leader_pid), *left, *extra], signal.SIGKILL)
    with anyio.move_on_after(KILL_WAIT_S):
        await all_gone()
    return killed
