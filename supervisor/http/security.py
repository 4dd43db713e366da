"""Who may talk to the HTTP API.

- Every request's `Host` must be a loopback name or address (DNS rebinding: a page on
  evil.example that resolves to 127.0.0.1 still sends `Host: evil.example`).
- A state-changing request (POST) needs the token from `<runtime_dir>/http.token` (mode
  0600, so only the supervisor's user can read it) in `X-Ironcliw-Token`, and a browser's
  `Origin`, if it sends one, must be the API's own. Scripts send no Origin and need only the token.
- The OpenAI-compatible door (`/v1/...`, door.py) takes the same token as
  `Authorization: Bearer`, as OpenAI's client libraries send it.
"""

from __future__ import annotations

import hmac
import re

from starlette.types import ASGIApp, Receive, Scope, Send

from .responses import error_response

TOKEN_HEADER = b"x-ironcliw-token"  # the token itself: see token.py


# host[:port], exactly: a loopback name, or a bracketed IPv6 loopback taken whole. Anything
# around them (`[::1]evil.com`, `127.0.0.1:80@evil.com`, `localhost.evil.com`) is refused.
_HOST = re.compile(r"(127\.0\.0\.1|localhost|\[::1\])(?::([0-9]{1,5}))?", re.IGNORECASE)


def host_allowed(host: str, server_port: int | None, *, port_required: bool = False) -> bool:
    """Whether `host` ("name[:port]", from a Host or Origin header) names this server on
    loopback; a port, if given, must be the one the request arrived on. Browsers always send
    a non-default port, so an Origin without one names port 80."""
    match = _HOST.fullmatch(host)
    if match is None:
        return False
    port = int(match.group(2)) if match.group(2) else (80 if port_required else None)
    return port is None or server_port is None or port == server_port


def origin_allowed(origin: str, server_port: int | None) -> bool:
    return origin.startswith("http://") and host_allowed(origin[7:], server_port, port_required=True)


class Guard:
    """ASGI middleware applying the rules above before any route runs."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def aclose(self) -> None:
        """Close what the app holds open (the door's upstream connections), if anything."""
        closer = getattr(self.app, "aclose", None)
        if closer is not None:
            await closer()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        server = scope.get("server")
        port = server[1] if server else None
        if not host_allowed(host, port):
            await error_response(400, "BAD_HOST", f"Host {host!r} is not a loopback name or address")(
                scope, receive, send
            )
            return
        if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            origin = headers.get(b"origin")
            if origin is not None and not origin_allowed(origin.decode("latin-1"), port):
                await error_response(403, "CROSS_ORIGIN", f"Origin {origin.decode('latin-1')!r} may not change state")(
                    scope, receive, send
                )
                return
            if scope["path"].startswith("/v1/"):  # the door checks `Authorization: Bearer` itself
                await self.app(scope, receive, send)
                return
            given = headers.get(TOKEN_HEADER, b"")
            if not hmac.compare_digest(given, self.token):
                code = "NO_TOKEN" if not given else "BAD_TOKEN"
                await error_response(
                    403, code, "state-changing requests need the X-Ironcliw-Token from <runtime_dir>/http.token"
                )(scope, receive, send)
                return
        await self.app(scope, receive, send)
