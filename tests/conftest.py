from __future__ import annotations

import shutil
import signal
from collections.abc import Callable, Iterator

import pytest

from tests.helpers import ProcessReaper, Stack

# A shell starts a background job (`bin/test &` in a script) with SIGINT and SIGQUIT ignored,
# and every process the tests start would inherit that: the tests that press Ctrl-C on
# `logs -f` or `top` would wait for an exit that never comes. Their defaults, then.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
if signal.getsignal(signal.SIGQUIT) is signal.SIG_IGN:
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


@pytest.fixture
def reaper() -> Iterator[ProcessReaper]:
    r = ProcessReaper()
    yield r
    r.kill_all()


@pytest.fixture
def make_stack(reaper: ProcessReaper) -> Iterator[Callable[[str], Stack]]:
    stacks: list[Stack] = []

    def make(config_text: str) -> Stack:
        stack = Stack(config_text, reaper)
        stacks.append(stack)
        return stack

    yield make
    illegal = []
    for stack in stacks:
        stack.close()
        illegal += [line for line in stack.output().splitlines() if "illegal_transition" in line]
        shutil.rmtree(stack.root, ignore_errors=True)
    # Every supervisor a test ran checked each state change against states.EDGES.
    assert not illegal, "state changes outside the table in supervisor/states.py:\n" + "\n".join(illegal)
