"""Where a component answers over HTTP: `${PORT}` filled in for one run, its unload
requests and its API's URL. Pure: the port arrives as an argument (the runner picks a
free one at each start). The grammar of targets is probespec.py's."""

from __future__ import annotations

from typing import TypeVar

import msgspec

from .config import ComponentSpec
from .probespec import PORT_MACRO, HttpAction, Trim, as_list, mentions_port, table_texts

R = TypeVar("R", HttpAction, Trim)


def uses_port_macro(spec: ComponentSpec) -> bool:
    """Whether any of the strings the macro may appear in names `${PORT}`."""
    texts = table_texts(spec.ready, spec.alive, spec.trim, unload_actions(spec), spec.proxy)
    return mentions_port(spec.command, spec.env, texts)


def needs_port(spec: ComponentSpec) -> bool:
    """Whether each start needs a port: the macro is used and no fixed `port` is set."""
    return spec.port is None and uses_port_macro(spec)


def with_port(spec: ComponentSpec, port: int | None) -> ComponentSpec:
    """`spec` with `${PORT}` replaced by `port` everywhere it may appear (command, env,
    probes, trim, unload, proxy) and `port` set; unchanged when nothing uses the macro."""
    if port is None or not uses_port_macro(spec):
        return spec if port is None or spec.port == port else msgspec.structs.replace(spec, port=port)

    def sub(text: str) -> str:
        return text.replace(PORT_MACRO, str(port))

    def sub_request(request: R) -> R:  # an unload request, or a trim by HTTP: the same three fields
        body = sub(request.body) if request.body is not None else None
        headers = {k: sub(v) for k, v in request.headers.items()}
        http = sub(request.http) if request.http is not None else None  # a Trim's may be unset (a signal)
        return msgspec.structs.replace(request, http=http, body=body, headers=headers)

    ready = spec.ready
    if ready.http is not None:
        ready = msgspec.structs.replace(ready, http=sub(ready.http))
    alive = spec.alive
    if alive is not None:
        alive = msgspec.structs.replace(
            alive,
            http=sub(alive.http) if alive.http is not None else None,
            exec=[sub(word) for word in alive.exec] if alive.exec is not None else None,
        )
    trim = spec.trim
    if trim is not None and trim.http is not None:
        trim = sub_request(trim)
    return msgspec.structs.replace(
        spec,
        port=port,
        command=[sub(word) for word in spec.command],
        env={key: sub(value) for key, value in spec.env.items()},
        ready=ready,
        alive=alive,
        trim=trim,
        unload=[sub_request(a) for a in unload_actions(spec)] or None,
        proxy=sub(spec.proxy) if spec.proxy is not None else None,
    )


def unload_actions(spec: ComponentSpec) -> list[HttpAction]:
    """Its `unload` requests as a list (one table or an array of them in the config)."""
    return as_list(spec.unload)


def proxy_url(spec: ComponentSpec) -> str | None:
    """The base URL of its API: `proxy`, or its own port's root when it has one."""
    if spec.proxy is not None:
        return spec.proxy
    return f"http://127.0.0.1:{spec.port}" if spec.port is not None else None
