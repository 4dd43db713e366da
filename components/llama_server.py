"""llama-cpp-python's OpenAI-compatible server with what a supervisor needs of a model
server, as the C++ `llama-server` has them:

- it listens at once and answers 503 ("Loading model") to every request until the model
  is loaded, then `GET /health` answers 200 (llama-cpp-python's own server opens its port
  only after loading, and has no /health);
- `POST /slots/N?action=erase` drops the RAM prompt cache (`--prompt-cache-mb`: the saved
  states of earlier prompts, which llama-cpp-python keeps up to that size) and clears the
  context's KV cache, then hands the freed heap back to the OS: Ironcliw's HTTP trim.

Everything else is llama-cpp-python's server: `/v1/models`, `/v1/completions`,
`/v1/chat/completions`, ... Needs the `models` extra (`pip install -e .[models]`).

    python -m components.llama_server --model models/random.gguf --port 8080 --prompt-cache-mb 256
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import sys
import threading
import time
from typing import Any

Scope = dict[str, Any]


def say(event: str, **fields: Any) -> None:
    print(event, json.dumps({"t": time.monotonic(), **fields}), flush=True)


def release_heap() -> None:
    """glibc keeps freed heap blocks until malloc_trim (musl and macOS have no such call)."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass


async def send_json(send: Any, status: int, body: Any) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class ModelServer:
    """An ASGI app: 503 while the model loads in a thread, then llama-cpp-python's app with
    /health and the slot erase in front of it."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.app: Any = None  # llama-cpp-python's FastAPI app, once loaded
        self.failed: str | None = None

    def load(self) -> None:
        try:
            from llama_cpp.server.app import create_app
            from llama_cpp.server.settings import ModelSettings, ServerSettings

            args = self.args
            threads = {"n_threads": args.n_threads} if args.n_threads else {}
            model = ModelSettings(
                model=args.model,
                model_alias=args.model_alias or None,
                n_ctx=args.n_ctx,
                use_mmap=not args.no_mmap,
                cache=args.prompt_cache_mb > 0,
                cache_type="ram",
                cache_size=args.prompt_cache_mb << 20,
                verbose=False,
                **threads,
            )
            started = time.monotonic()
            server = ServerSettings(host=args.host, port=args.port)
            self.app = create_app(server_settings=server, model_settings=[model])
            say("loaded", model=args.model, load_s=round(time.monotonic() - started, 3))
        except Exception as exc:  # shown on every request and in the log; the supervisor's probe sees 500
            self.failed = f"{type(exc).__name__}: {exc}"
            say("load_failed", error=self.failed)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        if self.failed is not None:
            await send_json(send, 500, {"error": {"message": self.failed, "code": 500}})
        elif self.app is None:
            loading = {"message": "Loading model", "type": "unavailable_error", "code": 503}  # llama-server's words
            await send_json(send, 503, {"error": loading})
        elif scope["path"] == "/health":
            await send_json(send, 200, {"status": "ok"})
        elif scope["path"].startswith("/slots/") and scope["method"] == "POST":
            await self.erase(scope, send)
        else:
            await self.app(scope, receive, send)

    async def erase(self, scope: Scope, send: Any) -> None:
        if b"action=erase" not in scope.get("query_string", b""):
            await send_json(send, 400, {"error": {"message": "only action=erase is supported", "code": 400}})
            return
        from llama_cpp.server import app as server

        async with server.llama_outer_lock, server.llama_inner_lock:  # not while a request generates
            llama = server._llama_proxy._current_model if server._llama_proxy else None
            freed = n_tokens = 0
            if llama is not None:
                n_tokens = llama.n_tokens
                if llama.cache is not None:
                    freed = llama.cache.cache_size
                    llama.cache.cache_state.clear()
                llama.reset()  # the next prompt is evaluated from its start
            gc.collect()
            release_heap()
        say("erased", prompt_cache_bytes=freed, n_tokens=n_tokens)
        slot = scope["path"].rsplit("/", 1)[-1]
        await send_json(send, 200, {"id_slot": slot, "n_erased": n_tokens, "prompt_cache_bytes": freed})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a GGUF file")
    parser.add_argument("--model-alias", default="", help="the name clients ask for (default: the path)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--n-threads", type=int, default=None)
    parser.add_argument("--no-mmap", action="store_true", help="read the model into anonymous memory")
    parser.add_argument("--prompt-cache-mb", type=int, default=0, help="keep prompt states in RAM up to this size")
    args = parser.parse_args()

    import uvicorn

    server = ModelServer(args)
    threading.Thread(target=server.load, name="load-model", daemon=True).start()
    say("listening", port=args.port)
    uvicorn.run(server, host=args.host, port=args.port, log_level="warning", lifespan="on")
    return 0


if __name__ == "__main__":
    sys.exit(main())
