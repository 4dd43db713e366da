"""The OpenAI-compatible door: `/v1/...` on the HTTP API's port, routed by the request's
`model` to the component that `serves` it, which is loaded on demand within the memory
budget (llama-swap's proxy, Ollama's scheduler, with Ironcliw's admission).

- Clients send `Authorization: Bearer <token>` (the API's token, `<runtime_dir>/http.token`),
  so OpenAI libraries work with `api_key=` and a browser page cannot forge a request.
- A cold model: admission as for `load` (`[proxy] make_room` lets it unload lower
  priorities), start, wait until READY, then forward. Requests for the same cold model share
  one load; at most `[proxy] queue` requests wait for loads (503 with Retry-After beyond),
  and a model that cannot fit answers 507 with the numbers.
- Responses pass through unchanged: a stream (SSE) is relayed as it comes, chunk by chunk.
- Each request marks its component used, at its start and its end; `idle_ttl_s` unloads
  on that clock (core.py), never while a request is in flight.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import structlog
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ..config import ProxySection
from ..errors import IroncliwError, Refused, ShuttingDown
from ..model import MIB, ComponentState

if TYPE_CHECKING:
    import httpx

    from ..core import Supervisor
    from ..runner import Runner

log = structlog.get_logger("ironcliw.door")

PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
# Not forwarded either way: they describe one hop, not the message (RFC 9110 7.6.1).
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer"}
    | {b"transfer-encoding", b"upgrade", b"host", b"content-length", b"authorization"}
)
RETRY_AFTER_S = 5


class DoorError(Exception):
    """An answer in OpenAI's error shape: {"error": {"message", "type", "code", ...}}."""

    def __init__(self, status: int, kind: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.extra = status, kind, message, extra

    def response(self) -> Response:
        body = {"error": {"message": self.message, "type": self.kind, "code": self.status, **self.extra}}
        headers = {"Retry-After": str(RETRY_AFTER_S)} if self.status == 503 else None
        return Response(msgspec.json.encode(body), self.status, headers, media_type="application/json")


class SharedLoad:
    """One load of a cold component, awaited by every request that found it cold."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.error: DoorError | None = None


class Door:
    def __init__(self, supervisor: Supervisor, cfg: ProxySection, token: str) -> None:
        self.sup, self.cfg, self.token = supervisor, cfg, token.encode()
        self.waiting = 0  # requests waiting for a load, all models together
        self._loads: dict[str, SharedLoad] = {}
        self._client: httpx.AsyncClient | None = None

    def routes(self) -> list[Route]:
        return [Route("/v1/models", self.models)] + [Route(p, self.forward, methods=["POST"]) for p in PATHS]

    def owners(self) -> dict[str, str]:
        """Model name -> the component serving it (registered components included)."""
        return {model: r.name for r in self.sup.runners.values() for model in r.spec.serves}

    async def models(self, request: Request) -> Response:
        try:
            self._authorize(request)
        except DoorError as exc:
            return exc.response()
        runners = self.sup.runners
        data = [
            {"id": model, "object": "model", "created": 0, "owned_by": name, "state": runners[name].state.value}
            for model, name in self.owners().items()
        ]
        return Response(msgspec.json.encode({"object": "list", "data": data}), media_type="application/json")

    async def forward(self, request: Request) -> Response:
        try:
            self._authorize(request)
            body = await request.body()
            runner = self._route(body)
            started = time.monotonic()
            load_s = await self._ready(runner)
            return await self._relay(request, body, runner, load_s, started)
        except DoorError as exc:
            return exc.response()

    # --- the steps ----------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        given = request.headers.get("authorization", "")
        scheme, _, credential = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(credential.strip().encode(), self.token):
            raise DoorError(
                401, "invalid_request_error", "send Authorization: Bearer <the token in <runtime_dir>/http.token>"
            )

    def _route(self, body: bytes) -> Runner:
        try:
            model = msgspec.json.decode(body).get("model")
        except (msgspec.DecodeError, AttributeError):
            raise DoorError(400, "invalid_request_error", "the body must be a JSON object with a `model`") from None
        owners = self.owners()
        if not isinstance(model, str) or model not in owners:
            known = ", ".join(sorted(owners)) or "none"
            raise DoorError(404, "invalid_request_error", f"model {model!r} is not served here (served: {known})")
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

    async def _relay(self, request: Request, body: bytes, runner: Runner, load_s: float, started: float) -> Response:
        endpoint = runner.endpoint
        base = endpoint.url if endpoint is not None else None
        if base is None:
            raise DoorError(503, "server_error", f"{runner.name} stopped before the request could be sent")
        headers = [(k, v) for k, v in request.headers.raw if k not in HOP_BY_HOP]
        client = self._open()
        url = base.rstrip("/") + request.url.path
        upstream_request = client.build_request("POST", url, headers=headers, content=body)
        runner.in_flight += 1
        runner.last_used = time.monotonic()
        try:
            upstream = await client.send(upstream_request, stream=True)
        except Exception as exc:  # connection refused or reset, a timeout: the server failed us
            self._done(runner)
            raise DoorError(502, "server_error", f"{runner.name}: {type(exc).__name__}: {exc}") from None
        out = [(k, v) for k, v in upstream.headers.raw if k.lower() not in HOP_BY_HOP]
        out.append((b"x-ironcliw-component", runner.name.encode()))
        if load_s:
            out.append((b"x-ironcliw-load-s", f"{load_s:.3f}".encode()))
        return StreamingResponse(self._chunks(upstream, runner), upstream.status_code, _headers(out))

    async def _chunks(self, upstream: httpx.Response, runner: Runner) -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        finally:
            with anyio.CancelScope(shield=True):
                await upstream.aclose()
            self._done(runner)

    def _done(self, runner: Runner) -> None:
        runner.in_flight -= 1
        runner.last_used = time.monotonic()

    def _open(self) -> httpx.AsyncClient:
        if self._client is None:
            import httpx

            timeout = httpx.Timeout(10.0, read=self.cfg.read_timeout_s)
            limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
            self._client = httpx.AsyncClient(trust_env=False, timeout=timeout, limits=limits)
        return self._client


def _headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Starlette takes a mapping; repeated names (Set-Cookie) are joined, as HTTP allows."""
    joined: dict[str, str] = {}
    for key, value in raw:
        name, text = key.decode("latin-1"), value.decode("latin-1")
        joined[name] = f"{joined[name]}, {text}" if name in joined else text
    return joined
