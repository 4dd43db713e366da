"""Where the config and the control socket are, with the standard library alone: the CLI's
quick path (quickcli.py) finds the socket before anything heavier is imported, and
config.resolve_paths decides the same way for everything else."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_config_path(environ: Mapping[str, str]) -> str:
    """$IRONCLIW_CONFIG, else configs/ironcliw.toml here, else the checkout's."""
    if environ.get("IRONCLIW_CONFIG"):
        return environ["IRONCLIW_CONFIG"]
    local = os.path.join("configs", "ironcliw.toml")
    return local if os.path.exists(local) else os.path.join(REPO_ROOT, "configs", "ironcliw.toml")


def pick(environ: Mapping[str, str], env_key: str, configured: str | None, base_dir: str, default: str) -> str:
    """The environment over the file over the default. Made absolute (relative to the config's
    directory) and normalised as text, never resolved: a symlinked runtime dir must reach the
    check that refuses it, not be replaced by its target here."""
    value = environ.get(env_key) or configured
    return posixpath.normpath(posixpath.join(base_dir, value)) if value else default


def default_runtime_dir(environ: Mapping[str, str], uid: int) -> str:
    xdg_runtime = environ.get("XDG_RUNTIME_DIR")
    return posixpath.join(xdg_runtime, "ironcliw") if xdg_runtime else f"/tmp/ironcliw-{uid}"


def socket_path(environ: Mapping[str, str], base_dir: str, runtime_dir: str, configured: str | None = None) -> str:
    return pick(environ, "IRONCLIW_SOCKET", configured, base_dir, posixpath.join(runtime_dir, "control.sock"))
