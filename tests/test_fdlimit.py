"""The open-files limit (supervisor/fdlimit.py): `up` raises its own soft limit to the hard
one, and its components start with the soft limit `up` was given."""

from __future__ import annotations

import resource
import shutil
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from supervisor import fdlimit
from tests.helpers import Stack, wait_until

GIVEN = 128  # macOS gives 256, Linux desktops 1,024: both ran out at a few hundred components
COMPONENTS = 40  # about six of the supervisor's descriptors each: past GIVEN, well within any hard limit


def soft_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError(f"no open-files limit in /proc/{pid}/limits")


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="reads the limits in /proc (Linux)")
def test_up_raises_its_limit_and_components_start_with_the_one_it_was_given(make_stack: Any) -> None:
    """Before, `up` kept the soft limit it was given: at 1,024 on Linux about 220 components
    started and the rest went FATAL with "Too many open files"; here, 40 at 128."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 4 * GIVEN:
        pytest.skip(f"the hard open-files limit here ({hard}) leaves nothing to raise to")
    stack: Stack = make_stack(
        "".join(
            f'[components.s{i}]\ncommand = ["sleep", "600"]\nready = {{ alive_s = 0.1 }}\nestimated_mb = 1\n'
            for i in range(COMPONENTS)
        )
    )
    stack.up(preexec_fn=partial(resource.setrlimit, resource.RLIMIT_NOFILE, (GIVEN, hard)))
    assert stack.proc is not None

    def states() -> list[str]:
        rows = stack.call("status")["components"]
        failed = [(r["name"], r["last_exit"]) for r in rows if r["state"] in ("FATAL", "BACKOFF")]
        assert not failed, failed
        return [r["state"] for r in rows]

    wait_until(lambda: states() == ["READY"] * COMPONENTS, timeout=60, what="every component READY")
    raised = soft_limit(stack.proc.pid)
    assert raised == (fdlimit.SOFT_CAP if hard == resource.RLIM_INFINITY else min(hard, fdlimit.SOFT_CAP))
    expected = GIVEN if shutil.which("prlimit") else raised
    assert {soft_limit(r["pid"]) for r in stack.call("status")["components"]} == {expected}
    (event,) = [e for e in stack.log_events() if e.get("event") == "open_files_limit_raised"]
    assert (event["given"], event["now"], event["components_start_with"]) == (GIVEN, raised, expected)


class FakeLimits:
    """resource's two calls, as macOS answers them: a hard limit of RLIM_INFINITY, and a soft
    one past kern.maxfilesperproc refused with EINVAL (ValueError in Python)."""

    RLIMIT_NOFILE = resource.RLIMIT_NOFILE
    RLIM_INFINITY = resource.RLIM_INFINITY

    def __init__(self, soft: int, hard: int, most: int) -> None:
        self.soft, self.hard, self.most = soft, hard, most

    def getrlimit(self, which: int) -> tuple[int, int]:
        return self.soft, self.hard

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        if limits[0] > self.most:
            raise ValueError("current limit exceeds maximum limit")
        self.soft = limits[0]


@pytest.mark.parametrize(
    ("soft", "hard", "most", "expected"),
    [
        (256, resource.RLIM_INFINITY, 24576, fdlimit.Raised(256, fdlimit.OPEN_MAX)),
        (1024, 524288, 1 << 20, fdlimit.Raised(1024, 524288)),
        (1024, 1 << 30, 1 << 30, fdlimit.Raised(1024, fdlimit.SOFT_CAP)),
        (4096, 4096, 1 << 20, None),  # nothing to raise to
        (256, resource.RLIM_INFINITY, 200, None),  # refused at every step: kept as it was
    ],
)
def test_the_soft_limit_goes_as_high_as_the_os_allows(
    monkeypatch: pytest.MonkeyPatch, soft: int, hard: int, most: int, expected: fdlimit.Raised | None
) -> None:
    fake = FakeLimits(soft, hard, most)
    monkeypatch.setattr(fdlimit, "resource", fake)
    monkeypatch.setattr(fdlimit, "_raised", None)
    assert fdlimit.raise_soft_limit() == expected
    assert fake.soft == (expected.now if expected else soft)
    monkeypatch.setattr(fdlimit, "_PRLIMIT", "/usr/bin/prlimit")
    assert fdlimit.child_prefix() == (["/usr/bin/prlimit", f"--nofile={soft}:", "--"] if expected else [])
