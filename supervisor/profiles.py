"""A component's profiles: alternative ways to run it that need less memory (a smaller
context, a smaller quantization), in order of preference after its own table. Pure.

    [components.llm]                      # the preferred profile (None here)
    command = ["llama-server", "--model", "q8.gguf", "--ctx-size", "8192", "--port", "${PORT}"]
    estimated_mb = 9000
    [components.llm.profiles.small]       # then these, in the order written
    command = ["llama-server", "--model", "q4.gguf", "--ctx-size", "4096", "--port", "${PORT}"]
    estimated_mb = 5000

Each profile has its own run history, kept under `NAME@PROFILE`.
"""

from __future__ import annotations

import msgspec

from .config import ComponentSpec


def order(spec: ComponentSpec) -> list[str | None]:
    """Its profiles, most preferred first: None is the component's own table."""
    return [None, *spec.profiles]


def with_profile(spec: ComponentSpec, profile: str | None) -> ComponentSpec:
    """The component as it runs in `profile`: the profile's command, estimate and inputs
    where it sets them, its env on top of the component's."""
    if profile is None:
        return spec
    chosen = spec.profiles[profile]
    return msgspec.structs.replace(
        spec,
        command=chosen.command if chosen.command is not None else spec.command,
        env={**spec.env, **chosen.env},
        estimated_mb=chosen.estimated_mb if chosen.estimated_mb is not None else spec.estimated_mb,
        inputs=chosen.inputs if chosen.inputs is not None else spec.inputs,
    )


def smaller(spec: ComponentSpec, profile: str | None) -> str | None:
    """The next profile after `profile` (None when it runs in its last one)."""
    names = order(spec)
    at = names.index(profile) if profile in names else 0
    return names[at + 1] if at + 1 < len(names) else None


def history_key(name: str, profile: str | None) -> str:
    """Where a profile's runs are kept ('@' is never part of a component's name)."""
    return name if profile is None else f"{name}@{profile}"
