"""Model servers as components, on a small HTTP server of our own (tests/model_like_server.py):
`${PORT}`, readiness and liveness over HTTP, trims and unloads over HTTP, measured.
The same on a real llama.cpp server is in test_llama_server.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from supervisor.httpcalls import HttpCaller
from supervisor.probes import watch_alive
from supervisor.probespec import Liveness
from tests.helpers import REPO, Stack, wait_until

StackFactory = Callable[[str], Stack]
pytestmark = pytest.mark.timeout(90)

SERVER = ["python", "-m", "tests.model_like_server", "--port", "${PORT}"]


def server(name: str, *args: str, **keys: str) -> str:
    """A [components.NAME] table running the model-like server on `${PORT}`."""
    lines = [
        f"[components.{name}]",
        f"command = {json.dumps([*SERVER, *args])}",
        f"cwd = {json.dumps(str(REPO))}",
        *(f"{key} = {value}" for key, value in keys.items()),
    ]
    return "\n".join(lines) + "\n"


def get(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except OSError:  # not listening yet (URLError is an OSError)
        return 0, None


def server_lines(stack: Stack, name: str, event: str) -> list[dict[str, Any]]:
    lines = stack.call("logs", name=name, lines=500)["lines"]
    return [json.loads(line.split(" ", 1)[1]) for line in lines if line.startswith(event + " ")]


def test_port_macro_gives_each_run_a_free_port_and_ready_waits_for_the_http_answer(make_stack: StackFactory) -> None:
    stack = make_stack(
        server(
            "slow",
            "--load-s",
            "2.5",
            env='{ TEST_URL = "http://127.0.0.1:${PORT}/v1" }',
            ready='{ http = "/health", timeout_s = 30 }',
            proxy='"http://127.0.0.1:${PORT}/v1"',
        )
        + server("other", ready='{ http = "/v1/models", status = 200 }')
    )
    stack.up(wait=True)
    row = wait_until(lambda: (c := stack.component("slow"))["port"] and c, 10, what="slow's port")
    port = row["port"]
    stack.reaper.track_tree(row["pid"])
    # While it loads, the port accepts connections and /health says 503: still STARTING.
    wait_until(lambda: get(f"http://127.0.0.1:{port}/health")[0] == 503, 10, what="the 503 while loading")
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    assert stack.component("slow")["state"] == "STARTING"
    stack.wait_state("slow", "READY", timeout=20)
    assert get(f"http://127.0.0.1:{port}/health")[0] == 200
    health = [r for r in server_lines(stack, "slow", "request") if r["path"] == "/health"]
    loaded = server_lines(stack, "slow", "loaded")[0]["t"]
    assert any(r["t"] < loaded for r in health), "the probe never saw the 503"
    # The macro reached the command (it listens there), the env and the proxy URL.
    assert get(f"http://127.0.0.1:{port}/env")[1] == {"TEST_URL": f"http://127.0.0.1:{port}/v1"}
    described = next(c for c in stack.call("components")["components"] if c["name"] == "slow")
    assert described["url"] == f"http://127.0.0.1:{port}/v1"
    command = described["command"]
    assert command[command.index("--port") + 1] == str(port)
    # Each component got its own port; a restart gets a new one (the old may still linger).
    other = stack.wait_state("other", "READY")
    assert other["port"] not in (None, port)
    stack.cli("restart", "slow")
    again = stack.wait_state("slow", "READY", timeout=20)
    stack.reaper.track_tree(again["pid"])
    assert again["port"] and again["pid"] != row["pid"]
    assert get(f"http://127.0.0.1:{again['port']}/health")[0] == 200
    assert stack.close() == []


def test_ready_timeout_names_the_last_answer(make_stack: StackFactory) -> None:
    stack = make_stack(
        server("never", "--load-s", "600", max_restarts="0", ready='{ http = "/health", timeout_s = 1.5 }')
    )
    stack.up()
    row = stack.wait_state("never", "FATAL", "BACKOFF", timeout=20)
    assert "not ready within 1.5 s (last: GET http://127.0.0.1:" in row["last_exit"], row["last_exit"]
    assert "/health: 503" in row["last_exit"]
    assert stack.close() == []


def test_alive_probe_restarts_a_server_that_hangs(make_stack: StackFactory) -> None:
    stack = make_stack(
        server(
            "hangs",
            ready='{ http = "/health" }',
            alive='{ http = "/health", every_s = 0.3, timeout_s = 0.5, failures = 2 }',
            backoff_initial_s="0.2",
        )
    )
    stack.up()
    first = stack.wait_state("hangs", "READY")
    stack.reaper.track_tree(first["pid"])
    os.kill(first["pid"], signal.SIGSTOP)  # it hangs: the port is open, nothing answers
    wait_until(
        lambda: (c := stack.component("hangs"))["restarts"] >= 1 and c["state"] == "READY" and c,
        30,
        what="a restart after the failed probes",
    )
    row = stack.component("hangs")
    stack.reaper.track_tree(row["pid"])
    assert row["pid"] != first["pid"]
    assert "not alive: 2 probes failed in a row" in (row["last_exit"] or ""), row["last_exit"]
    assert "timed out after 0.5 s" in row["last_exit"]
    wait_until(lambda: not os.path.exists(f"/proc/{first['pid']}"), 10, what="the hung server to be gone")
    assert stack.close() == []


def test_alive_exec_probe_that_passes_keeps_it_up_and_one_that_fails_restarts_it(make_stack: StackFactory) -> None:
    stack = make_stack(
        server(
            "passes",
            ready='{ http = "/health" }',
            alive='{ exec = ["python", "-c", "import sys; sys.exit(0)"], every_s = 0.2, failures = 1 }',
        )
        + server(
            "fails",
            ready='{ http = "/health" }',
            max_restarts="0",
            alive='{ exec = ["python", "-c", "import sys; sys.exit(3)"], every_s = 0.2, failures = 2 }',
        )
    )
    stack.up()
    passes = stack.wait_state("passes", "READY")
    stack.reaper.track_tree(passes["pid"])
    fails = stack.wait_state("fails", "FATAL", timeout=20)
    assert "not alive: 2 probes failed in a row (last: " in fails["last_exit"]
    assert "exited 3" in fails["last_exit"]
    row = stack.component("passes")
    assert row["state"] == "READY" and row["restarts"] == 0 and row["pid"] == passes["pid"]
    assert stack.close() == []


def test_a_component_that_is_not_ready_is_not_probed() -> None:
    """A frozen (or starting) component cannot answer: its failures are not counted."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens there: every probe fails at once
    alive = Liveness(http="/health", every_s=0.05, timeout_s=0.5, failures=2)
    ready = {"now": False}

    async def scenario() -> tuple[bool, str | None]:
        caller = HttpCaller()
        try:
            with anyio.move_on_after(0.6):  # twelve periods not ready: no verdict
                await watch_alive(alive, port, caller, lambda: ready["now"], "x")
                return False, None
            ready["now"] = True
            with anyio.fail_after(5):
                return True, await watch_alive(alive, port, caller, lambda: ready["now"], "x")
        finally:
            await caller.aclose()

    waited, reason = anyio.run(scenario)
    assert waited and reason is not None
    assert reason.startswith("not alive: 2 probes failed in a row (last: GET http://127.0.0.1:")
    assert "ConnectError" in reason


