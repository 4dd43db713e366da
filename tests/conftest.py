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
    for stack in stacks:
        stack.close()
        shutil.rmtree(stack.root, ignore_errors=True)
