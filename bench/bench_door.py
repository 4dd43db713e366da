"""The OpenAI-compatible door, against going to the same server directly, in the same run.

    .venv/bin/python bench/bench_door.py [--seconds 10] [--requests 1000] [--rounds 3]

1. A trivial upstream (bench/trivial_openai.py: the same small JSON answer to every POST, so
   the door is what is measured): requests per second with 16 keep-alive connections (wrk,
   `apt-get install wrk`), directly and through the door, alternating, three rounds each and
   their medians (this machine's speed drifts by minutes); the monitor's sampling interval
   while the door is loaded (its own counter in /metrics: `ironcliw_monitor_samples_total`).
   Target: at least 2,000 requests/s through the door, with sampling on schedule.
2. The same upstream, one request at a time, door and direct interleaved: the latency the
   door adds, p50 and p99 (target: p99 at most 1 ms added).
3. A real llama.cpp server (components/llama_server.py on a random-weight GGUF; needs the
   `models` extra): the cold start through the door split into admission, spawn, load and
   first token; then door and direct interleaved, a non-streamed completion (max_tokens 1)
   and the time to the first streamed byte, p50 and p99 of each and of the difference; each
   through httpx (as openai-python sends) and through a one-write client on a plain socket;
   then the one-write rows again with the machine idle for 20 ms before each request; then
   the one-write rows with a bare TCP relay (bench/byte_relay.py) in the door's place: the
   cost of any process in the middle, which the door's own work comes on top of.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, free_port, pct, short_tmpdir, start_ironcliw, stop_gracefully, wait_until  # noqa: E402

APART_S = 0.02
BODY: dict[str, object] = {"model": "trivial", "messages": [{"role": "user", "content": "hi"}]}
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {token}"
"""


