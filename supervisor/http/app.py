"""The seed's HTTP endpoints, each a thin door onto the same `Supervisor` methods that the
control socket and the Python API use.

Bad JSON, wrong types and unknown components get a 4xx with a JSON error body; a refusal
(a load that does not fit) is 409 with the numbers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from .. import jsondecode
from ..config import check_component, decode_component, without_command
from ..core import Supervisor
from ..errors import BadRequest, ConfigError, IroncliwError, Refused, UnknownComponent
from ..runner import adopt_running, component_status
from .responses import error_response, json_response

Handler = Callable[[Request], Awaitable[Response]]
_STATUS_FOR = {UnknownComponent: 404, Refused: 409, ConfigError: 422}


DASHBOARD = Path(__file__).parent / "dashboard.html"
SSE_KEEPALIVE_S = 15.0


async def _event_stream(sup: Supervisor, request: Request) -> AsyncIterator[bytes]:
    """Server-Sent Events: memory samples (at most 4 a second), state changes and actions."""
    with sup.bus.subscribe(["memory", "state", "action"], buffer=256) as sub:
        yield b"event: hello\ndata: " + msgspec.json.encode(sup.memory_status()) + b"\n\n"
        while True:
            with anyio.move_on_after(SSE_KEEPALIVE_S) as scope:
                try:
                    event = await sub.receive.receive()
                except anyio.EndOfStream:
                    return
            if scope.cancel_called:
                if await request.is_disconnected():
                    return
                yield b": keep-alive\n\n"
                continue
            yield b"event: " + event["topic"].encode() + b"\ndata: " + msgspec.json.encode(event) + b"\n\n"


def guarded(fn: Callable[[Request], Awaitable[Any]], status: int = 200) -> Handler:
    """A JSON endpoint: the result as JSON, our errors as JSON errors with their HTTP status."""

    async def endpoint(request: Request) -> Response:
        try:
            return json_response(await fn(request), status)
        except IroncliwError as exc:
            code = next((s for cls, s in _STATUS_FOR.items() if isinstance(exc, cls)), 400)
            return error_response(code, exc.code, exc.message)

    return endpoint


async def json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        value = jsondecode.decode(raw)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError("<request>", "$", "a JSON object")
    return value


_HEALTH = {"HEALTHY": "healthy", "WARNING": "warning", "CRITICAL": "critical", "EMERGENCY": "emergency"}
_CSP = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'"


class Endpoints:
    """Each endpoint a thin door onto the supervisor's command methods."""

    def __init__(self, supervisor: Supervisor, token: str) -> None:
        self.sup = supervisor
        self.token = token
        self._registry: Any = None  # prometheus_client's, made on the first scrape

    async def health(self, request: Request) -> dict[str, Any]:
        m = self.sup.memory_status()
        keys = ("percent_used", "available_mb", "components_loaded")
        # The seed's shape, the state in lower case as the seed shows it ("state": "healthy").
        return {"status": _HEALTH[m["state"]], "memory": {"state": _HEALTH[m["state"]], **{k: m[k] for k in keys}}}

    async def status(self, request: Request) -> dict[str, Any]:
        return self.sup.memory_status()

    async def report(self, request: Request) -> dict[str, Any]:
        return self.sup.report()

    async def components(self, request: Request) -> dict[str, Any]:
        return self.sup.components()

    async def register(self, request: Request) -> Any:
        """The seed's body {name, priority, estimated_mb}, plus any component key. Without a
        `command` the supervisor never starts it: it adopts `pid` if given, else its owner
        loads it (in-process, through the Python API). Kept across restarts (registry.py),
        except an adopted pid, whose process a restart does not keep."""
        table = await json_body(request)
        name, pid = table.pop("name", None), table.pop("pid", None)
        if not isinstance(name, str):
            raise ConfigError("<request>", "$.name", "a component name (string)")
        if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0):
            raise ConfigError("<request>", "$.pid", "the PID of a running process (a positive integer)")
        if "command" not in table:
            table = without_command(table, pid)
        elif pid is not None:
            raise ConfigError("<request>", "$.pid", "a command or a pid, not both")
        base = Path(self.sup.config.base_dir)
        runner = self.sup.register(check_component("<request>", base, name, decode_component("<request>", name, table)))
        if pid is not None:
            adopt_running(runner, pid)
            kept: str | None = "not kept across restarts: an adopted process does not outlive them"
        else:
            kept = self.sup.registry.keep(name, table)
        row = msgspec.to_builtins(component_status(runner, 0.0))
        return {**row, "persisted": kept is None, **({"note": kept} if kept else {})}

    async def load(self, request: Request) -> Any:
        make_room = (await json_body(request)).get("make_room", False)
        if not isinstance(make_room, bool):
            raise ConfigError("<request>", "$.make_room", "true or false")
        return await self.sup.load(request.path_params["name"], make_room=make_room)

    async def unload(self, request: Request) -> Any:
        return await self.sup.unload(request.path_params["name"])

    async def optimize(self, request: Request) -> Any:
        return await self.sup.optimize()

    async def emergency(self, request: Request) -> Any:
        return await self.sup.emergency_cleanup()

    async def openapi(self, request: Request) -> dict[str, Any]:
        return OPENAPI

    async def metrics(self, request: Request) -> Response:
        # prometheus_client loads on the first scrape, not at start: a stack that nobody
        # scrapes does not carry it (see bench/bench_imports.py).
        from .metrics import make_registry, metrics_text

        if self._registry is None:
            self._registry = make_registry(self.sup)
        return Response(metrics_text(self._registry), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def events(self, request: Request) -> Response:
        stream = _event_stream(self.sup, request)
        return StreamingResponse(stream, media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    async def dashboard(self, request: Request) -> Response:
        page = DASHBOARD.read_text().replace("__IRONCLIW_TOKEN__", self.token)
        return HTMLResponse(page, headers={"Cache-Control": "no-store", "Content-Security-Policy": _CSP})


async def _not_found(request: Request, exc: Exception) -> Response:
    return error_response(404, "NOT_FOUND", f"no endpoint {request.method} {request.url.path}")


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return error_response(405, "METHOD_NOT_ALLOWED", f"{request.method} is not allowed on {request.url.path}")


async def _internal(request: Request, exc: Exception) -> Response:
    return error_response(500, "INTERNAL", f"{type(exc).__name__}: {exc}")


def build_app(supervisor: Supervisor, token: str = "") -> ASGIApp:
    e = Endpoints(supervisor, token)
    post = ["POST"]
    routes = [
        Route("/health", guarded(e.health)),
        Route("/memory/status", guarded(e.status)),
        Route("/memory/report", guarded(e.report)),
        Route("/memory/components", guarded(e.components)),
        Route("/memory/components/register", guarded(e.register, 201), methods=post),
        Route("/memory/components/{name}/load", guarded(e.load), methods=post),
        Route("/memory/components/{name}/unload", guarded(e.unload), methods=post),
        Route("/memory/optimize", guarded(e.optimize), methods=post),
        Route("/memory/emergency-cleanup", guarded(e.emergency), methods=post),
        Route("/openapi.json", guarded(e.openapi)),
        Route("/metrics", e.metrics),
        Route("/memory/events", e.events),
        Route("/memory_dashboard.html", e.dashboard),
    ]
    handlers = {404: _not_found, 405: _not_allowed, Exception: _internal}
    app = Starlette(routes=routes, exception_handlers=handlers)
    if not supervisor.config.proxy.enabled:
        return app
    from .door import Door, DoorFront

    return DoorFront(Door(supervisor, supervisor.config.proxy, token), app)


def _op(summary: str, method: str = "get", body: bool = False, created: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {"201" if created else "200": {"description": "JSON"}, "4XX": {"description": "JSON error"}},
    }
    if method == "post":
        op["parameters"] = [
            {"name": "X-Ironcliw-Token", "in": "header", "required": True, "schema": {"type": "string"}}
        ]
    if body:
        op["requestBody"] = {"content": {"application/json": {"schema": {"type": "object"}}}}
    return {method: op}


_NAME = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "Ironcliw supervisor", "version": "0.1.0"},
    "paths": {
        "/health": _op("Memory state in the seed's shape"),
        "/memory/status": _op("State, percent used, available MB, loaded components"),
        "/memory/report": _op("Per-component memory, predictions, trends, recent actions"),
        "/memory/components": _op("Components with their state and config"),
        "/memory/components/register": _op(
            "Register a component: the seed's {name, priority, estimated_mb}, any config key, optional command or pid",
            "post",
            body=True,
            created=True,
        ),
        "/memory/components/{name}/load": {
            "post": {
                **_op("Load (admission; make_room)", "post", body=True)["post"],
                "parameters": _op("", "post")["post"]["parameters"] + _NAME,
            }
        },
        "/memory/components/{name}/unload": {
            "post": {**_op("Unload", "post")["post"], "parameters": _op("", "post")["post"]["parameters"] + _NAME}
        },
        "/memory/optimize": _op("The WARNING actions now", "post"),
        "/memory/emergency-cleanup": _op("The EMERGENCY actions now", "post"),
    },
}
