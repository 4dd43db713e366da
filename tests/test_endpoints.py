"""Model-server keys in the config: HTTP probes, trims and unloads, `${PORT}` (pure: no process)."""

from __future__ import annotations

import pytest

from supervisor import endpoints, probespec
from supervisor.config import parse_config
from supervisor.errors import ConfigError
from supervisor.probespec import HttpAction, Trim

SERVER = """
[components.llm]
command = ["llama-server", "--model", "m.gguf", "--port", "${PORT}"]
env = { LLM_URL = "http://127.0.0.1:${PORT}" }
ready = { http = "/health", status = 200, timeout_s = 120 }
alive = { http = "/health", every_s = 10, failures = 3 }
trim = { http = "POST /slots/0?action=erase" }
unload = [
  { http = "/api/generate", body = '{"model": "a", "keep_alive": 0}' },
  { http = "POST http://127.0.0.1:${PORT}/api/generate", body = '{"model": "b", "keep_alive": 0}' },
]
proxy = "http://127.0.0.1:${PORT}/v1"
"""

C = '[components.a]\ncommand = ["x"]\n'
INVALID = [
    (C + 'ready = { http = "/health" }', "$.components.a.ready.http", "set the component's `port`"),
    (C + 'port = 80\nready = { http = "http://example.com/h" }', "$.components.a.ready.http", "a loopback host"),
    (C + 'port = 80\nready = { http = "ftp://127.0.0.1/h" }', "$.components.a.ready.http", "an http:// URL"),
    (C + 'port = 80\nready = { http = "GET /a /b" }', "$.components.a.ready.http", "[METHOD ]path"),
    (C + 'port = 80\nready = { http = "http://127.0.0.1:x/h" }', "$.components.a.ready.http", "a port number"),
    (C + "ready = { status = 200 }", "$.components.a.ready.status", "only with ready.http"),
    (C + 'port = 80\nready = { http = "/h", status = 99 }', "$.components.a.ready.status", ">= 100"),
    (C + 'port = 80\nready = { http = "/h", port = 80 }', "$.components.a.ready", "at most one of"),
    (C + "alive = { every_s = 2 }", "$.components.a.alive", "exactly one of http and exec"),
    (C + 'alive = { http = "/h", exec = ["true"] }', "$.components.a.alive", "exactly one of http and exec"),
    (C + "alive = { exec = [] }", "$.components.a.alive.exec", "a command"),
    (C + 'alive = { exec = ["true"], status = 200 }', "$.components.a.alive.status", "only with alive.http"),
    (C + 'alive = { exec = ["true"], failures = 0 }', "$.components.a.alive.failures", ">= 1"),
    (C + 'alive = { exec = ["true"], every_s = 0 }', "$.components.a.alive.every_s", "> 0"),
    (C + "trim = {}", "$.components.a.trim", "exactly one of signal and http"),
    (C + 'trim = { signal = "SIGUSR1", http = "/x" }', "$.components.a.trim", "exactly one of"),
    (C + 'trim = { signal = "SIGKILL" }', "$.components.a.trim.signal", "without ending or freezing"),
    (C + 'trim_signal = "SIGUSR1"\ntrim = { signal = "SIGUSR2" }', "$.components.a.trim_signal", "not both"),
    (C + 'trim = { http = "/slots/0?action=erase" }', "$.components.a.trim.http", "set the component's `port`"),
    (C + 'port = 80\nunload = { http = "http://10.0.0.1/x" }', "$.components.a.unload.http", "a loopback host"),
    (C + 'port = 80\nunload = [{ http = "/a" }, { http = "FETCH /x y" }]', "$.components.a.unload[1].http", "METHOD"),
    (C + 'unload = { body = "{}" }', "$.components.a.unload", "http"),
    (C + 'proxy = "/v1"', "$.components.a.proxy", "a full loopback URL"),
    (C + 'proxy = "http://192.168.1.2:8080"', "$.components.a.proxy", "a loopback host"),
    (C + "port = 0", "$.components.a.port", ">= 1"),
]


