"""The tables that say how to reach a running component: readiness and liveness probes,
trims and unloads (HTTP requests or signals), decoded as part of a component's config
(config.py), and the grammar of their targets, checked here (endpoints.py fills in
`${PORT}` for each run).

A target is "[METHOD ]path-or-URL": "/health" is a path on the component's own port,
"http://127.0.0.1:11434/api/ps" a full URL, which must name a loopback host (the
supervisor never sends a probe or a trim off the machine).
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from .errors import ConfigError

# The bounds config.py explains (a day at most, an hour for intervals).
HOUR_S = 3600.0
DAY_S = 86400.0
Seconds = Annotated[float, Meta(gt=0, le=DAY_S)]
NonNegSeconds = Annotated[float, Meta(ge=0, le=DAY_S)]
Interval = Annotated[float, Meta(gt=0, le=HOUR_S)]
Port = Annotated[int, Meta(ge=1, le=65535)]
HttpStatus = Annotated[int, Meta(ge=100, le=599)]


class Table(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A config table: an unknown key is an error, not silently ignored."""


class Readiness(Table, frozen=True):
    """When a started component counts as READY: at most one of the four ways may be set."""

    alive_s: NonNegSeconds | None = None  # still running after this many seconds
    log_pattern: str | None = None  # a line of its output matches this regex
    port: Port | None = None  # a TCP connect to host:port succeeds
    host: str = "127.0.0.1"
    # an HTTP GET answers with `status` (any 2xx if unset): a path on the component's own
    # port, or a full loopback URL (a model server accepts connections long before it answers)
    http: str | None = None
    status: HttpStatus | None = None
    timeout_s: Seconds = 30.0  # not ready by then: the start failed

    @property
    def effective_alive_s(self) -> float:
        """The default when nothing is set is alive for 1 s, as supervisord's startsecs."""
        if self.alive_s is None and self.log_pattern is None and self.port is None and self.http is None:
            return 1.0
        return self.alive_s or 0.0


class Liveness(Table, frozen=True):
    """Once READY, a probe every `every_s`; `failures` failed in a row restart the component
    (process-compose's liveness probe: period, timeout, failure threshold). A frozen
    component is not probed: it cannot answer."""

    http: str | None = None  # GET a path on its own port or a loopback URL; `status` or any 2xx passes
    exec: list[str] | None = None  # or run this command: exit status 0 passes
    status: HttpStatus | None = None
    every_s: Interval = 10.0
    timeout_s: Seconds = 5.0  # one probe taking longer has failed
    failures: Annotated[int, Meta(ge=1, le=1000)] = 3


class HttpAction(Table, frozen=True):
    """A request that asks a running component to do something: "METHOD target" (POST if
    the method is left out), the target a path on its own port or a full loopback URL."""

    http: str
    body: str | None = None  # sent as JSON when it parses as JSON, else as text
    headers: dict[str, str] = {}
    timeout_s: Seconds = 10.0


class Trim(Table, frozen=True):
    """How to ask a component to drop caches: a signal to its leader, or an HTTP request
    (llama-server's `POST /slots/0?action=erase`). Exactly one of `signal` and `http`."""

    signal: str | None = None
    http: str | None = None
    body: str | None = None
    headers: dict[str, str] = {}
    timeout_s: Seconds = 10.0

    def action(self) -> HttpAction | None:
        if self.http is None:
            return None
        return HttpAction(http=self.http, body=self.body, headers=self.headers, timeout_s=self.timeout_s)


PORT_MACRO = "${PORT}"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


class BadTarget(ValueError):
    """Why a target cannot be used; the config check turns it into a ConfigError."""


def split_target(text: str, default_method: str) -> tuple[str, str]:
    """("METHOD", "target") of "POST /slots/0?action=erase" or "/health"."""
    words = text.split()
    if len(words) == 1:
        method, target = default_method, words[0]
    elif len(words) == 2 and words[0].upper() in METHODS:
        method, target = words[0].upper(), words[1]
    else:
        raise BadTarget(f'"[METHOD ]path" or "[METHOD ]http://127.0.0.1:PORT/path", got {text!r}')
    return method, target


def url_for(target: str, port: int | None) -> str:
    """The full URL of a target: a path goes to the component's own port on 127.0.0.1."""
    if target.startswith("/"):
        if port is None:
            raise BadTarget(f"a full loopback URL, or set the component's `port` (or use {PORT_MACRO}); got {target!r}")
        return f"http://127.0.0.1:{port}{target}"
    parts = urlsplit(target)
    if parts.scheme != "http" or not parts.hostname:
        raise BadTarget(f"a path starting with '/' or an http:// URL, got {target!r}")
    if parts.hostname not in LOOPBACK_HOSTS and f"[{parts.hostname}]" not in LOOPBACK_HOSTS:
        raise BadTarget(f"a loopback host (127.0.0.1, localhost, ::1), got {parts.hostname!r}")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise BadTarget(f"a port number in the URL, got {target!r}") from None
    return target


