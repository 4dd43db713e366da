"""What to do when a component's process ends on its own: a pure function.

    (history, spec, how it ended, now, a random number) -> (new history, decision)

The edges, as in supervisord's `states.py`:
    RUNNING -> EXITED   restart = "never", or "on-failure" and it exited 0
    RUNNING -> FATAL    it already restarted `max_restarts` times within `restart_window_s`
    RUNNING -> BACKOFF  otherwise; wait `delay_s`, then BACKOFF -> STARTING

The backoff doubles with each restart still inside the window (initial, 2x, 4x ... capped
at `backoff_max_s`), so it resets by itself once a component has stayed up for a window.
Jitter spreads restarts of components that failed together (a shared dependency died).
"""

from __future__ import annotations

import msgspec

from .config import ComponentSpec
from .model import ComponentState, ExitInfo, RestartMode


class RestartHistory(msgspec.Struct, frozen=True):
    restarts_at: tuple[float, ...] = ()  # monotonic times of the automatic restarts still in the window


class Decision(msgspec.Struct, frozen=True):
    state: ComponentState  # BACKOFF, EXITED or FATAL
    delay_s: float
    reason: str


def on_exit(
    history: RestartHistory, spec: ComponentSpec, exit: ExitInfo, now: float, jitter_unit: float
) -> tuple[RestartHistory, Decision]:
    """`jitter_unit` is a uniform random number in [0, 1), passed in so tests are exact."""
    if spec.restart is RestartMode.NEVER:
        return history, Decision(ComponentState.EXITED, 0.0, f"{exit.reason}; restart = never")
    if spec.restart is RestartMode.ON_FAILURE and exit.success:
        return history, Decision(ComponentState.EXITED, 0.0, f"{exit.reason}; restart = on-failure")
    recent = tuple(t for t in history.restarts_at if now - t < spec.restart_window_s)
    if len(recent) >= spec.max_restarts:
        reason = (
            f"{exit.reason}; {len(recent)} restarts within {spec.restart_window_s:g} s"
            f" (max_restarts = {spec.max_restarts})"
        )
        return RestartHistory(recent), Decision(ComponentState.FATAL, 0.0, reason)
    base = min(spec.backoff_max_s, spec.backoff_initial_s * 2 ** len(recent))
    delay = base * (1.0 + spec.backoff_jitter * (2.0 * jitter_unit - 1.0))
    reason = f"{exit.reason}; restart {len(recent) + 1} of {spec.max_restarts} in {delay:.2f} s"
    return RestartHistory(recent + (now,)), Decision(ComponentState.BACKOFF, delay, reason)
