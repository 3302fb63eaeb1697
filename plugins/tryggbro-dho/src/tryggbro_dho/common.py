"""Shared by both adapters: exact JSON numbers and pydantic error text."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from hub.errors import InputError
from hub.jsonsafe import loads_strict

NOT_A_NUMBER = "not-a-number"  # data-absent-reason code


def loads_exact(body: bytes) -> Any:
    """The body with every JSON number as an exact Decimal (never a float).

    `loads_strict` first, for its checks (UTF-8, duplicate keys, NaN literals, depth);
    then the same text again with Decimal numbers.
    """
    loads_strict(body)
    text = body.decode("utf-8-sig")
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


def measured_value(value: Any, where: str) -> Decimal | None:
    """A finite Decimal, or None for "NaN" (how Java backends write a failed reading).
    Anything else is an InputError naming the field."""
    if isinstance(value, str) and value.strip().lower() == "nan":
        return None
    if isinstance(value, Decimal) and value.is_finite():
        return value
    raise InputError("malformed-payload", f"{where}: must be a number (or \"NaN\" when the "
                     "device could not measure)")
