"""The restart state machine, without processes or clocks."""

from __future__ import annotations

import msgspec

from supervisor.config import ComponentSpec
from supervisor.model import ComponentState, ExitInfo, RestartMode
from supervisor.restart import RestartHistory, on_exit

CRASH = ExitInfo(code=1, signal=None, reason="exited 1")
CLEAN = ExitInfo(code=0, signal=None, reason="exited 0")


def spec(**kw: object) -> ComponentSpec:
    base = ComponentSpec(command=["x"], backoff_initial_s=1.0, backoff_max_s=8.0, backoff_jitter=0.0, max_restarts=5)
    return msgspec.structs.replace(base, **kw)


def test_backoff_doubles_up_to_the_cap_then_fatal() -> None:
    history, delays = RestartHistory(), []
    for t in range(6):
        history, decision = on_exit(history, spec(), CRASH, now=float(t), jitter_unit=0.5)
        delays.append((decision.state, decision.delay_s))
    assert delays[:5] == [(ComponentState.BACKOFF, d) for d in (1.0, 2.0, 4.0, 8.0, 8.0)]
    assert delays[5][0] is ComponentState.FATAL


def test_restarts_outside_the_window_are_forgotten() -> None:
    s = spec(max_restarts=2, restart_window_s=10.0)
    history, _ = on_exit(RestartHistory(), s, CRASH, now=0.0, jitter_unit=0.5)
    history, _ = on_exit(history, s, CRASH, now=1.0, jitter_unit=0.5)
    history, decision = on_exit(history, s, CRASH, now=100.0, jitter_unit=0.5)
    assert decision.state is ComponentState.BACKOFF and decision.delay_s == 1.0
    assert history.restarts_at == (100.0,)


def test_policy_modes() -> None:
    _, d = on_exit(RestartHistory(), spec(restart=RestartMode.ON_FAILURE), CLEAN, 0.0, 0.5)
    assert d.state is ComponentState.EXITED
    _, d = on_exit(RestartHistory(), spec(restart=RestartMode.ALWAYS), CLEAN, 0.0, 0.5)
    assert d.state is ComponentState.BACKOFF
    _, d = on_exit(RestartHistory(), spec(restart=RestartMode.NEVER), CRASH, 0.0, 0.5)
    assert d.state is ComponentState.EXITED and "restart = never" in d.reason


def test_jitter_spreads_the_delay() -> None:
    s = spec(backoff_jitter=0.5)
    _, low = on_exit(RestartHistory(), s, CRASH, 0.0, jitter_unit=0.0)
    _, high = on_exit(RestartHistory(), s, CRASH, 0.0, jitter_unit=0.999)
    assert low.delay_s == 0.5 and 1.49 < high.delay_s < 1.5


def test_zero_max_restarts_is_fatal_at_the_first_crash() -> None:
    _, d = on_exit(RestartHistory(), spec(max_restarts=0), CRASH, 0.0, 0.5)
    assert d.state is ComponentState.FATAL and "max_restarts = 0" in d.reason
