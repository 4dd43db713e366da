"""The component lifecycle's allowed edges, in one table (supervisord's `states.py`): each
edge says why it happens. The runner checks every change against it; an edge missing here
is a bug, logged as `illegal_transition` (tests fail on that line), never a crash.

    STOPPED [-> WAITING] -> STARTING -> READY -> (exits) -> BACKOFF -> STARTING ...
                                            -> EXITED | FATAL      (restart.on_exit decides)
    STARTING | READY | FROZEN -> STOPPING -> STOPPED               (stop requested)
"""

from __future__ import annotations

from .model import ComponentState

STOPPED, STARTING, READY, STOPPING, EXITED, BACKOFF, FATAL, FROZEN, WAITING = (
    ComponentState.STOPPED,
    ComponentState.STARTING,
    ComponentState.READY,
    ComponentState.STOPPING,
    ComponentState.EXITED,
    ComponentState.BACKOFF,
    ComponentState.FATAL,
    ComponentState.FROZEN,
    ComponentState.WAITING,
)

EDGES: dict[tuple[ComponentState, ComponentState], str] = {
    # starting
    (STOPPED, STARTING): "a start, a reload after pressure, or an adoption",
    (STOPPED, WAITING): "`up`: its predicted peak does not fit below WARNING yet, or one before it waits",
    (WAITING, WAITING): "still waiting, for another reason (more room, or its own turn)",
    (WAITING, STARTING): "room appeared, or a person loaded it",
    (WAITING, STOPPED): "a person unloaded it while it waited, or the supervisor stops",
    (BACKOFF, STARTING): "the backoff delay has passed",
    (EXITED, STARTING): "a manual start of a component that stayed down",
    (FATAL, STARTING): "a manual start forgives the crash loop",
    (STARTING, READY): "readiness seen: the log line, the port, or the alive time",
    # pressure
    (STARTING, FROZEN): "SIGSTOP under pressure while it was still loading",
    (READY, FROZEN): "SIGSTOP under pressure",
    (FROZEN, STARTING): "SIGCONT: it had not been ready when it was frozen",
    (FROZEN, READY): "SIGCONT: recovery, or its frozen time is up with memory back",
    # stopping on request (a command, the policy's unload, a readiness timeout, shutdown)
    (STARTING, STOPPING): "a stop was asked for, or readiness timed out",
    (READY, STOPPING): "a stop was asked for",
    (FROZEN, STOPPING): "a stop was asked for (it gets SIGCONT with the stop signal)",
    (STOPPING, STOPPED): "the whole tree is gone",
    (BACKOFF, STOPPED): "a stop during the backoff delay",
    # the leader ended on its own while a stop was being asked for
    (STARTING, STOPPED): "it ended on its own as a stop was asked for, or never spawned",
    (READY, STOPPED): "it ended on its own as a stop was asked for",
    (FROZEN, STOPPED): "it was killed from outside as a stop was asked for",
    # the leader ended on its own: restart.on_exit decides
    (STARTING, BACKOFF): "it ended (or could not be spawned) before ready; restarting after a delay",
    (READY, BACKOFF): "it ended; restarting after a delay",
    (FROZEN, BACKOFF): "it was killed from outside while frozen; restarting after a delay",
    (STARTING, EXITED): "it ended before ready and its restart policy says stay down",
    (READY, EXITED): "it ended and its restart policy says stay down",
    (FROZEN, EXITED): "it was killed from outside while frozen and its policy says stay down",
    (STARTING, FATAL): "too many restarts within the window",
    (READY, FATAL): "too many restarts within the window",
    (FROZEN, FATAL): "too many restarts within the window",
    # not ready in time: stopped by the supervisor, then restart.on_exit decides as for an exit
    (STOPPING, BACKOFF): "readiness timed out; restarting after a delay",
    (STOPPING, EXITED): "readiness timed out and its restart policy says stay down",
    (STOPPING, FATAL): "readiness timed out once too often within the window",
}


def allowed(old: ComponentState, new: ComponentState) -> bool:
    """Whether the lifecycle may go from `old` to `new` (staying put is always allowed)."""
    return old is new or (old, new) in EDGES
