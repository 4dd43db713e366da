"""The door's connections to model servers: aiohttp's client, configured to relay unchanged.

Why aiohttp and not httpx (which sends the supervisor's probes, trims and unloads, one at a
time): the door relays every request of every client, and bench/bench_door.py ("the client
alone", 16 concurrent tasks on this machine) measured, per request, httpx's AsyncClient
~4,100 us of CPU, httpx over an aiohttp transport ~900 us, httpcore under a pool of our own
~1,100 us, and aiohttp ~300 us: its HTTP parser is C (llhttp), the others' is h11. The
door's target (2,000 requests/s relayed) is out of reach with the others.

What is set here and why:
- Nothing is added to or changed in what passes: no default User-Agent, Accept,
  Accept-Encoding or Content-Type, and answers are not decompressed (a gzip answer goes
  to the client as gzip). A redirect goes back to the client, not followed here.
- No cookie jar: the session is shared by every client, so a cookie one answer set must
  not ride along with another client's request (a jar also costs time on every request).
- Kept-alive connections per upstream are reused; aiohttp drops one the server closed
  before it is reused, and closes idle ones after KEEPALIVE_S, so a model server restarted
  on a new ${PORT} leaves nothing behind at its old address for long.
- No overall time limit (a generation may stream for minutes): a connect limit, and
  `[proxy] read_timeout_s` of silence between two reads.

aiohttp is imported only when the door is enabled (9.9 MB of RSS, bench/bench_imports.py),
and then in a worker thread as the server starts (`preload`): imported by the first request
instead, it held the event loop and every request in flight with it (p99 219 ms under wrk
in that bench_door run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import aiohttp
    import yarl

CONNECT_TIMEOUT_S = 10.0
KEEPALIVE_S = 15.0  # an idle kept-alive connection to a model server is closed after this
NOT_ADDED = frozenset({"User-Agent", "Accept", "Accept-Encoding", "Content-Type"})


def preload() -> None:
    """Import the client ahead of the first request (run in a worker thread)."""
    import aiohttp  # noqa: F401
    import yarl  # noqa: F401


class Upstreams:
    """The door's one aiohttp session, opened on first use (it needs the running loop)."""

    def __init__(self, read_timeout_s: float) -> None:
        self.read_timeout_s = read_timeout_s
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            import aiohttp

            connector = aiohttp.TCPConnector(
                limit=0,  # the door's queue and the clients bound what is in flight, not a pool size
                keepalive_timeout=KEEPALIVE_S,
                use_dns_cache=False,  # upstreams are loopback addresses; nothing to cache
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=NOT_ADDED,
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=CONNECT_TIMEOUT_S, sock_read=self.read_timeout_s or None
                ),
                trust_env=False,  # never through a proxy from the environment: upstreams are local
            )
        return self._session

    def post(self, url: str | yarl.URL, body: bytes, headers: list[tuple[str, str]]) -> Any:
        """`async with` it for the answer (aiohttp's ClientResponse)."""
        return self.session().post(url, data=body, headers=headers, allow_redirects=False)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
