"""A real llama.cpp server under the supervisor: llama-cpp-python's own server and ours
(components/llama_server.py, which adds /health and the slot erase), each running a GGUF
model the tests write with random weights (components/random_gguf.py).

Needs the `models` extra: `bin/test --models` installs it (CI does).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, ProcessReaper, Stack, short_tmpdir, wait_until

if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("gguf") is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the llama.cpp tests: .ci/run installs them with `bin/test --models`")
    pytest.skip(
        "llama-cpp-python is not installed: `bin/test --models` installs it (compiles llama.cpp once, ~11 min)",
        allow_module_level=True,
    )

StackFactory = Callable[[str], Stack]
pytestmark = pytest.mark.timeout(120)

WORDS = ["the", "model", "memory", "is", "on", "of", "and"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small model (4 blocks x 256: 12 MB) and a bigger one (8 x 512: 96 MB)."""
    from components.random_gguf import write

    root = tmp_path_factory.mktemp("models")
    paths = {"small": root / "small.gguf", "big": root / "big.gguf"}
    write(paths["small"])
    write(paths["big"], blocks=8, dims=512)
    return paths


def ours(name: str, model: Path, *args: str, **keys: str) -> str:
    """components.llama_server on `${PORT}`, READY by /health."""
    command = ["python", "-m", "components.llama_server", "--model", str(model), "--port", "${PORT}", *args]
    keys.setdefault("ready", '{ http = "/health", timeout_s = 60 }')
    lines = [f"[components.{name}]", f"command = {json.dumps(command)}", f"cwd = {json.dumps(str(REPO))}"]
    return "\n".join(lines + [f"{k} = {v}" for k, v in keys.items()]) + "\n"


def post(port: int, path: str, body: dict[str, Any] | None = None, timeout: float = 60.0) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else b""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def prompt(seed: int, words: int = 350) -> str:
    """About four tokens a word: most words go to byte tokens in the random model's vocabulary."""
    return " ".join(WORDS[(seed * 7 + i * i) % len(WORDS)] for i in range(words)) + f" {seed}"


def complete(port: int, seed: int, timeout: float = 60.0) -> dict[str, Any]:
    status, body = post(port, "/v1/completions", {"prompt": prompt(seed), "max_tokens": 4}, timeout)
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def lines_of(stack: Stack, name: str, event: str) -> list[dict[str, Any]]:
    lines = stack.call("logs", name=name, lines=500)["lines"]
    return [json.loads(x.split(" ", 1)[1]) for x in lines if x.startswith(event + " ")]


def described(stack: Stack, name: str) -> dict[str, Any]:
    return next(c for c in stack.call("report")["components"] if c["name"] == name)


def test_both_servers_start_on_their_own_port_and_answer(make_stack: StackFactory, models: dict[str, Path]) -> None:
    upstream = [
        "python", "-m", "llama_cpp.server", "--model", str(models["small"]),
        "--model_alias", "tiny", "--host", "127.0.0.1", "--port", "${PORT}",
    ]  # fmt: skip
    stack = make_stack(
        ours("llm", models["small"], proxy='"http://127.0.0.1:${PORT}"')
        + "[components.upstream]\n"
        + f"command = {json.dumps(upstream)}\n"
        + 'ready = { http = "/v1/models", timeout_s = 60 }\n'
    )
    stack.up()
    llm = stack.wait_state("llm", "READY", timeout=60)
    upstream_row = stack.wait_state("upstream", "READY", timeout=60)
    for row in (llm, upstream_row):
        stack.reaper.track_tree(row["pid"])
    assert llm["port"] != upstream_row["port"]
    # READY came from the HTTP answer after the load, not from the port opening before it.
    listening, loaded = lines_of(stack, "llm", "listening")[0], lines_of(stack, "llm", "loaded")[0]
    assert listening["port"] == llm["port"] and listening["t"] < loaded["t"]
    answer = complete(llm["port"], 1)
    assert answer["usage"]["completion_tokens"] > 0 and answer["choices"][0]["text"]
    status, listed = post_get(upstream_row["port"], "/v1/models")
    assert status == 200 and listed["data"][0]["id"] == "tiny"
    assert complete(upstream_row["port"], 2)["usage"]["prompt_tokens"] > 0
    assert described(stack, "llm")["url"] == f"http://127.0.0.1:{llm['port']}"
    assert stack.close() == []


