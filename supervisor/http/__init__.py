"""The HTTP API (Starlette under an embedded Uvicorn). Imported only when `[http] enabled`,
so a supervisor without it does not carry the web stack's memory."""
