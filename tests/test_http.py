"""The HTTP API against a running supervisor with real components, and its security rules."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Callable
from typing import Any

import pytest

from tests.helpers import SLEEPER, Stack

StackFactory = Callable[[str], Stack]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def web(make_stack: StackFactory) -> tuple[Stack, int, str]:
    port = free_port()
    stack = make_stack(
        f"""
        [memory]
        budget_mb = 400
        [http]
        enabled = true
        port = {port}
        [components.chatbot]
        command = {SLEEPER}
        priority = "CRITICAL"
        ready = {{ log_pattern = "ready" }}
        [components.extra]
        command = {SLEEPER}
        priority = "LOW"
        ready = {{ log_pattern = "ready" }}
        [components.big]
        command = {SLEEPER}
        priority = "HIGH"
        estimated_mb = 900
        autostart = false
        """
    )
    stack.up()
    stack.wait_state("chatbot", "READY")
    stack.wait_state("extra", "READY")
    token = (stack.runtime / "http.token").read_text().strip()
    return stack, port, token


def request(
    port: int, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None, raw: bytes | None = None
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, body=payload, headers={"Host": f"127.0.0.1:{port}", **(headers or {})})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    assert response.getheader("content-type") == "application/json", data
    return response.status, json.loads(data)


def test_read_endpoints(web: tuple[Stack, int, str]) -> None:
    stack, port, _ = web
    status, health = request(port, "GET", "/health")
    assert status == 200 and health["status"] == "healthy"
    assert set(health) == {"status", "memory"}  # the seed's shape, exactly
    assert set(health["memory"]) == {"state", "percent_used", "available_mb", "components_loaded"}
    assert health["memory"]["state"] == "healthy"  # lower case, as the seed shows it
    assert sorted(health["memory"]["components_loaded"]) == ["chatbot", "extra"]
    status, mem = request(port, "GET", "/memory/status")
    assert status == 200 and mem["state"] == "HEALTHY" and mem["budget_mb"] == 400
    status, report = request(port, "GET", "/memory/report")
    assert status == 200 and {c["name"] for c in report["components"]} == {"chatbot", "extra", "big"}
    status, comps = request(port, "GET", "/memory/components")
    assert status == 200 and {c["name"] for c in comps["components"]} == {"chatbot", "extra", "big"}
    status, spec = request(port, "GET", "/openapi.json")
    assert status == 200 and "/memory/components/{name}/load" in spec["paths"]
    assert set(spec["paths"]["/memory/components/register"]["post"]["responses"]) == {"201", "4XX"}
    assert (stack.runtime / "http.token").stat().st_mode & 0o777 == 0o600


def test_state_changing_endpoints(web: tuple[Stack, int, str]) -> None:
    stack, port, token = web
    auth = {"X-Ironcliw-Token": token, "Content-Type": "application/json"}
    status, row = request(port, "POST", "/memory/components/extra/unload", headers=auth)
    assert status == 200 and row["state"] == "STOPPED"
    status, row = request(port, "POST", "/memory/components/extra/load", {}, headers=auth)
    assert status == 200 and row["state"] == "READY"
    status, refused = request(port, "POST", "/memory/components/big/load", {}, headers=auth)
    assert status == 409 and "big needs ~900 MB" in refused["error"]["message"]
    status, row = request(
        port,
        "POST",
        "/memory/components/register",
        {
            "name": "late",
            "command": json.loads(SLEEPER),
            "priority": "LOW",
            "estimated_mb": 10,
            "ready": {"log_pattern": "ready"},
        },
        headers=auth,
    )
    assert status == 201 and row["name"] == "late" and row["state"] == "STOPPED"
    status, row = request(port, "POST", "/memory/components/late/load", headers=auth)
    assert status == 200 and row["state"] == "READY"
    status, done = request(port, "POST", "/memory/optimize", headers=auth)
    assert status == 200 and isinstance(done["actions"], list)
    status, done = request(port, "POST", "/memory/emergency-cleanup", headers=auth)
    assert status == 200 and {a["component"] for a in done["actions"] if a["kind"] == "UNLOAD"} == {"extra", "late"}
    stack.wait_state("extra", "STOPPED")
    assert stack.component("chatbot")["state"] == "READY"


@pytest.mark.parametrize(
    "method, path, headers, body, status, code",
    [
        ("GET", "/health", {"Host": "evil.example"}, None, 400, "BAD_HOST"),
        ("GET", "/health", {"Host": "evil.example:8000"}, None, 400, "BAD_HOST"),
        ("GET", "/health", {"Host": "[::1]evil.com"}, None, 400, "BAD_HOST"),
        ("GET", "/health", {"Host": "[::1].attacker.com"}, None, 400, "BAD_HOST"),
        ("GET", "/health", {"Host": "127.0.0.1:PORT@evil.com"}, None, 400, "BAD_HOST"),
        ("GET", "/health", {"Host": "localhost.evil.com:PORT"}, None, 400, "BAD_HOST"),
        ("GET", "/health", {"Host": "127.0.0.1:1"}, None, 400, "BAD_HOST"),
        (
            "POST",
            "/memory/optimize",
            {"TOKEN": "", "Origin": "http://127.0.0.1:PORT.evil.com"},
            None,
            403,
            "CROSS_ORIGIN",
        ),
        ("POST", "/memory/optimize", {}, None, 403, "NO_TOKEN"),
        ("POST", "/memory/optimize", {"X-Ironcliw-Token": "wrong"}, None, 403, "BAD_TOKEN"),
        ("POST", "/memory/optimize", {"TOKEN": "", "Origin": "http://evil.example"}, None, 403, "CROSS_ORIGIN"),
        ("POST", "/memory/components/extra/load", {"TOKEN": ""}, b"{not json", 400, "BAD_REQUEST"),
        ("POST", "/memory/components/extra/load", {"TOKEN": ""}, b"[" * 100_000 + b"]" * 100_000, 400, "BAD_REQUEST"),
        ("POST", "/memory/components/ghost/load", {"TOKEN": ""}, b"{}", 404, "UNKNOWN_COMPONENT"),
        ("POST", "/memory/components/extra/load", {"TOKEN": ""}, b'{"make_room": "yes"}', 422, "BAD_CONFIG"),
        (
            "POST",
            "/memory/components/register",
            {"TOKEN": ""},
            b'{"name": "x", "command": "not a list"}',
            422,
            "BAD_CONFIG",
        ),
        ("GET", "/nowhere", {}, None, 404, "NOT_FOUND"),
        ("GET", "/memory/optimize", {}, None, 405, "METHOD_NOT_ALLOWED"),
    ],
)
def test_refusals_are_4xx_with_a_json_error(
    web: tuple[Stack, int, str],
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes | None,
    status: int,
    code: str,
) -> None:
    stack, port, token = web
    headers = {k: v.replace("PORT", str(port)) for k, v in headers.items()}
    if "TOKEN" in headers:
        headers = {k: v for k, v in headers.items() if k != "TOKEN"} | {"X-Ironcliw-Token": token}
    got, payload = request(port, method, path, headers=headers, raw=body)
    assert got == status, payload
    assert payload["error"]["code"] == code
    assert stack.component("extra")["state"] == "READY"  # nothing refused changed anything


def test_metrics_pass_promtool(web: tuple[Stack, int, str]) -> None:
    import shutil
    import subprocess

    _, port, _ = web
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics", headers={"Host": f"127.0.0.1:{port}"})
    response = conn.getresponse()
    text = response.read()
    conn.close()
    assert response.status == 200 and response.getheader("content-type").startswith("text/plain")
    for name in (
        "ironcliw_component_rss_bytes",
        "ironcliw_component_state",
        "ironcliw_component_restarts_total",
        "ironcliw_actions_total",
        "ironcliw_memory_state",
        "ironcliw_sample_duration_seconds",
    ):
        assert name.encode() in text, name
    assert b'ironcliw_component_state{component="chatbot",state="READY"} 1.0' in text
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian's prometheus package; .ci/run installs it)")
    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert lint.returncode == 0 and lint.stdout == b"" and lint.stderr == b"", (lint.stdout, lint.stderr)


def test_server_sent_events_stream_memory_and_state(web: tuple[Stack, int, str]) -> None:
    stack, port, token = web
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET /memory/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    got = b""
    try:
        while b"event: hello" not in got:
            got += sock.recv(65536)
        request(port, "POST", "/memory/components/extra/unload", headers={"X-Ironcliw-Token": token})
        while b"event: state" not in got or b"event: memory" not in got:
            got += sock.recv(65536)
    finally:
        sock.close()
    assert b"text/event-stream" in got and b'"component":"extra"' in got


def test_up_with_the_http_port_taken_is_refused_with_one_clear_line(make_stack: StackFactory) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stack = make_stack(f"[http]\nenabled = true\nport = {port}\n[components.s]\ncommand = {SLEEPER}\n")
        proc = stack.cli("up", timeout=30)
    assert proc.returncode == 1
    assert f"cannot serve HTTP on 127.0.0.1:{port}" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_register_takes_the_seeds_body_and_survives_a_restart(web: tuple[Stack, int, str]) -> None:
    stack, port, token = web
    auth = {"X-Ironcliw-Token": token, "Content-Type": "application/json"}
    # The seed's body: no command. The supervisor never starts it; its owner loads it.
    status, row = request(
        port,
        "POST",
        "/memory/components/register",
        {"name": "nlp_engine", "priority": "HIGH", "estimated_mb": 1500},
        headers=auth,
    )
    assert status == 201 and row["name"] == "nlp_engine" and row["state"] == "STOPPED" and row["persisted"] is True
    status, refused = request(port, "POST", "/memory/components/nlp_engine/load", headers=auth)
    assert status == 409 and "has no command: its owner loads it" in refused["error"]["message"]
    status, row = request(
        port, "POST", "/memory/components/register",
        {"name": "worker", "command": json.loads(SLEEPER), "priority": "LOW", "ready": {"log_pattern": "ready"}},
        headers=auth,
    )  # fmt: skip
    assert status == 201 and row["persisted"] is True
    status, bad = request(port, "POST", "/memory/components/register", {"name": "x", "pid": "12"}, headers=auth)
    assert status == 422 and bad["error"]["message"].endswith("at $.pid")  # as every bad field is
    # A restart keeps both, as a config file's components are kept.
    assert stack.stop() == 0
    stack.up()
    rows = {c["name"]: c for c in stack.call("components")["components"]}
    assert {"nlp_engine", "worker"} <= set(rows) and rows["nlp_engine"]["priority"] == "HIGH"
    stack.call("load", name="worker")
    assert stack.component("worker")["state"] == "READY"
    # A corrupt file is set aside, not trusted, and the supervisor starts without it.
    assert stack.stop() == 0
    (stack.state / "registered.json").write_text('{"schema": 1, "components": {"worker": [')
    stack.up()
    assert "worker" not in {c["name"] for c in stack.call("components")["components"]}
    assert list(stack.state.glob("registered.corrupt-*.json"))