@pytest.mark.parametrize("text, path, words", INVALID, ids=[i[1] + ":" + i[2][:20] for i in INVALID])
def test_invalid_model_server_keys_name_the_field(text: str, path: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "stack.toml")
    assert info.value.path == path
    assert words in info.value.expected, info.value.expected


def test_port_macro_is_replaced_everywhere_it_may_appear() -> None:
    spec = parse_config(SERVER, "stack.toml").components["llm"]
    assert endpoints.needs_port(spec)
    run = endpoints.with_port(spec, 41234)
    assert run.port == 41234
    assert run.command == ["llama-server", "--model", "m.gguf", "--port", "41234"]
    assert run.env == {"LLM_URL": "http://127.0.0.1:41234"}
    assert run.proxy == "http://127.0.0.1:41234/v1"
    assert [a.http for a in endpoints.unload_actions(run)] == [
        "/api/generate",
        "POST http://127.0.0.1:41234/api/generate",
    ]
    assert probespec.url_for("/health", run.port) == "http://127.0.0.1:41234/health"
    assert endpoints.proxy_url(run) == "http://127.0.0.1:41234/v1"
    # the config itself keeps the macro: each start gets its own port
    assert "${PORT}" in spec.command[-1]
    again = endpoints.with_port(spec, 50000)
    assert again.command[-1] == "50000" and again.env["LLM_URL"].endswith(":50000")


def test_fixed_port_is_what_the_macro_means() -> None:
    text = '[components.a]\ncommand = ["srv", "-p", "${PORT}"]\nport = 8081\nready = { http = "/v1/models" }'
    spec = parse_config(text, "s.toml")
    spec_a = spec.components["a"]
    assert not endpoints.needs_port(spec_a)  # nothing to pick: port is fixed
    assert endpoints.with_port(spec_a, spec_a.port).command == ["srv", "-p", "8081"]
    assert endpoints.proxy_url(spec_a) == "http://127.0.0.1:8081"


def test_components_without_the_macro_are_left_alone() -> None:
    spec = parse_config(C, "s.toml").components["a"]
    assert not endpoints.uses_port_macro(spec) and not endpoints.needs_port(spec)
    assert endpoints.with_port(spec, None) is spec
    assert endpoints.proxy_url(spec) is None


def test_trim_signal_and_trim_table_are_one_setting() -> None:
    old = parse_config(C + 'trim_signal = "SIGUSR1"', "s.toml").components["a"]
    new = parse_config(C + 'trim = { signal = "SIGUSR1" }', "s.toml").components["a"]
    assert old.trim == new.trim == Trim(signal="SIGUSR1")
    assert old.trim_signal == new.trim_signal == "SIGUSR1"
    http = parse_config(SERVER, "s.toml").components["llm"]
    assert http.trim_signal is None and http.trim is not None
    assert http.trim.action() == HttpAction(http="POST /slots/0?action=erase")


def test_one_unload_table_or_an_array_of_them() -> None:
    one = parse_config(C + 'port = 11434\nunload = { http = "/api/generate", body = "{}" }', "s.toml").components["a"]
    assert endpoints.unload_actions(one) == [HttpAction(http="/api/generate", body="{}")]


@pytest.mark.parametrize(
    "text, method, target",
    [
        ("/health", "GET", "/health"),
        ("post /slots/0?action=erase", "POST", "/slots/0?action=erase"),
        ("DELETE http://localhost:9/x", "DELETE", "http://localhost:9/x"),
    ],
)
def test_split_target(text: str, method: str, target: str) -> None:
    assert probespec.split_target(text, "GET") == (method, target)


def test_ipv6_loopback_urls_are_accepted() -> None:
    assert probespec.url_for("http://[::1]:8080/health", None) == "http://[::1]:8080/health"
    with pytest.raises(probespec.BadTarget):
        probespec.url_for("http://[2001:db8::1]:8080/health", None)
