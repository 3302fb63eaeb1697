"""Opt-in schema check of an inbound message with hl7apy (source setting
``validation = "schema"``).

hl7apy knows every segment and field of every HL7 v2 version; parsing a message for its
declared MSH-12 version fails on a segment, field or component the version does not
define (e.g. a PRT segment in a v2.5.1 ORU^R01). It costs milliseconds per message
(bench/RESULTS.md), which is why it is off by default and runs in a worker thread.

TOLERANT parsing is used, not STRICT plus `validate()`: strict validation refuses most
real messages for optional details (an EVN without EVN-2, a CE without components),
which would turn a useful guard into a wall.
"""

from __future__ import annotations

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.exceptions import (
    ChildNotFound,
    ChildNotValid,
    HL7apyException,
    InvalidName,
    MaxChildLimitReached,
    UnsupportedVersion,
)
from hl7apy.parser import parse_message

from hub.hl7v2.wire import Hl7Error


class SchemaError(Hl7Error):
    """hl7apy refused the message. `kind` (the hl7apy exception's class) is safe to log;
    the text, which may quote a value hl7apy could not read, goes only into the ACK."""

    def __init__(self, text: str, *, code: str, kind: str, location: str | None = None,
                 reject: bool = False) -> None:
        super().__init__(text, code=code, location=location, reject=reject)
        self.kind = kind


def check(text: str) -> None:
    """Parse `text` (CR-separated) for its declared version; raise `SchemaError` (AE, or
    AR for a version hl7apy does not know) with hl7apy's reason if it refuses it."""
    try:
        parse_message(text, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False)
    except (InvalidName, ChildNotFound, ChildNotValid, MaxChildLimitReached) as exc:
        raise SchemaError(f"schema: {_reason(exc)}", code="100",
                          kind=type(exc).__name__) from None
    except UnsupportedVersion as exc:
        raise SchemaError(f"schema: {_reason(exc)}", code="203", location="MSH-12",
                          kind=type(exc).__name__, reject=True) from None
    except (HL7apyException, ValueError) as exc:
        raise SchemaError(f"schema: {_reason(exc)}", code="102",
                          kind=type(exc).__name__) from None
    except Exception as exc:  # hl7apy raises bare KeyError/IndexError on odd input
        raise SchemaError(f"schema: hl7apy could not parse the message "
                          f"({type(exc).__name__})", code="102",
                          kind=type(exc).__name__) from None


def _reason(exc: Exception) -> str:
    # hl7apy's messages name elements ("Invalid name for Segment: PRT"); keep them short.
    return " ".join(str(exc).split())[:120] or type(exc).__name__
