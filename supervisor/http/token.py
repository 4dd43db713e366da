"""The HTTP API's token: created at start in `<runtime_dir>/http.token`, mode 0600 from the
first byte, so only the supervisor's user can read it (security.py checks it)."""

from __future__ import annotations

import base64
import os
from pathlib import Path


def create_token(runtime_dir: str) -> str:
    # secrets.token_urlsafe(32), without importing secrets (and hashlib, hmac, random with it)
    token = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode("ascii")
    write_token(runtime_dir, token)
    return token


def write_token(runtime_dir: str, token: str) -> None:
    """At start, and again if the runtime dir was removed and made again (runtimewatch.py)."""
    path = Path(runtime_dir) / "http.token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
