"""JSON from outside (a request body, a file on disk), decoded with msgspec so that JSON
nested past the interpreter's recursion limit is a DecodeError like any other bad input:
msgspec guards its depth with that limit and raises RecursionError, which no caller expects
(a history file nested that deep stopped `up`; a request body got 500)."""

from __future__ import annotations

from typing import Any, TypeVar, overload

import msgspec

T = TypeVar("T")


@overload
def decode(raw: bytes | str) -> Any: ...


@overload
def decode(raw: bytes | str, type: type[T]) -> T: ...


def decode(raw: bytes | str, type: Any = Any) -> Any:
    try:
        return msgspec.json.decode(raw, type=type)
    except RecursionError:
        raise msgspec.DecodeError("JSON nested too deeply") from None
