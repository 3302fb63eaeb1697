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


def check(text: str) -> None:
    """Parse `text` (CR-separated) for its declared version; raise `Hl7Error` (AE) if
    hl7apy refuses it, with hl7apy's reason (names of structures, never values)."""
    try:
        parse_message(text, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False)
    except (InvalidName, ChildNotFound, ChildNotValid, MaxChildLimitReached) as exc:
        raise Hl7Error(f"schema: {_reason(exc)}", code="100", reject=False) from None
    except UnsupportedVersion as exc:
        raise Hl7Error(f"schema: {_reason(exc)}", code="203", location="MSH-12") from None
    except (HL7apyException, ValueError) as exc:
        raise Hl7Error(f"schema: {_reason(exc)}", code="102", reject=False) from None
    except Exception as exc:  # hl7apy raises bare KeyError/IndexError on odd input
        raise Hl7Error(f"schema: hl7apy could not parse the message "
                       f"({type(exc).__name__})", code="102", reject=False) from None


def _reason(exc: Exception) -> str:
    # hl7apy's messages name elements ("Invalid name for Segment: PRT"); keep them short.
    return " ".join(str(exc).split())[:120] or type(exc).__name__
