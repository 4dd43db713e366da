"""The OpenAI-compatible door (`[proxy]`), on the small model-like server of
tests/model_like_server.py; the same on a real llama.cpp server is in test_llama_server.py."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import psutil
import pytest

from tests.helpers import REPO, Stack, wait_until

StackFactory = Callable[[str], Stack]
pytestmark = pytest.mark.timeout(90)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server(name: str, serves: list[str], *args: str, **keys: str) -> str:
    command = ["python", "-m", "tests.model_like_server", "--port", "${PORT}", *args]
    lines = [
        f"[components.{name}]",
        f"command = {json.dumps(command)}",
        f"cwd = {json.dumps(str(REPO))}",
        f"serves = {json.dumps(serves)}",
        'ready = { http = "/health" }',
        "autostart = false",
        *(f"{k} = {v}" for k, v in keys.items()),
    ]
    return "\n".join(lines) + "\n"


class Door:
    """A stack with the door on, and an httpx client that sends its token."""

    def __init__(self, make_stack: StackFactory, proxy: str, components: str, memory: str = "") -> None:
        self.port = free_port()
        text = f"[http]\nenabled = true\nport = {self.port}\n[proxy]\nenabled = true\n{proxy}\n"
        self.stack = make_stack(text + (f"[memory]\n{memory}\n" if memory else "") + components)
        self.stack.up()
        self.token = (self.stack.runtime / "http.token").read_text().strip()
        self.base = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.base, timeout=60, trust_env=False, headers=self.auth)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def chat(self, model: str, **extra: Any) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
        return self.client.post("/v1/chat/completions", json=body)

    def track(self, name: str) -> dict[str, Any]:
        row = self.stack.component(name)
        self.stack.reaper.track_tree(row["pid"])
        return row

    def raw_chat(self, **body: Any) -> socket.socket:
        """A chat completion sent on a plain socket, left open: the caller reads, or leaves."""
        data = json.dumps({"model": "tiny", "messages": [], **body}).encode()
        head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nAuthorization: Bearer {self.token}\r\n"
        client = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        client.sendall(head.encode() + b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
        return client

    def server_lines(self, name: str, event: str) -> list[dict[str, Any]]:
        lines = self.stack.call("logs", name=name, lines=500)["lines"]
        return [json.loads(x.split(" ", 1)[1]) for x in lines if x.startswith(event + " ")]

    def close(self) -> None:
        self.client.close()
        assert self.stack.close() == []
        # The door's upstream client is closed at shutdown: nothing left for the collector
        # to complain about (aiohttp logs "Unclosed client session" / "connector" otherwise).
        assert "Unclosed" not in self.stack.out_path.read_text(errors="replace")


def test_first_request_starts_the_server_and_streams_pass_through_unchanged(make_stack: StackFactory) -> None:
    door = Door(make_stack, "", server("llm", ["tiny"], "--load-s", "0.5"))
    assert door.stack.component("llm")["state"] == "STOPPED"
    listed = door.client.get("/v1/models").json()
    assert [(m["id"], m["owned_by"], m["state"]) for m in listed["data"]] == [("tiny", "llm", "STOPPED")]
    answer = door.chat("tiny")
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "ok"
    assert float(answer.headers["x-ironcliw-load-s"]) >= 0.5  # it waited for the load
    assert answer.headers["x-ironcliw-component"] == "llm"
    row = door.track("llm")
    assert row["state"] == "READY"
    # warm now: no load; the client's token never reaches the model server
    again = door.chat("tiny")
    assert again.status_code == 200 and "x-ironcliw-load-s" not in again.headers
    assert all(not line["authorization"] for line in door.server_lines("llm", "openai"))
    # A stream, relayed as it comes: the same bytes as from the server itself.
    body = {"model": "tiny", "messages": [], "stream": True}
    with door.client.stream("POST", "/v1/chat/completions", json=body) as streamed:
        assert streamed.headers["content-type"].startswith("text/event-stream")
        through_door = b"".join(streamed.iter_raw())
    direct = httpx.post(f"http://127.0.0.1:{row['port']}/v1/chat/completions", json=body, trust_env=False)
    assert through_door == direct.content and through_door.endswith(b"data: [DONE]\n\n")
    embeddings = door.client.post("/v1/embeddings", json={"model": "tiny", "input": "x"})
    assert embeddings.json()["data"][0]["embedding"] == [0.5, 0.25]
    door.close()


def test_the_token_is_required_and_browsers_cannot_forge_requests(make_stack: StackFactory) -> None:
    door = Door(make_stack, "", server("llm", ["tiny"]))
    plain = httpx.Client(base_url=door.base, trust_env=False, timeout=10)
    body = {"model": "tiny", "messages": []}
    assert plain.post("/v1/chat/completions", json=body).status_code == 401
    assert plain.get("/v1/models").status_code == 401
    wrong = plain.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "invalid_request_error"
    # the API's own header is not the door's: OpenAI clients send Authorization
    assert plain.post("/v1/chat/completions", json=body, headers={"X-Ironcliw-Token": door.token}).status_code == 401
    forged = plain.post("/v1/chat/completions", json=body, headers={**door.auth, "Origin": "http://evil.example"})
    assert forged.status_code == 403
    assert door.stack.component("llm")["state"] == "STOPPED"  # none of them started anything
    unknown = door.chat("gpt-5")
    assert unknown.status_code == 404 and "not served here (served: tiny)" in unknown.json()["error"]["message"]
    assert door.client.post("/v1/completions", content=b"not json").status_code == 400
    assert door.client.post("/v1/completions", content=b'[{"model": "tiny"}]').status_code == 400
    plain.close()
    door.close()


def test_concurrent_cold_requests_share_one_load_and_the_queue_is_bounded(make_stack: StackFactory) -> None:
    door = Door(make_stack, "queue = 4", server("llm", ["tiny"], "--load-s", "2"))
    results: list[httpx.Response] = []

    def ask() -> None:
        with httpx.Client(base_url=door.base, trust_env=False, timeout=60, headers=door.auth) as client:
            results.append(client.post("/v1/chat/completions", json={"model": "tiny", "messages": []}))

    threads = [threading.Thread(target=ask) for _ in range(7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    door.track("llm")
    codes = sorted(r.status_code for r in results)
    assert codes == [200] * 4 + [503] * 3, codes
    refused = next(r for r in results if r.status_code == 503)
    assert refused.headers["retry-after"] == "5" and "[proxy] queue" in refused.json()["error"]["message"]
    assert len(door.server_lines("llm", "listening")) == 1  # one load for all of them
    spawned = [e for e in door.stack.log_events() if e.get("event") == "spawned" and e["component"] == "llm"]
    assert len(spawned) == 1
    door.close()


def test_a_model_that_cannot_fit_is_refused_with_the_numbers(make_stack: StackFactory) -> None:
    door = Door(
        make_stack,
        "make_room = false",
        server("small", ["a"], priority='"LOW"', estimated_mb="60")
        + server("huge", ["b"], priority='"HIGH"', estimated_mb="5000"),
        memory="budget_mb = 400",
    )
    refused = door.chat("b")
    assert refused.status_code == 507, refused.text
    error = refused.json()["error"]
    assert error["type"] == "insufficient_memory" and error["predicted_mb"] >= 5000 and error["room_mb"] <= 280
    assert "huge needs ~" in error["message"] and "free before WARNING" in error["message"]
    assert door.stack.component("huge")["state"] == "STOPPED"
    assert door.chat("a").status_code == 200  # the one that fits loads
    door.track("small")
    door.close()


def test_a_second_model_makes_room_by_unloading_the_lower_priority_first(make_stack: StackFactory) -> None:
    door = Door(
        make_stack,
        "make_room = true",
        server("low", ["a"], "--model", "a=100", priority='"LOW"', estimated_mb="130")
        + server("high", ["b"], "--model", "b=100", priority='"HIGH"', estimated_mb="130"),
        memory="budget_mb = 300\nsample_interval_s = 0.2",
    )
    assert door.chat("a").status_code == 200
    low = door.track("low")
    wait_until(lambda: door.stack.component("low")["rss_mb"] > 100, 10, what="low's model in memory")
    answer = door.chat("b")  # 130 MB more does not fit below WARNING (210 of 300) beside low
    assert answer.status_code == 200, answer.text
    door.track("high")
    rows = {c["name"]: c for c in door.stack.call("status")["components"]}
    assert rows["high"]["state"] == "READY" and rows["low"]["state"] == "STOPPED"
    assert "make room for high" in (rows["low"]["last_exit"] or ""), rows["low"]["last_exit"]
    assert low["pid"] != rows["high"]["pid"]
    door.close()


def test_idle_ttl_unloads_after_the_last_request_and_the_next_one_reloads(make_stack: StackFactory) -> None:
    door = Door(make_stack, "idle_ttl_s = 1.5", server("llm", ["tiny"]), memory="used_cpu_percent = 90")
    assert door.chat("tiny").status_code == 200
    first = door.track("llm")
    row = door.stack.wait_state("llm", "STOPPED", timeout=15)
    assert row["last_exit"].startswith("idle for ") and "(idle_ttl_s = 1.5)" in row["last_exit"]
    again = door.chat("tiny")
    assert again.status_code == 200 and "x-ironcliw-load-s" in again.headers
    assert door.track("llm")["pid"] != first["pid"]
    door.close()


def test_a_long_stream_keeps_its_server_loaded_past_the_ttl(make_stack: StackFactory) -> None:
    """A request in flight is use: the TTL counts from its end, not its start."""
    slow_stream = server("llm", ["tiny"], "--stream-chunks", "30", "--stream-gap-s", "0.1")
    door = Door(make_stack, "idle_ttl_s = 1", slow_stream, memory="used_cpu_percent = 90")
    with door.client.stream("POST", "/v1/chat/completions", json={"model": "tiny", "stream": True}) as streamed:
        chunks = [c for c in streamed.iter_raw()]
    assert b"".join(chunks).count(b"data: ") == 31  # 3 s of stream, three TTLs, not cut
    door.track("llm")
    row = door.stack.wait_state("llm", "STOPPED", timeout=15)
    assert row["last_exit"].startswith("idle for ")
    door.close()


def test_a_streams_head_reaches_the_client_before_its_first_token(make_stack: StackFactory) -> None:
    """The door sends a stream's head on as the server sends it, not with the first event:
    the client starts reading while the model evaluates the prompt (as it would directly),
    and a client that gives up waiting for headers does not, during a long prompt."""
    door = Door(make_stack, "", server("llm", ["tiny"], "--first-token-s", "3", "--stream-chunks", "1"))
    door.chat("tiny")  # loaded and warm
    door.track("llm")
    sent = time.monotonic()
    with door.client.stream("POST", "/v1/chat/completions", json={"model": "tiny", "stream": True}) as streamed:
        head_s = time.monotonic() - sent
        assert streamed.headers["content-type"].startswith("text/event-stream")
        events = b"".join(streamed.iter_raw())
        whole_s = time.monotonic() - sent
    assert events.count(b"data: ") == 2
    assert whole_s >= 3.0  # the server did wait before its first event...
    assert head_s < 1.5, f"the head came with the first event, after {head_s:.2f} s"  # ...and the head did not
    door.close()


def test_openai_client_library_works_with_the_token_as_api_key(make_stack: StackFactory) -> None:
    import openai

    door = Door(make_stack, "", server("llm", ["tiny"]))
    client = openai.OpenAI(base_url=f"{door.base}/v1", api_key=door.token, max_retries=0, timeout=30)
    listed = client.models.list()
    assert [m.id for m in listed.data] == ["tiny"]
    done = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
    assert done.choices[0].message.content == "ok"
    door.track("llm")
    pieces = [
        chunk.choices[0].delta.content
        for chunk in client.chat.completions.create(model="tiny", messages=[], stream=True)
    ]
    assert "".join(p or "" for p in pieces) == "w0 w1 w2 w3 w4 "
    assert client.models.retrieve("tiny").owned_by == "llm"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{door.base}/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-5", messages=[])
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-5")
    door.close()


def test_request_bodies_are_bounded_by_max_body_mb(make_stack: StackFactory) -> None:
    door = Door(make_stack, "max_body_mb = 2", server("llm", ["tiny"]))
    prompt = "x" * (1536 << 10)  # 1.5 MB: above the API's own 1 MiB, within the door's 2 MB
    fits = door.chat("tiny", extra_prompt=prompt)
    assert fits.status_code == 200, fits.text[:200]
    door.track("llm")
    too_big = door.chat("tiny", extra_prompt=prompt * 2)
    assert too_big.status_code == 413
    # Within the bound but nested past any decoder's depth: a 400 like any body that is not
    # a JSON object with a `model`, not an internal error
    deep = b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b', "model": "tiny"}'
    refused = door.client.post("/v1/chat/completions", content=deep)
    assert refused.status_code == 400 and "nested too deeply" in refused.json()["error"]["message"], refused.text
    door.close()


def test_an_upstream_that_hangs_up_is_502_and_one_that_stays_silent_is_504(make_stack: StackFactory) -> None:
    door = Door(make_stack, "read_timeout_s = 1", server("llm", ["tiny"]))
    assert door.chat("tiny").status_code == 200  # loaded, and the door keeps the connection
    hung_up = door.chat("tiny", test_fault="hangup")
    assert hung_up.status_code == 502 and hung_up.json()["error"]["type"] == "server_error", hung_up.text
    started = time.monotonic()
    silent = door.chat("tiny", test_fault="silent")
    assert silent.status_code == 504 and 0.9 < time.monotonic() - started < 10, silent.text
    assert door.chat("tiny").status_code == 200  # and the door goes on
    door.track("llm")
    door.close()


def test_a_client_that_leaves_is_not_waited_for_and_the_server_sees_its_request_dropped(
    make_stack: StackFactory,
) -> None:
    """A client gone before its answer (a chat UI's stop button): the door stops the relay
    and closes its connection to the model server, which is how llama.cpp learns to stop
    generating; it does not wait for an answer for nobody until read_timeout_s."""
    door = Door(make_stack, "read_timeout_s = 60", server("llm", ["tiny"]))
    assert door.chat("tiny").status_code == 200
    door.track("llm")
    requests = len(door.server_lines("llm", "request"))
    with door.raw_chat(test_fault="silent"):
        wait_until(lambda: len(door.server_lines("llm", "request")) > requests, timeout=10)
    # The client is gone: the server's connection is closed within moments, not after 60 s.
    wait_until(lambda: door.server_lines("llm", "abandoned"), timeout=10)
    assert "door_client_left" in door.stack.out_path.read_text(errors="replace")
    assert door.chat("tiny").status_code == 200  # and the door goes on
    door.close()


def test_a_client_that_leaves_mid_stream_stops_the_servers_stream(make_stack: StackFactory) -> None:
    """The stop button during a stream: the model server's connection closes with the
    client's, so it stops after the event in flight, not after the 40 it would send."""
    door = Door(make_stack, "", server("llm", ["tiny"], "--stream-chunks", "40", "--stream-gap-s", "0.1"))
    assert door.chat("tiny").status_code == 200
    door.track("llm")
    with door.raw_chat(stream=True) as client:
        got = b""
        while b"data: " not in got:
            got += client.recv(65536)
    wait_until(lambda: door.server_lines("llm", "abandoned"), timeout=10)
    assert door.server_lines("llm", "abandoned")[0]["events_sent"] < 10
    assert door.chat("tiny").status_code == 200
    door.close()


def test_a_client_that_reads_slowly_holds_back_the_server_not_the_supervisors_memory(
    make_stack: StackFactory,
) -> None:
    """A model server streaming faster than its client reads: the door stops reading it
    (the server's writes block) instead of buffering the stream in the supervisor."""
    door = Door(make_stack, "", server("llm", ["tiny"]))
    assert door.chat("tiny").status_code == 200
    door.track("llm")
    assert door.stack.proc is not None
    supervisor = psutil.Process(door.stack.proc.pid)

    def rss_mb() -> float:
        return float(supervisor.memory_info().rss) / (1 << 20)

    before = rss_mb()
    with door.raw_chat(stream=True, test_fault="flood") as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        assert client.recv(100).startswith(b"HTTP/1.1 200")  # then nothing more is read

        def flooded_mb() -> int:
            return max((line["mb"] for line in door.server_lines("llm", "flooded")), default=0)

        wait_until(lambda: flooded_mb() > 0, timeout=10)
        seen = []
        for _ in range(16):  # 4 s, stopping at once if the door buffers (it would take GBs)
            seen.append(flooded_mb())
            # What may be in flight is the sockets' buffers (a few MB each on loopback)
            assert seen[-1] < 64, f"the door took {seen[-1]} MB from a stream nobody reads"
            time.sleep(0.25)
        assert seen[-8] == seen[-1], f"the server kept sending to a client that reads nothing: {seen}"
        assert rss_mb() - before < 24, (before, rss_mb())
    wait_until(lambda: door.server_lines("llm", "abandoned"), timeout=10)
    assert door.chat("tiny").status_code == 200
    door.close()


def test_many_clients_at_once_each_get_their_own_answers_whole(make_stack: StackFactory) -> None:
    """16 clients at once, plain answers and streams mixed, through the door's kept connections:
    every answer is whole and is the one its request asked for (a mix-up between pooled
    upstream connections or pipelined requests would show as a wrong model or a cut stream)."""
    door = Door(make_stack, "", server("llm", ["a", "b"], "--stream-gap-s", "0"))
    assert door.chat("a").status_code == 200
    failures: list[str] = []

    def client(i: int) -> None:
        with httpx.Client(base_url=door.base, timeout=60, trust_env=False, headers=door.auth) as c:
            for k in range(20):
                model = "ab"[(i + k) % 2]
                body = {"model": model, "messages": [], "stream": k % 3 == 0}
                answer = c.post("/v1/chat/completions", json=body)
                if answer.status_code != 200:
                    failures.append(f"{answer.status_code} {answer.text[:80]}")
                elif body["stream"]:
                    if not answer.content.endswith(b"data: [DONE]\n\n") or answer.content.count(b"data: ") != 6:
                        failures.append(f"cut stream: {answer.content[-40:]!r}")
                elif answer.json()["model"] != model:
                    failures.append(f"asked {model}, got {answer.json()['model']}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert failures == [] and not any(t.is_alive() for t in threads), failures[:5]
    door.track("llm")
    door.close()


def test_the_query_string_and_content_type_reach_the_server_as_sent(make_stack: StackFactory) -> None:
    door = Door(make_stack, "", server("llm", ["tiny"]))
    query = "?api-version=2024-02-01&q=a%2Fb%20c"
    answer = door.client.post(
        "/v1/completions" + query,
        content=json.dumps({"model": "tiny", "prompt": "x"}).encode(),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert answer.status_code == 200, answer.text
    (seen,) = [line for line in door.server_lines("llm", "request") if line["method"] == "POST"]
    assert seen["path"] == "/v1/completions" + query
    assert seen["content_type"] == "application/json; charset=utf-8"
    door.track("llm")
    door.close()


def test_every_v1_path_is_the_doors_and_a_post_goes_where_its_model_is_served(make_stack: StackFactory) -> None:
    door = Door(make_stack, "", server("llm", ["tiny", "org/tiny-7b"]) + server("other", ["other"]))
    # /v1/models/{id}, an id with a slash included (Hugging Face names), with the token only
    one = door.client.get("/v1/models/org/tiny-7b")
    assert one.status_code == 200 and (one.json()["id"], one.json()["owned_by"]) == ("org/tiny-7b", "llm")
    assert door.client.get("/v1/models/gpt-5").json()["error"]["code"] == 404
    assert httpx.get(f"{door.base}/v1/models/tiny", trust_env=False).status_code == 401
    # A path the door does not know by name (llama.cpp's rerank) is forwarded by `model`
    answer = door.client.post("/v1/rerank", json={"model": "tiny", "query": "q", "documents": ["a"]})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"path": "/v1/rerank", "model": "tiny"}
    assert answer.headers["x-ironcliw-component"] == "llm"
    door.track("llm")
    assert door.stack.component("other")["state"] == "STOPPED"  # only the model asked for is loaded
    wrong = door.client.get("/v1/chat/completions")
    assert wrong.status_code == 405 and "GET is not allowed" in wrong.json()["error"]["message"]
    assert door.client.post("/v1/models", json={"model": "tiny"}).status_code == 405
    door.close()
