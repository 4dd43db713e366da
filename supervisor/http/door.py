"""The OpenAI-compatible door: `/v1/...` on the HTTP API's port, routed by the request's
`model` to the component that `serves` it, which is loaded on demand within the memory
budget (llama-swap's proxy, Ollama's scheduler, with Ironcliw's admission). `/v1/models`
(and `/v1/models/{id}`) it answers itself.

- Clients send `Authorization: Bearer <token>` (the API's token, `<runtime_dir>/http.token`),
  so OpenAI libraries work with `api_key=` and a browser page cannot forge a request.
- A cold model: admission as for `load` (`[proxy] make_room` lets it unload lower
  priorities), start, wait until READY, then forward. Requests for the same cold model share
  one load; at most `[proxy] queue` requests wait for loads (503 with Retry-After beyond),
  and a model that cannot fit answers 507 with the numbers.
- Responses pass through unchanged: a stream (SSE) is relayed as it comes, chunk by chunk;
  an answer of known length is sent in one piece.
- Each request marks its component used, at its start and its end; `idle_ttl_s` unloads
  on that clock (idlettl.py), never while a request is in flight.

It is a plain ASGI app in front of the API's Starlette routes, and forwards with aiohttp's
client (upstream.py says why not httpx, with bench/bench_door.py's "client alone" figures).
"""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import structlog
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import jsondecode
from ..config import ProxySection
from ..errors import IroncliwError, Refused, ShuttingDown
from ..model import MIB, ComponentState
from .http1 import CLIENT_GONE
from .upstream import Upstreams

if TYPE_CHECKING:
    from ..core import Supervisor
    from ..runner import Runner

log = structlog.get_logger("ironcliw.door")

# Every path under /v1/ is the door's: /v1/models (and /v1/models/{id}) it answers itself, a
# POST anywhere else (chat/completions, completions, embeddings, and what servers add:
# rerank, responses, ...) goes to the server of the body's `model`, as llama-swap does.
PREFIX = "/v1/"
MODELS = "/v1/models"
# Not forwarded either way: they describe one hop, not the message (RFC 9110 7.6.1).
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer"}
    | {b"transfer-encoding", b"upgrade", b"host", b"content-length", b"authorization"}
)
RETRY_AFTER_S = 5
WHOLE_BODY_BYTES = 1 << 20  # an answer of known length up to this is read whole and sent in one piece


