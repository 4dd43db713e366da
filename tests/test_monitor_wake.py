"""The idle watcher's wake-up (monitor._Wake): a one-shot event across threads."""

from __future__ import annotations

import threading
import time

import pytest

from supervisor.monitor import _Wake

pytestmark = pytest.mark.timeout(10)


def test_wait_times_out_while_clear_and_returns_at_once_once_set() -> None:
    wake = _Wake()
    started = time.monotonic()
    assert wake.wait(0.05) is False and time.monotonic() - started >= 0.04
    wake.set()
    wake.set()  # setting twice is harmless
    assert wake.wait(5) is True and wake.wait(5) is True  # it stays set
    wake.clear()
    assert wake.wait(0.01) is False


def test_a_set_from_another_thread_ends_a_long_wait() -> None:
    wake = _Wake()
    timer = threading.Timer(0.1, wake.set)
    timer.start()
    started = time.monotonic()
    try:
        assert wake.wait(5) is True
        assert time.monotonic() - started < 2
    finally:
        timer.cancel()