def post_get(port: int, path: str) -> tuple[int, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
        return answer.status, json.loads(answer.read())


def test_the_mapped_model_shows_as_file_backed_memory(make_stack: StackFactory, models: dict[str, Path]) -> None:
    """llama.cpp maps the GGUF: its pages are file-backed (the kernel can drop and re-read
    them); read into memory (--no-mmap) the same weights are anonymous."""
    stack = make_stack(ours("mapped", models["big"]) + ours("read", models["big"], "--no-mmap"))
    stack.up()
    rows = {name: stack.wait_state(name, "READY", timeout=60) for name in ("mapped", "read")}
    for row in rows.values():
        stack.reaper.track_tree(row["pid"])
        complete(row["port"], 3)  # every weight is read at least once

    model_mb = models["big"].stat().st_size / 1048576

    def both_measured() -> dict[str, dict[str, Any]] | None:
        found = {name: described(stack, name) for name in rows}
        return found if all(r["rss_mb"] > model_mb for r in found.values()) else None

    found = wait_until(both_measured, 20, what="both trees measured with their weights")
    mapped, read = found["mapped"], found["read"]
    assert mapped["file_mb"] - read["file_mb"] > 0.8 * model_mb, (mapped, read)
    assert read["anon_mb"] - mapped["anon_mb"] > 0.8 * model_mb, (mapped, read)
    assert stack.close() == []


def test_alive_probe_restarts_a_hung_server(make_stack: StackFactory, models: dict[str, Path]) -> None:
    stack = make_stack(
        ours("llm", models["small"], alive='{ http = "/health", every_s = 0.5, timeout_s = 1, failures = 2 }')
    )
    stack.up()
    first = stack.wait_state("llm", "READY", timeout=60)
    stack.reaper.track_tree(first["pid"])
    os.kill(first["pid"], signal.SIGSTOP)
    again = wait_until(
        lambda: (c := stack.component("llm"))["restarts"] >= 1 and c["state"] == "READY" and c,
        60,
        what="the hung server restarted",
    )
    stack.reaper.track_tree(again["pid"])
    assert again["pid"] != first["pid"]
    assert "not alive: 2 probes failed in a row" in again["last_exit"]
    assert complete(again["port"], 4)["choices"]
    assert stack.close() == []


def test_http_trim_erases_the_prompt_cache_and_is_measured(make_stack: StackFactory, models: dict[str, Path]) -> None:
    stack = make_stack(
        "[memory]\ntrim_settle_s = 1.0\nsample_interval_s = 0.2\n"
        + ours("llm", models["small"], "--prompt-cache-mb", "512", trim='{ http = "POST /slots/0?action=erase" }')
    )
    stack.up()
    row = stack.wait_state("llm", "READY", timeout=60)
    stack.reaper.track_tree(row["pid"])
    start_mb = row["rss_mb"]
    for seed in range(4):
        complete(row["port"], 10 + seed)  # each saves its prompt's state in the RAM cache
    wait_until(lambda: stack.component("llm")["rss_mb"] > start_mb + 30, 20, what="the prompt cache in its RSS")
    actions = stack.call("optimize")["actions"]
    assert [(a["kind"], a["outcome"]) for a in actions] == [("TRIM", "trim_requested")]
    freed = wait_until(lambda: described(stack, "llm")["trim_freed_mb"], 20, what="the trim measured")
    erased = lines_of(stack, "llm", "erased")
    assert erased and erased[0]["prompt_cache_bytes"] > 15 << 20
    assert freed[-1] >= 15, freed
    assert complete(row["port"], 20)["choices"]  # still serves after the trim
    assert stack.component("llm")["pid"] == row["pid"]
    assert stack.close() == []


def test_a_growing_server_is_frozen_then_unloaded_under_pressure(
    make_stack: StackFactory, models: dict[str, Path]
) -> None:
    """Budget mode: the server's prompt cache grows with each request until the stack is past
    CRITICAL; the policy freezes it (LOW and growing), then unloads it once frozen too long."""
    stack = make_stack(
        "[memory]\nbudget_mb = 200\nhold_s = 0.5\nsample_interval_s = 0.2\nmax_frozen_s = 2\nrecovery_hold_s = 60\n"
        + ours("llm", models["small"], "--prompt-cache-mb", "1024", priority='"LOW"', stop_grace_s="2")
    )
    stack.up()
    row = stack.wait_state("llm", "READY", timeout=60)
    stack.reaper.track_tree(row["pid"])
    stop = threading.Event()

    def load() -> None:  # requests until the server stops answering (frozen, then gone)
        seed = 100
        while not stop.is_set():
            try:
                complete(row["port"], seed, timeout=5)
            except (OSError, AssertionError):
                return
            seed += 1

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        stack.wait_state("llm", "STOPPED", timeout=90)
    finally:
        stop.set()
        worker.join(10)
    actions = [(a["kind"], a["outcome"]) for a in stack.call("report")["recent_actions"] if a["component"] == "llm"]
    assert ("FREEZE", "frozen") in actions and ("UNLOAD", "unloading") in actions, actions
    assert actions.index(("FREEZE", "frozen")) < actions.index(("UNLOAD", "unloading"))
    report = described(stack, "llm")
    assert report["unloaded_by_policy"] and report["last_exit"].startswith("unloaded by policy")
    assert not os.path.exists(f"/proc/{row['pid']}")
    assert stack.close() == []


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """urllib would send loopback requests through a proxy named in the environment."""
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    yield


def test_the_example_llama_stack_runs_as_written(reaper: ProcessReaper, models: dict[str, Path]) -> None:
    """configs/llama-cpp.toml, unchanged but for the HTTP API (off: port 8000 may be taken),
    beside the random model its comment tells how to write."""
    root = short_tmpdir()
    stack: Stack | None = None
    try:
        (root / "configs").mkdir()
        (root / "models").mkdir()
        shutil.copy(models["big"], root / "models" / "random.gguf")
        text = (REPO / "configs" / "llama-cpp.toml").read_text().replace("enabled = true", "enabled = false")
        stack = Stack(text, reaper, root=root)
        stack.config = root / "configs" / "llama-cpp.toml"
        stack.config.write_text(text)
        stack.up()
        row = stack.wait_state("llm", "READY", timeout=90)
        stack.reaper.track_tree(row["pid"])
        assert stack.component("llama-server")["state"] == "STOPPED"  # autostart = false
        status, listed = post_get(row["port"], "/v1/models")
        assert status == 200 and listed["data"][0]["id"] == "local"
        assert complete(row["port"], 5)["choices"]
        report = described(stack, "llm")
        assert report["url"] == f"http://127.0.0.1:{row['port']}"
        assert report["prediction"]["basis"] == "estimate+inputs"  # the model file's size counts at once
        shown = stack.cli("status").stdout
        assert "PORT" in shown.splitlines()[1] and str(row["port"]) in shown
        assert stack.close() == []
    finally:
        if stack is not None:
            stack.close()  # also when an assertion failed: no supervisor outlives the test
        shutil.rmtree(root, ignore_errors=True)


def test_the_door_starts_a_llama_server_on_the_first_request_and_relays_its_stream(
    make_stack: StackFactory, models: dict[str, Path]
) -> None:
    import httpx

    from tests.test_door import free_port

    port = free_port()
    stack = make_stack(
        f"[http]\nenabled = true\nport = {port}\n[proxy]\nenabled = true\n"
        + ours("llm", models["small"], "--model-alias", "tiny", serves='["tiny"]', autostart="false")
    )
    stack.up()
    token = (stack.runtime / "http.token").read_text().strip()
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}, timeout=60, trust_env=False
    )
    try:
        assert stack.component("llm")["state"] == "STOPPED"
        body = {"model": "tiny", "messages": [{"role": "user", "content": "the model"}], "max_tokens": 8, "seed": 1}
        answer = client.post("/v1/chat/completions", json=body)
        assert answer.status_code == 200, answer.text
        assert "x-ironcliw-load-s" in answer.headers and answer.json()["usage"]["completion_tokens"] > 0
        row = stack.component("llm")
        stack.reaper.track_tree(row["pid"])
        with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as streamed:
            assert streamed.headers["content-type"].startswith("text/event-stream")
            events = [line for line in streamed.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and len(events) >= 3
        first = json.loads(events[0].removeprefix("data: "))
        assert first["object"] == "chat.completion.chunk" and first["model"] == "tiny"
    finally:
        client.close()
    assert stack.close() == []


class LlamaDoor:
    """A stack with the door on, over llama servers, and a client with the token."""

    def __init__(self, make_stack: StackFactory, text: str) -> None:
        import httpx

        from tests.test_door import free_port

        port = free_port()
        self.stack = make_stack(f"[http]\nenabled = true\nport = {port}\n{text}")
        self.stack.up()
        token = (self.stack.runtime / "http.token").read_text().strip()
        self.base = f"http://127.0.0.1:{port}"
        self.client = httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {token}"}, timeout=60, trust_env=False
        )

    def chat(self, model: str) -> Any:
        body = {"model": model, "messages": [{"role": "user", "content": "the model"}], "max_tokens": 4}
        return self.client.post("/v1/chat/completions", json=body)

    def close(self) -> None:
        self.client.close()
        assert self.stack.close() == []


