"""Smaller profiles before refusal: chosen at load when the preferred one cannot fit, and a
rung before unloading under pressure; predictions kept per profile."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from supervisor.config import parse_config
from supervisor.errors import ConfigError
from supervisor.profiles import history_key, order, smaller, with_profile
from tests.helpers import REPO, Stack, wait_until
from tests.test_door import Door

StackFactory = Callable[[str], Stack]
pytestmark = pytest.mark.timeout(90)

SERVER = ["python", "-m", "tests.model_like_server", "--port", "${PORT}"]


def with_profiles(name: str, big_mb: int, small_mb: int, **keys: str) -> str:
    lines = [
        f"[components.{name}]",
        f"command = {json.dumps([*SERVER, '--model', f'm={big_mb}'])}",
        f"cwd = {json.dumps(str(REPO))}",
        'serves = ["m"]',
        'ready = { http = "/health" }',
        "autostart = false",
        f"estimated_mb = {big_mb + 30}",
        *(f"{k} = {v}" for k, v in keys.items()),
        f"[components.{name}.profiles.small]",
        f"command = {json.dumps([*SERVER, '--model', f'm={small_mb}'])}",
        f"estimated_mb = {small_mb + 30}",
    ]
    return "\n".join(lines) + "\n"


def test_profiles_merge_over_the_component_and_keep_their_order() -> None:
    text = (
        '[components.llm]\ncommand = ["srv", "--big"]\nenv = { A = "1", B = "2" }\nestimated_mb = 900\n'
        '[components.llm.profiles.medium]\ncommand = ["srv", "--medium"]\nestimated_mb = 500\n'
        '[components.llm.profiles.tiny]\nenv = { B = "3" }\nestimated_mb = 100\ninputs = ["t.gguf"]\n'
    )
    spec = parse_config(text, "s.toml").components["llm"]
    assert order(spec) == [None, "medium", "tiny"]
    assert smaller(spec, None) == "medium" and smaller(spec, "medium") == "tiny" and smaller(spec, "tiny") is None
    tiny = with_profile(spec, "tiny")
    assert tiny.command == ["srv", "--big"] and tiny.env == {"A": "1", "B": "3"}
    assert tiny.estimated_mb == 100 and tiny.inputs == ["t.gguf"]
    assert with_profile(spec, None) is spec
    assert history_key("llm", None) == "llm" and history_key("llm", "tiny") == "llm@tiny"
    with pytest.raises(ConfigError) as info:
        parse_config('[components.a]\ncommand = ["x"]\n[components.a.profiles."b c"]\nestimated_mb = 1\n', "s.toml")
    assert info.value.path == "$.components.a.profiles"
    with pytest.raises(ConfigError) as info:
        parse_config('[components.a]\ncommand = ["x"]\n[components.a.profiles.b]\ncommand = []\n', "s.toml")
    assert info.value.path == "$.components.a.profiles.b.command"


def test_the_largest_profile_that_fits_is_started_instead_of_refusing(make_stack: StackFactory) -> None:
    door = Door(make_stack, "make_room = false", with_profiles("llm", 600, 40), memory="budget_mb = 300")
    answer = door.chat("m")
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-ironcliw-profile"] == "small"
    row = door.track("llm")
    assert row["profile"] == "small"
    command = next(c for c in door.stack.call("components")["components"] if c["name"] == "llm")["command"]
    assert "m=40" in command  # the small profile's command ran
    actions = [e for e in door.stack.log_events() if e.get("event") == "profile_chosen"]
    assert actions and actions[0]["profile"] == "small" and actions[0]["predicted_mb"] == 70
    # Its runs are its own: the small profile's history, not the big one's.
    door.stack.cli("unload", "llm")
    door.stack.wait_state("llm", "STOPPED")
    wait_until(lambda: (door.stack.state / "history.json").exists(), 10, what="the history written")
    history = json.loads((door.stack.state / "history.json").read_text())
    assert "llm@small" in json.dumps(history) and '"llm"' not in json.dumps(history).replace('"llm@small"', "")
    door.close()


def test_pressure_restarts_it_in_the_smaller_profile_before_unloading(make_stack: StackFactory) -> None:
    door = Door(
        make_stack,
        "",
        with_profiles("llm", 120, 20, priority='"LOW"'),
        memory="budget_mb = 250\nsample_interval_s = 0.2\nhold_s = 0.5\nrecovery_hold_s = 60",
    )
    assert door.chat("m").status_code == 200
    first = door.track("llm")
    assert first["profile"] is None
    wait_until(lambda: door.stack.component("llm")["rss_mb"] > 120, 10, what="the big model in memory")
    try:  # past CRITICAL (212 of 250); the switch may end the server before it answers
        door.client.post(f"http://127.0.0.1:{first['port']}/cache/fill?mb=80")
    except httpx.HTTPError:
        pass
    switched = wait_until(
        lambda: (c := door.stack.component("llm"))["profile"] == "small" and c["state"] == "READY" and c,
        30,
        what="the switch to the small profile",
    )
    door.stack.reaper.track_tree(switched["pid"])
    assert switched["pid"] != first["pid"]
    assert (switched["last_exit"] or "").startswith("restarted in profile small at "), switched["last_exit"]
    outcomes = [(a["kind"], a["outcome"]) for a in door.stack.call("report")["recent_actions"]]
    assert ("UNLOAD", "switching_profile") in outcomes and ("UNLOAD", "unloading") not in outcomes
    answer = door.chat("m")
    assert answer.status_code == 200 and answer.headers["x-ironcliw-profile"] == "small"
    door.close()
