"""The HTTP API (Starlette, served by server.py on anyio and h11). Imported only when `[http] enabled`,
so a supervisor without it does not carry the web stack's memory."""
