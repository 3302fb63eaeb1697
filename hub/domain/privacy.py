"""National identity numbers: validate where they enter, redact wherever text leaves.

Validation and redaction are deliberately different (reliability.md §4.8): redaction
catches *every* run of 11 digits, valid checksum or not, so typos, D-/H-/synthetic and
post-2032 numbers never reach a log line, a metric or an error text.
"""

from __future__ import annotations

import hashlib
import hmac
import re

FNR_SYSTEM = "urn:oid:2.16.578.1.12.4.1.4.1"  # fødselsnummer
DNR_SYSTEM = "urn:oid:2.16.578.1.12.4.1.4.2"  # D-nummer
FHN_SYSTEM = "urn:oid:2.16.578.1.12.4.1.4.3"  # felles hjelpenummer
# A local H-number (hjelpenummer) has no national namespace: it is unique only within the
# organisation that issued it (no-basis slice HNR: a type code and a required assigner).
# This marker is internal; FHIR output carries the type code and the assigner instead.
HNR_SYSTEM = "urn:tryggbro:hnr"
HNR_TYPE_SYSTEM = "urn:oid:2.16.578.1.12.4.1.1.8327"
PERSON_ID_SYSTEMS = {FNR_SYSTEM: "FNR", DNR_SYSTEM: "DNR", FHN_SYSTEM: "FHN", HNR_SYSTEM: "HNR"}

_W1 = (3, 7, 6, 1, 8, 9, 4, 5, 2, 1)
_W2 = (5, 4, 3, 2, 7, 6, 5, 4, 3, 2, 1)


def national_id_checksum_ok(value: str) -> bool:
    """Mod-11 check of an 11-digit fødselsnummer, D-number or FHN (both check digits)."""
    if len(value) != 11 or not (value.isascii() and value.isdigit()):
        return False
    digits = [int(c) for c in value]
    first = sum(w * d for w, d in zip(_W1, digits[:10], strict=True)) % 11
    second = sum(w * d for w, d in zip(_W2, digits, strict=True)) % 11
    return first == 0 and second == 0


def person_id_problem(system: str, value: str) -> str | None:
    """Why (system, value) is not an acceptable person identifier, or None if it is."""
    label = PERSON_ID_SYSTEMS.get(system)
    if label is None:
        known = ", ".join(f"{v} ({k})" for k, v in PERSON_ID_SYSTEMS.items())
        return f"identifier system {system!r} is not a national person id; expected {known}"
    if not national_id_checksum_ok(value):
        return f"{label} is not 11 digits with valid mod-11 check digits"
    if label == "DNR" and int(value[0]) < 4:
        return "DNR must have 4 added to the first digit of the birth day"
    if label == "HNR" and not 41 <= int(value[2:4]) <= 52:
        return "H-number must have 40 added to the birth month"
    return None


_ELEVEN_DIGITS = re.compile(r"(?<!\d)(\d{6})[ \-]?(\d{5})(?!\d)")


def redact(text: str, key: bytes) -> str:
    """Replace every 11-digit run (also `6+5` with a space or hyphen) by a keyed pseudonym.

    The pseudonym lets operators correlate lines without seeing the number.
    """

    def pseudonym(m: re.Match[str]) -> str:
        digits = (m.group(1) + m.group(2)).encode()
        return "fnr#" + hmac.new(key, digits, hashlib.sha256).hexdigest()[:10]

    return _ELEVEN_DIGITS.sub(pseudonym, text)


# Error texts are stored and shown without a per-installation key: the pseudonym only
# needs to be stable, not secret, since the number itself is gone.
_STORED_TEXT_KEY = b"tryggbro-stored-text"
MAX_STORED_ERROR = 1000


def safe_error_text(text: str) -> str:
    """Redacted, length-bounded text for `last_error` and `state_reason` columns."""
    cleaned = redact(text, _STORED_TEXT_KEY)
    if len(cleaned) > MAX_STORED_ERROR:
        cleaned = cleaned[: MAX_STORED_ERROR - 1] + "…"
    return cleaned
