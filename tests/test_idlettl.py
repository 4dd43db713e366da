"""Idle TTL decisions (pure) and the door's config keys."""

from __future__ import annotations

import math

import pytest

from supervisor.config import parse_config
from supervisor.errors import ConfigError
from supervisor.idlettl import Candidate, check_interval, expired


def test_only_ready_idle_components_without_requests_in_flight_expire() -> None:
    now = 1000.0
    candidates = [
        Candidate("idle", ttl_s=300, last_used=now - 301, ready=True),
        Candidate("recent", ttl_s=300, last_used=now - 299, ready=True),
        Candidate("never", ttl_s=0, last_used=0.0, ready=True),
        Candidate("streaming", ttl_s=300, last_used=now - 900, ready=True, in_flight=1),
        Candidate("frozen", ttl_s=300, last_used=now - 900, ready=False),
    ]
    assert expired(candidates, now) == [("idle", 301.0)]


def test_checks_come_a_tenth_of_the_shortest_ttl_apart_and_never_without_one() -> None:
    assert check_interval([300.0, 0.0, 60.0]) == 6.0
    assert check_interval([1.0]) == 0.25  # at most four times a second
    assert check_interval([86400.0]) == 30.0
    assert check_interval([0.0, 0.0]) == math.inf  # an idle stack is not woken for nothing


C = '[proxy]\nidle_ttl_s = 120\n[components.a]\ncommand = ["srv", "${PORT}"]\n'


def test_the_door_default_ttl_applies_to_components_that_serve_models() -> None:
    config = parse_config(C + 'serves = ["m"]\n[components.b]\ncommand = ["x"]\n', "s.toml")
    assert config.idle_ttl_s(config.components["a"]) == 120
    assert config.idle_ttl_s(config.components["b"]) == 0  # not a model server: never, unless set
    own = parse_config(C + 'serves = ["m"]\nidle_ttl_s = 0\n', "s.toml")
    assert own.idle_ttl_s(own.components["a"]) == 0


@pytest.mark.parametrize(
    "text, path, words",
    [
        (
            C + 'serves = ["m"]\n[components.b]\ncommand = ["${PORT}"]\nserves = ["m"]',
            "$.components.b.serves[0]",
            "'m' is a's",
        ),
        (C + 'serves = [""]', "$.components.a.serves[0]", "a model name"),
        ('[components.a]\ncommand = ["x"]\nserves = ["m"]', "$.components.a.proxy", "its API's URL"),
        ("[proxy]\nqueue = -1", "$.proxy.queue", ">= 0"),
        ("[proxy]\nmax_body_mb = 0", "$.proxy.max_body_mb", "> 0"),
        ("[proxy]\nenable = true", "$.proxy", "unknown key `enable`"),
        ("[http]\nenabled = false\n[proxy]\nenabled = true", "$.proxy.enabled", "[http] enabled = false"),
    ],
)
def test_bad_door_keys_name_the_field(text: str, path: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "s.toml")
    assert info.value.path == path and words in info.value.expected, info.value
