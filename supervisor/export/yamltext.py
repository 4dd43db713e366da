"""Block-style YAML for manifests, with comments: what PyYAML cannot write (it drops
comments), and all the manifests need (mappings, lists, strings, numbers, booleans).
Strings are written as JSON strings, which YAML reads as its double-quoted scalars, so no
value can change type ("on", "1e3", "null" stay strings)."""

from __future__ import annotations

import json
from typing import Any


class Commented:
    """A value with comment lines written above its key (or above its list item)."""

    def __init__(self, value: Any, *comments: str) -> None:
        self.value, self.comments = value, comments


def dump(document: Any, header: tuple[str, ...] = ()) -> str:
    lines = [f"# {line}" for line in header]
    _value(document, 0, lines)
    return "\n".join(lines) + "\n"


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if value is None:
        return "null"
    return json.dumps(str(value), ensure_ascii=False)


def _comments(value: Any, indent: int, lines: list[str]) -> Any:
    if isinstance(value, Commented):
        lines.extend(" " * indent + f"# {c}" for c in value.comments)
        return value.value
    return value


def _value(value: Any, indent: int, lines: list[str]) -> None:
    pad = " " * indent
    if isinstance(value, dict):
        for key, item in value.items():
            item = _comments(item, indent, lines)
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{key}:")
                _value(item, indent + 2, lines)
            else:
                lines.append(f"{pad}{key}: {_empty_or_scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            item = _comments(item, indent, lines)
            if isinstance(item, dict) and item:
                first = len(lines)
                _value(item, indent + 2, lines)
                while lines[first].lstrip().startswith("#"):  # the dash goes on the first key, below comments
                    first += 1
                lines[first] = f"{pad}- " + lines[first][indent + 2 :]
            elif isinstance(item, list) and item:
                lines.append(f"{pad}-")
                _value(item, indent + 2, lines)
            else:
                lines.append(f"{pad}- {_empty_or_scalar(item)}")
    else:
        lines.append(pad + _scalar(value))


def _empty_or_scalar(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)