class Stack:
    def __init__(self, components: str, sample_interval_s: float = 0.5) -> None:
        self.port = free_port()
        self.work = short_tmpdir("icwd-")
        config = (
            f"[memory]\nsample_interval_s = {sample_interval_s}\n[http]\nport = {self.port}\n"
            f"[proxy]\nenabled = true\nqueue = 64\n{components}"
        )
        (self.work / "c.toml").write_text(config)
        self.proc = start_ironcliw(self.work, self.work / "c.toml")
        try:
            wait_until(
                lambda: (self.work / "run" / "http.token").exists() and self._answers(), timeout=60, interval=0.1
            )
        except BaseException:  # it never answered: not left running behind the bench
            self.close()
            raise
        self.token = (self.work / "run" / "http.token").read_text().strip()
        self.base = f"http://127.0.0.1:{self.port}"

    def _answers(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    def components(self) -> dict[str, dict[str, object]]:
        rows = httpx.get(f"{self.base}/memory/components", timeout=10, trust_env=False).json()["components"]
        return {row["name"]: row for row in rows}

    def samples(self) -> float:
        text = httpx.get(f"{self.base}/metrics", timeout=10, trust_env=False).text
        return float(re.search(r"^ironcliw_monitor_samples_total (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]

    def close(self) -> None:
        stop_gracefully(self.proc, 60)
        shutil.rmtree(self.work, ignore_errors=True)


def wrk(url: str, token: str, seconds: float, connections: int = 16) -> tuple[float, float, int]:
    """(requests/s, p99 ms, non-2xx or socket errors) from wrk on 2 threads."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT.format(body=json.dumps(BODY), token=token))
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", script.name, url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    ).stdout
    Path(script.name).unlink()
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99_ms = float(p99.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)] if p99 else float("nan")
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return rate, p99_ms, errors


class OneWriteClient:
    """A kept-alive HTTP/1.1 connection on a plain socket that sends each request in one write
    and reads an answer of known length: what the door adds, without an HTTP library's own
    cost (httpx spends about 1 ms a request here) and its variance on both sides."""

    def __init__(self, base: str, headers: dict[str, str] | None = None) -> None:
        host, port = base.removeprefix("http://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=120)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.head = f"Host: {host}:{port}\r\nContent-Type: application/json\r\n".encode()
        self.head += b"".join(f"{k}: {v}\r\n".encode() for k, v in (headers or {}).items())

    def post(self, path: str, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.sock.sendall(
            b"POST %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s" % (path.encode(), self.head, len(data), data)
        )
        got = b""
        while b"\r\n\r\n" not in got:
            got += self.sock.recv(65536)
        head, _, rest = got.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.decode("latin-1"))
        length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
        while len(rest) < length:
            rest += self.sock.recv(65536)

    def first_event(self, path: str, body: dict[str, object]) -> float:
        """Seconds to the first byte of a stream's first event (a chunked answer, read to its end)."""
        data = json.dumps({**body, "stream": True}).encode()
        started = time.perf_counter()
        self.sock.sendall(
            b"POST %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s" % (path.encode(), self.head, len(data), data)
        )
        got, first = b"", None
        while not got.endswith(b"\r\n0\r\n\r\n"):
            got += self.sock.recv(65536)
            if first is None and b"data:" in got:
                first = time.perf_counter() - started
        if not got.startswith(b"HTTP/1.1 200") or first is None:
            raise RuntimeError(got[:200].decode("latin-1"))
        return first

    def close(self) -> None:
        self.sock.close()


def one_write_rows(
    door_base: str,
    direct_base: str,
    token: str,
    body: dict[str, object],
    n: int,
    streamed: bool = False,
    apart_s: float = 0.0,
) -> tuple[list[float], list[float]]:
    door, direct = (
        OneWriteClient(door_base, {"Authorization": f"Bearer {token}"} if token else {}),
        OneWriteClient(direct_base),
    )
    try:
        method = OneWriteClient.first_event if streamed else OneWriteClient.post
        send = lambda client: method(client, "/v1/chat/completions", body)  # noqa: E731
        interleaved(door, direct, send, 20)  # warm-up
        return interleaved(door, direct, send, n, apart_s)
    finally:
        door.close()
        direct.close()


def interleaved(
    door: Any, direct: Any, send: Callable[[Any], float | None], n: int, apart_s: float = 0.0
) -> tuple[list[float], list[float]]:
    """n timings each way (ms), alternating door and direct so both see the same machine: the
    whole call, or the seconds `send` returns (a time to first byte); `apart_s` idle before each."""
    through: list[float] = []
    straight: list[float] = []
    for i in range(n):
        for client, out in ((door, through), (direct, straight)) if i % 2 else ((direct, straight), (door, through)):
            time.sleep(apart_s)
            t = time.perf_counter()
            measured = send(client)
            out.append((measured if measured is not None else time.perf_counter() - t) * 1000)
    return through, straight


def post_body(body: dict[str, object]) -> Callable[[httpx.Client], float | None]:
    def post(client: httpx.Client) -> None:
        client.post("/v1/chat/completions", json=body).raise_for_status()

    return post


def first_byte(body: dict[str, object]) -> Callable[[httpx.Client], float | None]:
    def stream(client: httpx.Client) -> float:
        t = time.perf_counter()
        with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as answer:
            chunks = answer.iter_raw()
            next(chunks)
            took = time.perf_counter() - t
            for _ in chunks:
                pass
        return took

    return stream


def row(label: str, through: list[float], straight: list[float]) -> str:
    diffs = [a - b for a, b in zip(through, straight, strict=True)]
    return (
        f"{label:<34} {pct(straight, 50):>9.2f} {pct(through, 50):>9.2f} {pct(through, 50) - pct(straight, 50):>+9.2f}"
        f" {pct(straight, 99):>9.2f} {pct(through, 99):>9.2f} {pct(through, 99) - pct(straight, 99):>+9.2f}"
        f" {pct(diffs, 50):>+9.2f} {pct(diffs, 99):>+9.2f}"
    )


HEADER = (
    f"{'ms':<34} {'direct':>9} {'door':>9} {'added':>9} {'direct':>9} {'door':>9} {'added':>9} {'pair':>9} {'pair':>9}\n"
    f"{'':<34} {'p50':>9} {'p50':>9} {'p50':>9} {'p99':>9} {'p99':>9} {'p99':>9} {'p50':>9} {'p99':>9}"
)


def throughput(stack: Stack, upstream: str, seconds: float, rounds: int) -> None:
    """wrk directly and through the door, alternating, `rounds` times each: this machine's
    speed drifts from one minute to the next, so each run is printed, then the medians."""
    print(f"1. {seconds:g} s of wrk, 16 keep-alive connections, POST /v1/chat/completions, {rounds} rounds\n")
    print(f"{'':<28} {'req/s':>9} {'p99 ms':>9} {'errors':>7} {'sample interval':>16}")
    runs: dict[str, list[tuple[float, float, float]]] = {"direct": [], "through the door": []}
    for round_ in range(rounds):
        for label, url in (("direct", upstream), ("through the door", stack.base)):
            s0, t0 = stack.samples(), time.monotonic()
            rate, p99, errors = wrk(url + "/v1/chat/completions", stack.token, seconds)
            interval = (time.monotonic() - t0) / max(1.0, stack.samples() - s0)
            runs[label].append((rate, p99, interval))
            print(f"{label + f' ({round_ + 1})':<28} {rate:>9.0f} {p99:>9.2f} {errors:>7} {interval:>14.2f} s")
    for label, got in runs.items():
        rate, p99, interval = (statistics.median(x[i] for x in got) for i in range(3))
        print(f"{label + ': median':<28} {rate:>9.0f} {p99:>9.2f} {'':>7} {interval:>14.2f} s")
    print(f"{'(configured sample_interval_s)':<28} {'':>9} {'':>9} {'':>7} {0.5:>14.2f} s\n")


def trivial(seconds: float, requests: int, rounds: int) -> None:
    command = json.dumps(["python", str(REPO / "bench" / "trivial_openai.py"), "--port", "${PORT}"])
    stack = Stack(f'[components.trivial]\ncommand = {command}\nserves = ["trivial"]\nready = {{ http = "/health" }}\n')
    try:
        wait_until(lambda: stack.components()["trivial"]["state"] == "READY", timeout=30)
        upstream = f"http://127.0.0.1:{stack.components()['trivial']['port']}"
        throughput(stack, upstream, seconds, rounds)
        headers = {"Authorization": f"Bearer {stack.token}"}
        with (
            httpx.Client(base_url=stack.base, headers=headers, trust_env=False) as door,
            httpx.Client(base_url=upstream, trust_env=False) as direct,
        ):
            post = post_body(BODY)
            interleaved(door, direct, post, 50)  # warm-up: connections, caches
            through, straight = interleaved(door, direct, post, requests)
        print(f"2. {requests} requests each way, one at a time, interleaved\n")
        print(HEADER)
        print(row("trivial completion", through, straight))
        print(
            row("the same, one-write client", *one_write_rows(stack.base, upstream, stack.token, BODY, requests)) + "\n"
        )
        client_layers(upstream, requests)
    finally:
        stack.close()


def client_layers(upstream: str, requests: int) -> None:
    """What the door's own client costs: the same POST from an asyncio program through httpx's
    AsyncClient and through the door's client (aiohttp, supervisor/http/upstream.py)."""
    import anyio

    from supervisor.http.upstream import Upstreams

    url = f"{upstream}/v1/chat/completions"
    body = json.dumps(BODY).encode()
    headers = {"content-type": "application/json"}

    async def timed() -> tuple[list[float], list[float]]:
        with_httpx: list[float] = []
        with_door: list[float] = []
        upstreams = Upstreams(read_timeout_s=60)
        async with httpx.AsyncClient(trust_env=False) as client:
            for i in range(requests + 50):
                t = time.perf_counter()
                (await client.post(url, content=body, headers=headers)).raise_for_status()
                if i >= 50:
                    with_httpx.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                async with upstreams.post(url, body, list(headers.items())) as answer:
                    await answer.read()
                if i >= 50:
                    with_door.append((time.perf_counter() - t) * 1000)
        await upstreams.aclose()
        return with_httpx, with_door

    with_httpx, with_door = anyio.run(timed)
    print(f"   the door's client alone, {requests} requests each, interleaved (ms a request)\n")
    print(f"   {'':<30} {'p50':>9} {'p99':>9}")
    print(f"   {'httpx AsyncClient':<30} {pct(with_httpx, 50):>9.2f} {pct(with_httpx, 99):>9.2f}")
    print(f"   {'aiohttp (the door)':<30} {pct(with_door, 50):>9.2f} {pct(with_door, 99):>9.2f}\n")
    concurrent_client(upstream)


def concurrent_client(upstream: str, tasks: int = 16, seconds: float = 4.0) -> None:
    """The client alone under the wrk run's concurrency: 16 tasks in one asyncio program, each
    sending the next POST when its answer is in; requests/s and the program's CPU a request,
    for httpx's AsyncClient, httpcore's pool (the layer under it) and the door's client."""
    import resource

    import anyio
    import httpcore

    from supervisor.http.upstream import Upstreams

    url = f"{upstream}/v1/chat/completions"
    body = json.dumps(BODY).encode()
    headers = [("content-type", "application/json")]

    async def with_httpx() -> tuple[float, float]:
        async with httpx.AsyncClient(trust_env=False, limits=httpx.Limits(max_connections=256)) as client:

            async def one() -> None:
                (await client.post(url, content=body, headers=headers)).raise_for_status()

            return await load(one)

    async def with_httpcore() -> tuple[float, float]:
        async with httpcore.AsyncConnectionPool(max_connections=256) as pool:

            async def one() -> None:
                await pool.request("POST", url, content=body, headers=headers)

            return await load(one)

    async def with_door() -> tuple[float, float]:
        upstreams = Upstreams(read_timeout_s=60)

        async def one() -> None:
            async with upstreams.post(url, body, headers) as answer:
                await answer.read()

        try:
            return await load(one)
        finally:
            await upstreams.aclose()

    async def load(one: Callable[[], Awaitable[None]]) -> tuple[float, float]:
        count = 0

        async def worker(deadline: float) -> None:
            nonlocal count
            while time.monotonic() < deadline:
                await one()
                count += 1

        start, used = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF)
        async with anyio.create_task_group() as group:
            for _ in range(tasks):
                group.start_soon(worker, start + seconds)
        wall, after = time.monotonic() - start, resource.getrusage(resource.RUSAGE_SELF)
        cpu = after.ru_utime + after.ru_stime - used.ru_utime - used.ru_stime
        return count / wall, cpu / count * 1e6

    print(f"   the client alone, {tasks} concurrent tasks for {seconds:g} s\n")
    print(f"   {'':<30} {'req/s':>9} {'CPU us/req':>11}")
    clients = (
        ("httpx AsyncClient", with_httpx),
        ("httpcore's pool (under httpx)", with_httpcore),
        ("aiohttp (the door)", with_door),
    )
    for label, measure in clients:
        rate, cpu_us = anyio.run(measure)
        print(f"   {label:<30} {rate:>9.0f} {cpu_us:>11.0f}")
    print()


def llama(requests: int) -> None:
    from components.random_gguf import write

    models = Path(tempfile.mkdtemp(prefix="icwd-models-"))
    write(models / "tiny.gguf")
    command = ["python", "-m", "components.llama_server", "--model", str(models / "tiny.gguf"), "--port", "${PORT}"]
    command += ["--model-alias", "tiny"]
    stack = Stack(
        f"[components.llm]\ncommand = {json.dumps(command)}\ncwd = {json.dumps(str(REPO))}\n"
        'serves = ["tiny"]\nautostart = false\nready = { http = "/health", timeout_s = 120 }\n'
    )
    body = {"model": "tiny", "messages": [{"role": "user", "content": "the model"}], "max_tokens": 1, "seed": 1}
    headers = {"Authorization": f"Bearer {stack.token}"}
    try:
        with httpx.Client(base_url=stack.base, headers=headers, trust_env=False, timeout=120) as door:
            t = time.perf_counter()
            with door.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as cold:
                chunks = cold.iter_raw()
                next(chunks)
                first_byte_s = time.perf_counter() - t
                split = dict(part.strip().split("=") for part in cold.headers["x-ironcliw-cold-start"].split(";"))
                waited = float(cold.headers["x-ironcliw-load-s"])
                for _ in chunks:
                    pass
            print("3. llama.cpp server (llama-cpp-python, random 12 MB model): the first request, cold\n")
            parts = [(k, float(v) * 1000) for k, v in split.items()]
            parts.append(("first token", (first_byte_s - waited) * 1000))
            print("   " + "   ".join(f"{k} {v:.1f} ms" for k, v in parts) + f"   = {first_byte_s * 1000:.1f} ms\n")
            upstream = f"http://127.0.0.1:{stack.components()['llm']['port']}"
            with httpx.Client(base_url=upstream, trust_env=False, timeout=120) as direct:
                interleaved(door, direct, post_body(body), 10)
                completion = interleaved(door, direct, post_body(body), requests)
                streamed = interleaved(door, direct, first_byte(body), requests)
        print(f"   {requests} requests each way, interleaved\n")
        print(HEADER)
        print(row("completion, max_tokens 1", *completion))
        print(row("the same, one-write client", *one_write_rows(stack.base, upstream, stack.token, body, requests)))
        print(row("first streamed byte", *streamed))
        print(
            row("the same, one-write client", *one_write_rows(stack.base, upstream, stack.token, body, requests, True))
        )
        apart_rows(stack.base, upstream, stack.token, body, max(100, requests // 3))
        with byte_relay(upstream) as relay:
            print("\n   a bare TCP relay (bench/byte_relay.py) in the door's place, the one-write client:\n")
            print(row("completion", *one_write_rows(relay, upstream, "", body, requests)))
            print(row("first byte", *one_write_rows(relay, upstream, "", body, requests, True)))
            apart_rows(relay, upstream, "", body, max(100, requests // 3))
    finally:
        stack.close()
        shutil.rmtree(models, ignore_errors=True)


def apart_rows(door_base: str, upstream: str, token: str, body: dict[str, object], n: int) -> None:
    """The one-write rows with the machine idle before each request: back to back, every
    process is still warm from the last one, while real clients leave gaps (and cold code
    runs slower: the bare relay's rows show how little of that the extra hop itself costs)."""
    for label, stream in (("completion, one-write, 20 ms apart", False), ("first byte, one-write, 20 ms apart", True)):
        print(row(label, *one_write_rows(door_base, upstream, token, body, n, stream, APART_S)))
    print(f"   (the last two: {n} requests each way, {APART_S * 1000:.0f} ms idle before each)")


@contextlib.contextmanager
def byte_relay(upstream: str) -> Iterator[str]:
    """bench/byte_relay.py to `upstream` on a free port, running until the block ends."""
    port = free_port()
    to = upstream.rsplit(":", 1)[1]
    command = [sys.executable, str(REPO / "bench" / "byte_relay.py"), "--port", str(port), "--to", to]
    relay = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert relay.stdout is not None and relay.stdout.readline().startswith("listening")
        yield f"http://127.0.0.1:{port}"
    finally:
        relay.kill()
        relay.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--requests", type=int, default=1000, help="each way, one at a time (a p99 of 300 is their 3rd worst: it jumps)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="wrk runs each way, alternating")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench_door needs wrk: apt-get install wrk")
    trivial(args.seconds, args.requests, args.rounds)
    if importlib.util.find_spec("llama_cpp") is None:
        print("3. skipped: llama-cpp-python is not installed (bin/test --models installs it)")
        return
    llama(args.requests)


if __name__ == "__main__":
    main()
