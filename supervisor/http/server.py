"""Uvicorn inside the supervisor's task group.

Uvicorn's own signal handling is switched off (the supervisor alone owns SIGINT/SIGTERM);
a port that cannot be bound becomes a clear error instead of Uvicorn's `sys.exit`.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import anyio
import uvicorn

from ..core import Supervisor
from ..errors import IroncliwError
from .app import build_app
from .security import Guard, create_token


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(supervisor: Supervisor, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    cfg = supervisor.config.http
    token = create_token(supervisor.paths.runtime_dir)
    app = Guard(build_app(supervisor, token), token, cfg.port)
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_config=None, access_log=False, lifespan="off", server_header=False)
    server = _EmbeddedServer(config)
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            try:
                await server.serve()
            except SystemExit:
                raise IroncliwError(f"cannot serve HTTP on {cfg.host}:{cfg.port} (in use?); set [http] port or enabled = false") from None

        tg.start_soon(run)
        while not server.started:
            if server.should_exit:
                break
            await anyio.sleep(0.01)
        task_status.started()
        try:
            await anyio.sleep_forever()
        finally:
            server.should_exit = True
