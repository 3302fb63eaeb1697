"""Structured JSON logs without personal data.

One JSON object per line on stderr, for our own lines and for uvicorn, httpx and
SQLAlchemy alike. Every line is redacted after rendering of exceptions: 11-digit runs
become keyed pseudonyms, and values under keys that hold names or free text are dropped.
Tracebacks never include frame locals (structlog's default would log them, stack.md §2.7).
Bind `message_id` (and `delivery_id`) with `bound_message()` so every line about a
message carries its id.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
from collections.abc import Iterator, MutableMapping
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


class Redactor:
    """structlog processor: pseudonymise 11-digit runs and drop sensitive keys, deeply."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def __call__(self, _logger: Any, _method: str, event_dict: EventDict) -> EventDict:
        cleaned = self._clean(event_dict)
        assert isinstance(cleaned, dict)
        return cleaned

    def _clean(self, value: Any, depth: int = 0) -> Any:
        if depth > 20:
            return REDACTED
        if isinstance(value, str):
            return redact(value, self.key)
        if isinstance(value, MutableMapping | dict):
            return {
                k: (REDACTED if isinstance(k, str) and k.lower() in SENSITIVE_KEYS
                    else self._clean(v, depth + 1))
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self._clean(v, depth + 1) for v in value]
        if isinstance(value, int) and not isinstance(value, bool) and len(str(abs(value))) == 11:
            return redact(str(value), self.key)
        return value


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
            Redactor(key),
            structlog.processors.JSONRenderer(default=str),
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party chatter at INFO is noise on a 24/7 gateway; their warnings still show.
    for noisy in ("httpx", "httpcore", "sqlalchemy", "alembic", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
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
