"""The Host and Origin rules as pure functions (the live refusals are in test_http.py)."""

from __future__ import annotations

import pytest

pytest.importorskip("starlette")
from supervisor.http.security import host_allowed, origin_allowed  # noqa: E402


@pytest.mark.parametrize(
    "host, ok",
    [
        ("127.0.0.1", True),
        ("127.0.0.1:8000", True),
        ("localhost:8000", True),
        ("LOCALHOST:8000", True),
        ("[::1]:8000", True),
        ("[::1]", True),
        ("127.0.0.1:8001", False),
        ("[::1]evil.com", False),
        ("[::1].attacker.com", False),
        ("127.0.0.1:8000@evil.com", False),
        ("127.0.0.1.evil.com", False),
        ("localhost.evil.com:8000", False),
        ("::1", False),
        ("[::1]:", False),
        ("127.0.0.1:", False),
        ("127.0.0.1:80000000", False),
        ("", False),
        (" 127.0.0.1", False),
        ("127.0.0.1\n", False),
    ],
)
def test_host_is_parsed_exactly(host: str, ok: bool) -> None:
    assert host_allowed(host, 8000) is ok


@pytest.mark.parametrize(
    "origin, ok",
    [
        ("http://127.0.0.1:8000", True),
        ("http://localhost:8000", True),
        ("http://[::1]:8000", True),
        ("http://127.0.0.1", False),  # port 80
        ("https://127.0.0.1:8000", False),
        ("http://127.0.0.1:8000.evil.com", False),
        ("http://evil.example", False),
        ("null", False),
    ],
)
def test_origin_must_be_the_api_itself(origin: str, ok: bool) -> None:
    assert origin_allowed(origin, 8000) is ok