class DoorError(Exception):
    """An answer in OpenAI's error shape: {"error": {"message", "type", "code", ...}}."""

    def __init__(self, status: int, kind: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.extra = status, kind, message, extra

    async def send(self, send: Send) -> None:
        body = {"error": {"message": self.message, "type": self.kind, "code": self.status, **self.extra}}
        extra = [(b"retry-after", str(RETRY_AFTER_S).encode())] if self.status == 503 else []
        await send_json(send, self.status, body, extra)


async def send_json(send: Send, status: int, value: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    data = msgspec.json.encode(value)
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": data})


class RoutedBody(msgspec.Struct):
    """What the door reads of a request body: its `model`. The rest (a prompt of megabytes,
    say) is skipped by the parser, not built into Python objects."""

    model: Any = None


class SharedLoad:
    """One load of a cold component, awaited by every request that found it cold."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.error: DoorError | None = None


class DoorFront:
    """The door's paths to the door, everything else to the API's routes."""

    def __init__(self, door: Door, app: ASGIApp) -> None:
        self.door, self.app = door, app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PREFIX):
            await self.door(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def aclose(self) -> None:
        await self.door.upstreams.aclose()


class Door:
    def __init__(self, supervisor: Supervisor, cfg: ProxySection, token: str) -> None:
        self.sup, self.cfg, self.token = supervisor, cfg, token.encode()
        self.waiting = 0  # requests waiting for a load, all models together
        self._loads: dict[str, SharedLoad] = {}
        self.upstreams = Upstreams(cfg.read_timeout_s)

    def owners(self) -> dict[str, str]:
        """Model name -> the component serving it (registered components included)."""
        return {model: r.name for r in self.sup.runners.values() for model in r.spec.serves}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            headers = dict(scope["headers"])
            self._authorize(headers.get(b"authorization", b""))
            method, path = scope["method"], scope["path"]
            listing = path == MODELS or path.startswith(MODELS + "/")
            if listing and method in ("GET", "HEAD"):
                await send_json(send, 200, self._listed(path.removeprefix(MODELS).removeprefix("/")))
                return
            if listing or method != "POST":
                raise DoorError(405, "invalid_request_error", f"{method} is not allowed on {path}")
            body = await read_body(receive)
            runner = self._route(body)
            load_s = await self._ready(runner)
            await self._relay_unless_the_client_leaves(scope, send, body, runner, load_s)
        except DoorError as exc:
            await exc.send(send)

    def _listed(self, model: str) -> dict[str, Any]:
        """`GET /v1/models`: every model served; `GET /v1/models/{model}`: that one (404 if none)."""
        owners = self.owners()
        if not model:
            return {"object": "list", "data": [self._entry(name, owner) for name, owner in owners.items()]}
        if model not in owners:
            raise self._not_served(model, owners)
        return self._entry(model, owners[model])

    def _entry(self, model: str, owner: str) -> dict[str, Any]:
        state = self.sup.runners[owner].state.value
        return {"id": model, "object": "model", "created": 0, "owned_by": owner, "state": state}

    @staticmethod
    def _not_served(model: object, owners: dict[str, str]) -> DoorError:
        known = ", ".join(sorted(owners)) or "none"
        shown = repr(model)[:200]  # a name of megabytes is not echoed back whole
        return DoorError(404, "invalid_request_error", f"model {shown} is not served here (served: {known})")

    # --- the steps ----------------------------------------------------------------------

    def _authorize(self, given: bytes) -> None:
        scheme, _, credential = given.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(credential.strip(), self.token):
            raise DoorError(
                401, "invalid_request_error", "send Authorization: Bearer <the token in <runtime_dir>/http.token>"
            )

    def _route(self, body: bytes) -> Runner:
        try:
            model = jsondecode.decode(body, RoutedBody).model
        except msgspec.DecodeError as exc:  # ValidationError included: not an object
            raise DoorError(
                400, "invalid_request_error", f"the body must be a JSON object with a `model`: {exc}"
            ) from None
        owners = self.owners()
        if not isinstance(model, str) or model not in owners:
            raise self._not_served(model, owners)
        return self.sup.runners[owners[model]]

    async def _ready(self, runner: Runner) -> float:
        """Until `runner` is READY: at once if it is, else through one shared load. Returns the
        seconds this request waited for a load (0 if it found the model warm)."""
        if runner.state is ComponentState.READY:
            return 0.0
        if runner.state is ComponentState.FROZEN:
            raise DoorError(503, "server_error", f"{runner.name} is frozen under memory pressure; try again later")
        if self.waiting >= self.cfg.queue:
            raise DoorError(503, "server_error", f"{self.waiting} requests already wait for models ([proxy] queue)")
        started = time.monotonic()
        self.waiting += 1
        try:
            load = self._loads.get(runner.name)
            if load is None:  # the first request loads, for all: to the end, even if its client leaves
                load = self._loads[runner.name] = SharedLoad()
                with anyio.CancelScope(shield=True):
                    await self._load(runner.name, load)
            await load.done.wait()
        finally:
            self.waiting -= 1
        if load.error is not None:
            raise load.error
        return time.monotonic() - started

    @staticmethod
    def _cold_start(runner: Runner, load_s: float) -> str:
        """Where a cold request's wait went: admission (and making room), spawning the
        command, loading until READY; seconds."""
        run = runner.current_run
        spawn, ready = run.spawn_s or 0.0, run.time_to_ready_s or 0.0
        return f"admission={max(0.0, load_s - spawn - ready):.4f}; spawn={spawn:.4f}; load={ready:.4f}"

    async def _load(self, name: str, load: SharedLoad) -> None:
        try:
            await self.sup.load(name, make_room=self.cfg.make_room)
            log.info("door_loaded", component=name)
        except ShuttingDown as exc:
            load.error = DoorError(503, "server_error", exc.message)
        except Refused as exc:
            ok, _, pred, room = self.sup.admission.can_load(name)
            if ok:  # it fitted, and did not become ready
                load.error = DoorError(503, "server_error", exc.message)
            else:
                numbers = {"predicted_mb": round(pred.peak_mb), "room_mb": round(max(room, 0) / MIB)}
                load.error = DoorError(507, "insufficient_memory", exc.message, **numbers)
        except IroncliwError as exc:
            load.error = DoorError(503, "server_error", exc.message)
        finally:
            del self._loads[name]
            load.done.set()

    async def _relay_unless_the_client_leaves(
        self, scope: Scope, send: Send, body: bytes, runner: Runner, load_s: float
    ) -> None:
        """The relay, cut short if the client goes: a model server generating for nobody stops
        when its connection closes. An asyncio deadline moved to now does the cancelling
        (cheap, and it tells its own cancellation from any other); not around `_ready`,
        whose shared load must run to its end."""
        watch = scope["extensions"][CLIENT_GONE]  # http1's server, the only one the door runs under
        leaving = asyncio.timeout(None)
        try:
            async with leaving:
                unwatch = watch(lambda: leaving.reschedule(-1.0))  # gone already: cancelled at once
                try:
                    await self._relay(scope, send, body, runner, load_s)
                finally:
                    unwatch()
        except TimeoutError:
            if not leaving.expired():
                raise
            log.info("door_client_left", component=runner.name)

    async def _relay(self, scope: Scope, send: Send, body: bytes, runner: Runner, load_s: float) -> None:
        import aiohttp
        import yarl

        endpoint = runner.endpoint
        base = endpoint.url if endpoint is not None else None
        if base is None:
            raise DoorError(503, "server_error", f"{runner.name} stopped before the request could be sent")
        query = scope["query_string"]
        target = (scope["raw_path"] + (b"?" + query if query else b"")).decode("latin-1")
        url = yarl.URL(base.rstrip("/") + target, encoded=True)  # the client's path as it sent it
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"] if k not in HOP_BY_HOP]
        runner.in_flight += 1
        runner.last_used = time.monotonic()
        started = False
        try:
            async with self.upstreams.post(url, body, headers) as up:
                out = [(k, v) for k, v in up.raw_headers if k.lower() not in HOP_BY_HOP]
                out += self._our_headers(runner, load_s)
                length = up.content_length
                if length is not None and length <= WHOLE_BODY_BYTES:  # a plain answer: one write
                    content = await up.read()
                    out.append((b"content-length", str(len(content)).encode()))
                    started = True
                    await send({"type": "http.response.start", "status": up.status, "headers": out})
                    await send({"type": "http.response.body", "body": content})
                    return
                started = True
                await send({"type": "http.response.start", "status": up.status, "headers": out})
                # A stream's head goes out now, as the server sent it, not with the first part:
                # the client reads it while the model computes its first token (and one that
                # times out waiting for headers does not, during a long prompt).
                await send({"type": "http.response.body", "body": b"", "more_body": True})
                async for chunk in up.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
        except (aiohttp.ClientError, TimeoutError) as exc:
            if started:  # the answer has begun: cut it short, the client sees the stream end
                log.warning("door_stream_cut", component=runner.name, error=f"{type(exc).__name__}: {exc}")
                return
            status = 504 if isinstance(exc, TimeoutError) else 502
            raise DoorError(status, "server_error", f"{runner.name}: {type(exc).__name__}: {exc}") from None
        finally:
            runner.in_flight -= 1
            runner.last_used = time.monotonic()

    def _our_headers(self, runner: Runner, load_s: float) -> list[tuple[bytes, bytes]]:
        out = [(b"x-ironcliw-component", runner.name.encode())]
        if runner.profile is not None:  # a smaller profile than the one it prefers
            out.append((b"x-ironcliw-profile", runner.profile.encode()))
        if load_s:
            out.append((b"x-ironcliw-load-s", f"{load_s:.3f}".encode()))
            out.append((b"x-ironcliw-cold-start", self._cold_start(runner, load_s).encode()))
        return out


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise DoorError(400, "invalid_request_error", "the client went away")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
