"""Ironcliw: a memory-aware process supervisor.

    from supervisor import M1MemoryManager, ComponentPriority, MemoryState

The names are loaded on first use, so the CLI's client commands stay quick to start.
"""

__all__ = ["M1MemoryManager", "ComponentPriority", "MemoryState", "MemorySnapshot"]


def __getattr__(name: str) -> object:  # no typing import: `python -m supervisor` starts here
    if name in ("M1MemoryManager", "ComponentPriority", "MemorySnapshot"):
        from . import api

        return getattr(api, name)
    if name == "MemoryState":
        from .model import MemoryState

        return MemoryState
    raise AttributeError(f"module 'supervisor' has no attribute {name!r}")