def llama(name: str, model: Path, alias: str, **keys: str) -> str:
    keys.setdefault("autostart", "false")
    return ours(name, model, "--model-alias", alias, serves=json.dumps([alias]), **keys)


def test_the_door_on_llama_refuses_with_numbers_and_falls_back_to_a_smaller_profile(
    make_stack: StackFactory, models: dict[str, Path]
) -> None:
    small_command = ["python", "-m", "components.llama_server", "--model", str(models["small"])]
    small_command += ["--model-alias", "big", "--port", "${PORT}"]
    door = LlamaDoor(
        make_stack,
        "[memory]\nbudget_mb = 300\n[proxy]\nenabled = true\nmake_room = false\n"
        + llama("big", models["big"], "big", estimated_mb="260")
        + f"[components.big.profiles.small]\ncommand = {json.dumps(small_command)}\nestimated_mb = 130\n"
        + llama("huge", models["big"], "huge", estimated_mb="4000"),
    )
    import httpx

    anonymous = httpx.post(f"{door.base}/v1/chat/completions", json={"model": "big"}, trust_env=False, timeout=10)
    assert anonymous.status_code == 401
    answer = door.chat("big")  # 260 MB does not fit below WARNING (210 of 300); its small profile does
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-ironcliw-profile"] == "small" and answer.json()["choices"]
    row = door.stack.component("big")
    door.stack.reaper.track_tree(row["pid"])
    assert row["profile"] == "small"
    refused = door.chat("huge")
    assert refused.status_code == 507
    error = refused.json()["error"]
    assert error["predicted_mb"] >= 4000 and error["room_mb"] < 210 and "free before WARNING" in error["message"]
    door.close()


