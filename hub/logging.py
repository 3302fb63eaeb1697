"""Structured JSON logs without personal data.

One JSON object per line on stderr, for our own lines and for uvicorn, httpx and
SQLAlchemy alike. Values under keys that hold names or free text are dropped, and the
rendered line (exceptions included) has every 11-digit run replaced by a keyed pseudonym.
Tracebacks never include frame locals (structlog's default would log them, stack.md §2.7).
Bind `message_id` (and `delivery_id`) with `bound_message()` so every line about a
message carries its id.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog
from structlog.contextvars import bind_contextvars, merge_contextvars, reset_contextvars
from structlog.processors import ExceptionRenderer
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, Processor

from hub.domain.privacy import redact

# Values under these keys are personal data or free text: never logged, whatever they are.
SENSITIVE_KEYS = frozenset({
    "name", "patient", "patient_name", "given", "family", "address", "text", "note",
    "notes", "body", "payload", "summary", "detail_text", "position", "latitude",
    "longitude", "birth_date", "birthdate", "telecom", "phone", "fnr", "ssn",
    "national_id", "identifier_value",
})
REDACTED = "[redacted]"


class DropSensitiveKeys:
    """structlog processor: values under keys that hold names or free text are dropped,
    at any depth, whatever they contain."""

    def __call__(self, _logger: Any, _method: str, event_dict: EventDict) -> EventDict:
        # Most lines hold flat, harmless values: leave them as they are.
        if SENSITIVE_KEYS.isdisjoint(k.lower() for k in event_dict) and not any(
                type(v) in _CONTAINERS for v in event_dict.values()):
            return event_dict
        cleaned = _drop(event_dict, 0)
        assert isinstance(cleaned, dict)
        return cleaned


_CONTAINERS = (dict, list, tuple)


def _drop(value: Any, depth: int) -> Any:
    if isinstance(value, dict):
        if depth > 20:
            return REDACTED
        return {k: (REDACTED if isinstance(k, str) and k.lower() in SENSITIVE_KEYS
                    else _drop(v, depth + 1) if isinstance(v, dict | list | tuple) else v)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_drop(v, depth + 1) if isinstance(v, dict | list | tuple) else v
                for v in value]
    return value


class RedactRendered:
    """Last step, on the rendered JSON line: every 11-digit run becomes a pseudonym.

    One regular-expression pass over the final text catches numbers wherever they sit:
    nested values, exception messages, integers, third-party log lines.
    """

    def __init__(self, key: bytes) -> None:
        self.key = key

    def __call__(self, _logger: Any, _method: str, line: str) -> str:
        return redact(line, self.key)


def configure_logging(level: str = "info", redaction_key: bytes | None = None,
                      stream: Any = None) -> None:
    """Set up structlog and the stdlib root logger to emit redacted JSON lines."""
    key = (redaction_key or os.environ.get("TRYGGBRO_LOG_KEY", "").encode()
           or secrets.token_bytes(16))
    shared: list[Processor] = [
        merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
            DropSensitiveKeys(),
            structlog.processors.JSONRenderer(default=str),
            RedactRendered(key),  # type: ignore[list-item]  # gets the rendered JSON string
        ],
    )
    # We never print the call site: skip the stack walk for it on every line
    # (the "Optimization" section of Python's logging HOWTO).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party chatter at INFO is noise on a 24/7 gateway; their warnings still show.
    for noisy in ("httpx", "httpcore", "sqlalchemy", "alembic", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        # filter_by_level first: a line below the level costs ~1 µs instead of running the
        # whole pipeline (~12 µs) only for stdlib logging to drop it at the end.
        processors=[structlog.stdlib.filter_by_level, *shared,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Each logger's pipeline is fixed on first use, for speed. A test suite that swaps
        # the pipeline later (`structlog.testing.capture_logs`) sets TRYGGBRO_LOG_CACHE=0,
        # or a logger some earlier test used would bypass the capture.
        cache_logger_on_first_use=os.environ.get("TRYGGBRO_LOG_CACHE", "1") != "0",
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger


@contextmanager
def bound_message(message_id: int, **extra: Any) -> Iterator[None]:
    """Carry the message id (and e.g. delivery_id) on every log line in this block."""
    tokens = bind_contextvars(message_id=message_id, **extra)
    try:
        yield
    finally:
        reset_contextvars(**tokens)
