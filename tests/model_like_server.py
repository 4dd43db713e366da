"""A small HTTP server that behaves like a model server where the tests need it to, standard
library only: it listens at once and answers 503 on /health while it "loads", holds models
(memory it touched) that Ollama's `keep_alive: 0` request unloads without ending the process,
and keeps a cache that llama-server's `POST /slots/N?action=erase` frees.

    python -m tests.model_like_server --port 8080 --load-s 1 --model a=40 --model b=40

It prints one line per event (`listening`, `loaded`, `erased`, `unloaded`, `request`) with
`time.monotonic()`, so a test can order what it saw against what the supervisor did.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

CHUNK = 4 << 20


SAYING = threading.Lock()  # the server answers from several threads: one whole line at a time


def say(event: str, **fields: Any) -> None:
    line = event + " " + json.dumps({"t": time.monotonic(), "pid": os.getpid(), **fields}) + "\n"
    with SAYING:
        sys.stdout.write(line)
        sys.stdout.flush()


def touched(mb: float) -> list[bytes]:
    """`mb` MB in 4 MB blocks, every page written (b"x" * n is a memset)."""
    return [b"\x01" * CHUNK for _ in range(int(mb * (1 << 20)) // CHUNK)]


def give_back() -> None:
    """Freed blocks go back to the OS at once (glibc keeps heap blocks until malloc_trim)."""
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):
        pass


class State:
    def __init__(
        self,
        models: dict[str, float],
        load_s: float,
        stream_chunks: int = 5,
        stream_gap_s: float = 0.05,
        first_token_s: float = 0.0,
    ) -> None:
        self.sizes = models
        self.stream_chunks, self.stream_gap_s, self.first_token_s = stream_chunks, stream_gap_s, first_token_s
        self.models: dict[str, list[bytes]] = {}
        self.cache: list[bytes] = []
        self.load_s = load_s
        self.loaded = threading.Event()
        self.lock = threading.Lock()

    def load_all(self) -> None:
        time.sleep(self.load_s)
        for name, mb in self.sizes.items():
            self.models[name] = touched(mb)
        self.loaded.set()
        say("loaded", models=sorted(self.models))


class Handler(BaseHTTPRequestHandler):
    state: State
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do (a stream closes its connection)

    def log_message(self, format: str, *args: Any) -> None:  # one line per request, our own format
        pass

    def answer(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        say("request", method="GET", path=self.path)
        path = urlsplit(self.path).path
        if path == "/health":
            loading = not self.state.loaded.is_set()
            self.answer(503 if loading else 200, {"status": "loading model" if loading else "ok"})
        elif path == "/v1/models":
            self.answer(200, {"object": "list", "data": [{"id": m} for m in sorted(self.state.models)]})
        elif path == "/env":
            self.answer(200, {k: v for k, v in os.environ.items() if k.startswith("TEST_")})
        else:
            self.answer(404, {"error": "not found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        say("request", method="POST", path=self.path, content_type=self.headers.get("Content-Type"))
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        fault = json.loads(body or b"{}").get("test_fault") if body.startswith(b"{") else None
        if fault == "silent":  # read, never answered (the door's read timeout); others go on
            self.connection.settimeout(30)
            try:  # the other side closing is seen as EOF, and said
                if self.connection.recv(1) == b"":
                    say("abandoned", path=self.path)
            except OSError:
                pass
            self.close_connection = True
            return
        if fault == "flood":  # a stream as fast as the socket takes it, until the reader goes
            self.flood()
            return
        if fault == "hangup":  # the connection dropped without an answer
            self.close_connection = True
            return
        with self.state.lock:
            if url.path == "/cache/fill":
                self.state.cache += touched(float(query.get("mb", ["0"])[0]))
                self.answer(200, {"cache_mb": len(self.state.cache) * CHUNK >> 20})
            elif url.path.startswith("/slots/") and query.get("action") == ["erase"]:
                freed = len(self.state.cache) * CHUNK >> 20
                self.state.cache.clear()
                give_back()
                say("erased", freed_mb=freed)
                self.answer(200, {"id_slot": url.path.rsplit("/", 1)[-1], "n_erased": freed})
            elif url.path == "/api/generate":
                self.generate(json.loads(body or b"{}"))
            elif url.path.startswith("/v1/"):
                self.openai(url.path, json.loads(body or b"{}"))
            else:
                self.answer(404, {"error": "not found"})

    def openai(self, path: str, request: dict[str, Any]) -> None:
        """Answers in OpenAI's shape, the same bytes every time (a stream: `--stream-chunks`
        events `--stream-gap-s` apart, the first `--first-token-s` after the head, then
        [DONE]); notes whether a token reached it."""
        say("openai", path=path, model=request.get("model"), authorization="authorization" in self.headers)
        if path == "/v1/embeddings":
            self.answer(
                200, {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.5, 0.25]}]}
            )
        elif path not in ("/v1/chat/completions", "/v1/completions"):  # rerank, responses, ...: where it came
            self.answer(200, {"path": path, "model": request.get("model")})
        elif request.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.flush()  # the head now, as llama.cpp's server sends it before evaluating the prompt
            time.sleep(self.state.first_token_s)
            self.close_connection = True
            i = 0
            try:
                for i in range(self.state.stream_chunks):
                    event = {
                        "id": "chatcmpl-1",
                        "object": "chat.completion.chunk",
                        "choices": [{"delta": {"content": f"w{i} "}}],
                    }
                    self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                    self.wfile.flush()
                    time.sleep(self.state.stream_gap_s)
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except OSError:  # the reader went away: stop generating, as llama.cpp does
                say("abandoned", path=self.path, events_sent=i)
        else:
            message = {"role": "assistant", "content": "ok"}
            usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
            self.answer(
                200,
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "model": request.get("model"),
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": usage,
                },
            )

    def flood(self) -> None:
        """64 KB events, each write blocking while the socket is full; says how far it got
        every 4 MB, so a test sees whether what it sent stops growing."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        event = b"data: " + b"x" * (64 << 10) + b"\n\n"
        sent = 0
        try:
            while True:
                self.wfile.write(event)
                sent += len(event)
                if sent % (4 << 20) < len(event):
                    say("flooded", mb=sent >> 20)
        except OSError:
            say("abandoned", path=self.path, mb=sent >> 20)

    def generate(self, request: dict[str, Any]) -> None:
        """Ollama's: `keep_alive: 0` unloads the model; otherwise it is loaded (again)."""
        name = request.get("model", "")
        if name not in self.state.sizes:
            self.answer(404, {"error": f"model {name!r} not found"})
        elif request.get("keep_alive") == 0:
            self.state.models.pop(name, None)
            give_back()
            say("unloaded", model=name)
            self.answer(200, {"model": name, "done": True, "done_reason": "unload"})
        else:
            self.state.models.setdefault(name, touched(self.state.sizes[name]))
            say("loaded", models=sorted(self.state.models))
            self.answer(200, {"model": name, "done": True, "response": ""})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--load-s", type=float, default=0.0, help="answer 503 on /health this long")
    parser.add_argument("--model", action="append", default=[], help="NAME=MB, a model held in memory")
    parser.add_argument("--stream-chunks", type=int, default=5)
    parser.add_argument("--stream-gap-s", type=float, default=0.05)
    parser.add_argument("--first-token-s", type=float, default=0.0, help="a stream's wait between head and first event")
    args = parser.parse_args()
    models = {name: float(mb) for name, mb in (m.split("=") for m in args.model)}
    Handler.state = state = State(models, args.load_s, args.stream_chunks, args.stream_gap_s, args.first_token_s)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    say("listening", port=args.port)
    threading.Thread(target=state.load_all, daemon=True).start()
    server.serve_forever(poll_interval=0.05)
    say("stopping")
    return 0


if __name__ == "__main__":
    sys.exit(main())
