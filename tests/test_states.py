"""The lifecycle's table of edges (states.py)."""

from __future__ import annotations

from supervisor.model import ComponentState as S
from supervisor.states import EDGES, allowed


def test_every_state_is_reachable_and_can_be_left() -> None:
    for state in S:
        assert any(new is state for _, new in EDGES) or state is S.STOPPED, f"nothing leads to {state}"
        assert any(old is state for old, _ in EDGES), f"nothing leaves {state}"


def test_each_edge_says_why() -> None:
    assert all(len(why) > 10 for why in EDGES.values())


def test_edges_that_would_be_bugs_are_refused() -> None:
    assert allowed(S.READY, S.READY)  # staying put (a reason logged again) is not a change
    for old, new in [
        (S.STOPPED, S.READY),  # ready without starting
        (S.STOPPED, S.FROZEN),  # nothing to freeze
        (S.STOPPING, S.READY),  # a stop that came back
        (S.STOPPED, S.STOPPING),
        (S.EXITED, S.FROZEN),
        (S.BACKOFF, S.READY),  # skipped the start
        (S.FATAL, S.BACKOFF),
    ]:
        assert not allowed(old, new), (old, new)
