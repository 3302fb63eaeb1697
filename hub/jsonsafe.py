"""Strict JSON for vendor input: every way a body can be wrong gets a specific error.

Rejects invalid UTF-8, duplicate keys (two values for one field: which is the alarm?),
NaN/Infinity and numbers that overflow to infinity, integers too long to convert, and
nesting deeper than a sane payload needs.
"""

from __future__ import annotations

import json
import math
from typing import Any

from hub.errors import InputError

MAX_DEPTH = 64


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InputError("malformed-json", f"duplicate key {key!r} in a JSON object")
        result[key] = value
    return result


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise InputError("malformed-json", f"number {text[:20]!r} is out of range")
    return value


def _constant(name: str) -> Any:
    raise InputError("malformed-json", f"{name} is not valid JSON")


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return deepest


def loads_strict(body: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """Parse a JSON body or raise InputError (400) saying exactly what is wrong."""
    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:]  # a UTF-8 byte-order mark is harmless; tolerate it
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError("malformed-json", f"the body is not UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_float=_finite,
                           parse_constant=_constant)
    except json.JSONDecodeError as exc:
        raise InputError("malformed-json",
                         f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
                         ) from None
    except RecursionError:
        raise InputError("malformed-json", f"JSON nested deeper than {max_depth} levels"
                         ) from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise InputError("malformed-json", f"invalid JSON number: {exc}") from None
    if _depth(value) > max_depth:
        raise InputError("malformed-json", f"JSON nested deeper than {max_depth} levels")
    return value