def test_the_door_on_llama_makes_room_by_priority_and_unloads_after_the_ttl(
    make_stack: StackFactory, models: dict[str, Path]
) -> None:
    door = LlamaDoor(
        make_stack,
        "[memory]\nbudget_mb = 300\nsample_interval_s = 0.2\nused_cpu_percent = 90\n"
        "[proxy]\nenabled = true\nmake_room = true\nidle_ttl_s = 3\n"
        + llama("low", models["small"], "low", priority='"LOW"', estimated_mb="150")
        + llama("high", models["small"], "high", priority='"HIGH"', estimated_mb="150"),
    )
    assert door.chat("low").status_code == 200
    low = door.stack.component("low")
    door.stack.reaper.track_tree(low["pid"])
    wait_until(lambda: door.stack.component("low")["rss_mb"] > 60, 10, what="low measured")
    answer = door.chat("high")  # 150 MB beside low's does not fit below 210: low goes
    assert answer.status_code == 200, answer.text
    high = door.stack.component("high")
    door.stack.reaper.track_tree(high["pid"])
    rows = {c["name"]: c for c in door.stack.call("status")["components"]}
    assert rows["low"]["state"] == "STOPPED" and "to make room for high" in rows["low"]["last_exit"]
    stopped = door.stack.wait_state("high", "STOPPED", timeout=20)  # idle 3 s: unloaded
    assert stopped["last_exit"].startswith("idle for ")
    door.close()


def test_the_door_on_llama_shares_one_cold_load_and_bounds_the_queue(
    make_stack: StackFactory, models: dict[str, Path]
) -> None:
    door = LlamaDoor(make_stack, "[proxy]\nenabled = true\nqueue = 2\n" + llama("llm", models["small"], "tiny"))
    answers: list[Any] = []

    def ask() -> None:
        import httpx

        with httpx.Client(base_url=door.base, headers=door.client.headers, timeout=60, trust_env=False) as client:
            body = {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
            answers.append(client.post("/v1/chat/completions", json=body))

    threads = [threading.Thread(target=ask) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    row = door.stack.component("llm")
    door.stack.reaper.track_tree(row["pid"])
    assert sorted(a.status_code for a in answers) == [200, 200, 503, 503, 503]
    spawned = [e for e in door.stack.log_events() if e.get("event") == "spawned" and e["component"] == "llm"]
    assert len(spawned) == 1
    door.close()