def test_http_trim_is_sent_and_measured(make_stack: StackFactory) -> None:
    stack = make_stack(
        "[memory]\ntrim_settle_s = 0.5\nsample_interval_s = 0.2\n"
        + server("cache", ready='{ http = "/health" }', trim='{ http = "POST /slots/0?action=erase" }')
    )
    stack.up()
    row = stack.wait_state("cache", "READY")
    stack.reaper.track_tree(row["pid"])
    request = urllib.request.Request(f"http://127.0.0.1:{row['port']}/cache/fill?mb=120", method="POST")
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert json.loads(answer.read())["cache_mb"] == 120
    wait_until(lambda: stack.component("cache")["rss_mb"] > 120, 10, what="the cache in its RSS")
    actions = stack.call("optimize")["actions"]
    assert [(a["kind"], a["outcome"]) for a in actions if a["component"] == "cache"] == [("TRIM", "trim_requested")]
    freed = wait_until(
        lambda: next(c for c in stack.call("report")["components"] if c["name"] == "cache")["trim_freed_mb"],
        15,
        what="the trim to be measured",
    )
    assert freed[-1] >= 100, freed
    erased = server_lines(stack, "cache", "erased")
    assert erased and erased[0]["freed_mb"] == 120
    posted = [r for r in server_lines(stack, "cache", "request") if r["method"] == "POST" and "slots" in r["path"]]
    assert posted[0]["path"] == "/slots/0?action=erase"
    assert stack.close() == []


def test_unload_over_http_keeps_the_server_then_a_second_unload_stops_it(make_stack: StackFactory) -> None:
    body_a = json.dumps({"model": "a", "keep_alive": 0})
    body_b = json.dumps({"model": "b", "keep_alive": 0})
    stack = make_stack(
        "[memory]\ntrim_settle_s = 0.5\nsample_interval_s = 0.2\nidle_unload_s = 0\nused_cpu_percent = 90\n"
        + server(
            "ollama",
            "--model",
            "a=60",
            "--model",
            "b=60",
            priority='"LOW"',
            ready='{ http = "/health" }',
            unload=f"[{{ http = \"/api/generate\", body = '{body_a}' }}, {{ http = \"/api/generate\", body = '{body_b}' }}]",
        )
    )
    stack.up()
    row = stack.wait_state("ollama", "READY")
    stack.reaper.track_tree(row["pid"])
    wait_until(lambda: stack.component("ollama")["rss_mb"] > 120, 10, what="both models in its RSS")
    actions = stack.call("optimize")["actions"]
    assert [(a["kind"], a["outcome"]) for a in actions] == [("UNLOAD", "unloading_models")]
    wait_until(lambda: len(server_lines(stack, "ollama", "unloaded")) == 2, 10, what="both models unloaded")
    assert [u["model"] for u in server_lines(stack, "ollama", "unloaded")] == ["a", "b"]
    posted = [r for r in server_lines(stack, "ollama", "request") if r["method"] == "POST"]
    assert {r["content_type"] for r in posted} == {"application/json"}
    wait_until(lambda: stack.component("ollama")["rss_mb"] < 80, 10, what="the models' memory to go back")
    kept = stack.component("ollama")
    assert kept["state"] == "READY" and kept["pid"] == row["pid"]
    # Still short and not used since: the next unload stops the process.
    wait_until(
        lambda: [(a["kind"], a["outcome"]) for a in stack.call("optimize")["actions"]] == [("UNLOAD", "unloading")],
        10,
        what="the second unload to stop it (the first one's settle time must pass)",
    )
    stopped = stack.wait_state("ollama", "STOPPED")
    assert stopped["pid"] is None
    assert stack.close() == []
