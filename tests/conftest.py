from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator

import pytest

from tests.helpers import ProcessReaper, Stack


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
