"""Who may talk to the HTTP API.

- Every request's `Host` must be a loopback name or address (DNS rebinding: a page on
  evil.example that resolves to 127.0.0.1 still sends `Host: evil.example`).
- A state-changing request (POST) needs the token from `<runtime_dir>/http.token` (mode
  0600, so only the supervisor's user can read it) in `X-Ironcliw-Token`, and a browser's
  `Origin`, if it sends one, must be the API's own. Scripts send no Origin and need only the token.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from .responses import error_response

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
TOKEN_HEADER = b"x-ironcliw-token"  # the token itself: see token.py


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Guard:
    """ASGI middleware applying the rules above before any route runs."""

    def __init__(self, app: ASGIApp, token: str, port: int) -> None:
        self.app = app
        self.token = token.encode()
        self.origins = {f"http://{h}:{port}".encode() for h in LOOPBACK_HOSTS if h != "::1"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        if _host_name(host) not in LOOPBACK_HOSTS:
            await error_response(400, "BAD_HOST", f"Host {host!r} is not a loopback name or address")(scope, receive, send)
            return
        if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            origin = headers.get(b"origin")
            if origin is not None and origin not in self.origins:
                await error_response(403, "CROSS_ORIGIN", f"Origin {origin.decode('latin-1')!r} may not change state")(scope, receive, send)
                return
            given = headers.get(TOKEN_HEADER, b"")
            if not hmac.compare_digest(given, self.token):
                code = "NO_TOKEN" if not given else "BAD_TOKEN"
                await error_response(403, code, "state-changing requests need the X-Ironcliw-Token from <runtime_dir>/http.token")(scope, receive, send)
                return
        await self.app(scope, receive, send)
