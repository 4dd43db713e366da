"""The requests the supervisor sends to its own components: readiness and liveness probes,
HTTP trims and unloads; and exec probes. Every call is bounded by a timeout and ends in a
`CallResult` (never an exception), whose `detail` says what happened in words a
`last_exit` or a log line can carry.

httpx is imported on the first call, in a worker thread: a stack without HTTP probes never
pays for it, and the event loop never waits on the import. It runs on anyio, so a call is
cancelled with the task that made it.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from . import jsondecode
from .probespec import HttpAction, split_target, url_for

if TYPE_CHECKING:
    import httpx

DETAIL_BODY_CHARS = 200  # of an error answer, kept in the detail
MAX_ANSWER_BYTES = 64 * 1024  # of a body read; the rest is never read


class CallResult(msgspec.Struct, frozen=True):
    ok: bool
    detail: str  # "GET http://127.0.0.1:8080/health: 200", "...: timed out after 5 s"
    status: int | None = None


class HttpCaller:
    """One client (one connection pool) for one component's calls, closed with the run."""

    def __init__(self) -> None:
        self._client: httpx.AsyncClient | None = None

    async def call(self, text: str, port: int | None, default_method: str, **options: Any) -> CallResult:
        """Send "[METHOD ]target"; ok when the status is `status`, or any 2xx if unset.
        Options: body (str), headers (dict), status (int), timeout_s (float)."""
        method, target = split_target(text, default_method)
        url = url_for(target, port)
        timeout_s: float = options.get("timeout_s", 10.0)
        where = f"{method} {url}"
        content, headers = _body(options.get("body"), options.get("headers") or {})
        client = await self._open()
        try:
            with anyio.fail_after(timeout_s):
                async with client.stream(method, url, content=content, headers=headers) as answer:
                    status, text = answer.status_code, await _start_of(answer)
        except TimeoutError:
            return CallResult(False, f"{where}: timed out after {timeout_s:g} s")
        except Exception as exc:  # httpx.HTTPError and OS errors: the component did not answer
            return CallResult(False, f"{where}: {type(exc).__name__}: {exc}".rstrip(": "))
        want = options.get("status")
        ok = status == want if want is not None else 200 <= status < 300
        detail = f"{where}: {status}"
        if not ok and text:
            detail += f" {text[:DETAIL_BODY_CHARS]!r}"
        return CallResult(ok, detail, status)

    async def send(self, action: HttpAction, port: int | None) -> CallResult:
        """A trim or unload request."""
        return await self.call(
            action.http, port, "POST", body=action.body, headers=action.headers, timeout_s=action.timeout_s
        )

    async def _open(self) -> httpx.AsyncClient:
        if self._client is None:
            if "httpx" not in sys.modules:  # its first import takes ~0.1 s: not on the event loop
                await anyio.to_thread.run_sync(importlib.import_module, "httpx")
            import httpx

            # No proxy from the environment: every target is on loopback.
            self._client = httpx.AsyncClient(trust_env=False, follow_redirects=False)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            with anyio.CancelScope(shield=True):
                await client.aclose()


async def _start_of(answer: httpx.Response) -> str:
    """The first MAX_ANSWER_BYTES of the answer's body: a component that answers a probe with
    an endless or huge body costs the supervisor this much memory, not all of it."""
    kept = bytearray()
    async for chunk in answer.aiter_bytes():
        kept += chunk[: MAX_ANSWER_BYTES - len(kept)]
        if len(kept) >= MAX_ANSWER_BYTES:
            break
    return kept.decode(errors="replace")


def _body(body: str | None, headers: dict[str, str]) -> tuple[bytes | None, dict[str, str]]:
    """The body as bytes, with a content type: JSON when it parses as JSON (Ollama's and
    OpenAI's APIs take nothing else), text otherwise; a header the config sets wins."""
    if body is None:
        return None, headers
    try:
        jsondecode.decode(body)
        kind = "application/json"
    except msgspec.DecodeError:
        kind = "text/plain; charset=utf-8"
    if not any(name.lower() == "content-type" for name in headers):
        headers = {**headers, "Content-Type": kind}
    return body.encode(), headers


async def run_exec_probe(argv: list[str], timeout_s: float, cwd: str | None, env: dict[str, str]) -> CallResult:
    """Run a probe command in its own process group; ok on exit status 0. On timeout the
    whole group is killed and reaped: a probe never outlives its call."""
    where = " ".join(argv)
    try:
        process = await anyio.open_process(
            argv,
            cwd=cwd,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as exc:
        return CallResult(False, f"{where}: {exc.strerror or exc}")
    try:
        with anyio.fail_after(timeout_s):
            code = await process.wait()
    except TimeoutError:
        return CallResult(False, f"{where}: timed out after {timeout_s:g} s")
    finally:
        if process.returncode is None:
            _kill_group(process.pid)
            with anyio.CancelScope(shield=True):
                await process.wait()
    return CallResult(code == 0, f"{where}: exited {code}")


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)  # our own child, unreaped: its PID (the group's id) is still ours
    except ProcessLookupError:
        pass