def as_list(unload: HttpAction | list[HttpAction] | None) -> list[HttpAction]:
    """`unload` as a list: one table or an array of them in the config."""
    return list(unload) if isinstance(unload, list) else [unload] if unload is not None else []


def mentions_port(command: list[str], env: dict[str, str], texts: list[str]) -> bool:
    """Whether the command, the environment or the tables' texts (`table_texts`) use `${PORT}`."""
    return any(PORT_MACRO in text for text in (*command, *env.values(), *texts))


def table_texts(
    ready: Readiness, alive: Liveness | None, trim: Trim | None, unloads: list[HttpAction], proxy: str | None
) -> list[str]:
    """Every string of these tables that `${PORT}` may appear in."""
    texts = [ready.http or ""]
    if alive is not None:
        texts += [alive.http or "", *(alive.exec or [])]
    if trim is not None:
        texts += [trim.http or "", trim.body or "", *trim.headers.values()]
    for action in unloads:
        texts += [action.http, action.body or "", *action.headers.values()]
    return texts + ([proxy] if proxy is not None else [])


def check_trim(
    file: str, at: str, trim: Trim | None, trim_signal: str | None, stop_signal: str, allowed: frozenset[str]
) -> Trim | None:
    """`trim_signal = "X"` is `trim = { signal = "X" }`: the one Trim both spellings mean."""
    if trim is not None and trim_signal is not None:
        raise ConfigError(file, f"{at}.trim_signal", "either trim_signal or trim, not both")
    if trim is None and trim_signal is not None:
        trim = Trim(signal=trim_signal)
    if trim is None:
        return None
    where = f"{at}.trim_signal" if trim_signal is not None else f"{at}.trim.signal"
    if (trim.signal is None) == (trim.http is None):
        raise ConfigError(file, f"{at}.trim", "exactly one of signal and http")
    if trim.signal is not None and (trim.signal not in allowed or trim.signal == stop_signal):
        names = ", ".join(sorted(allowed - {stop_signal}))
        expected = f"a signal that asks without ending or freezing the component, one of {names}; got {trim.signal!r}"
        raise ConfigError(file, where, expected)
    return trim


def check_probes(
    file: str,
    at: str,
    tables: tuple[Readiness, Liveness | None, Trim | None, HttpAction | list[HttpAction] | None],
    proxy: str | None,
    port: int | None,
) -> None:
    """Each HTTP target splits into a method and a URL on a loopback host, with the port it
    needs (`port`: the component's own, or any when it uses `${PORT}`, else None); probes
    are either http or exec; `status` goes with http."""
    ready, alive, trim, unload = tables
    if ready.status is not None and ready.http is None:
        raise ConfigError(file, f"{at}.ready.status", "set only with ready.http")
    if alive is not None:
        if (alive.http is None) == (alive.exec is None):
            raise ConfigError(file, f"{at}.alive", "exactly one of http and exec")
        if alive.exec is not None and (not alive.exec or not alive.exec[0]):
            raise ConfigError(file, f"{at}.alive.exec", "a command: a non-empty list whose first word is a program")
        if alive.status is not None and alive.http is None:
            raise ConfigError(file, f"{at}.alive.status", "set only with alive.http")
    unloads = as_list(unload)
    targets = [("ready.http", ready.http, "GET"), ("alive.http", alive.http if alive else None, "GET")]
    targets.append(("trim.http", trim.http if trim else None, "POST"))
    listed = isinstance(unload, list)
    targets += [(f"unload{f'[{i}]' if listed else ''}.http", a.http, "POST") for i, a in enumerate(unloads)]
    macro = str(port)
    for key, text, method in targets:
        if text is None:
            continue
        try:
            url_for(split_target(text.replace(PORT_MACRO, macro), method)[1], port)
        except BadTarget as exc:
            raise ConfigError(file, f"{at}.{key}", str(exc)) from None
    if proxy is not None:
        try:
            if proxy.startswith("/"):
                raise BadTarget(f"a full loopback URL (http://127.0.0.1:PORT), got {proxy!r}")
            url_for(proxy.replace(PORT_MACRO, macro), None)
        except BadTarget as exc:
            raise ConfigError(file, f"{at}.proxy", str(exc)) from None
