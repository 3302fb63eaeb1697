"""Helpers for adapter authors: the checks every JSON webhook adapter makes.

A vendor plugin imports these instead of writing them again, so every adapter refuses
bad input with the same problem type and the same wording, and never echoes a value
(field values are personal data: names, numbers, positions).
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from hub.errors import InputError
from hub.jsonsafe import loads_strict

Model = TypeVar("Model", bound=BaseModel)


def json_event_id(body: bytes, field: str = "eventId") -> str:
    """The sender's event id from a JSON object body: `intake_key` of most webhooks.

    Raises InputError (strict JSON: duplicate keys, NaN, depth) before anything is stored.
    """
    data = loads_strict(body)
    if not isinstance(data, dict):
        raise InputError("malformed-payload", "the body must be a JSON object")
    event_id = data.get(field)
    if not isinstance(event_id, str) or not event_id:
        raise InputError("malformed-payload", f"{field}: required, a non-empty string")
    return event_id


def validation_problems(exc: ValidationError) -> str:
    """Every problem of a pydantic error as `field.path: message`, values left out."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(body)'}: {e['msg']}"
        for e in exc.errors(include_url=False, include_input=False, include_context=False)
    )


def validate_payload(model: type[Model], data: Any) -> Model:
    """`model` from parsed JSON, or InputError naming every bad field (never its value)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InputError("malformed-payload", validation_problems(exc)) from None
