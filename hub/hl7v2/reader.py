"""Reading whole HL7 v2 messages with python-hl7: fields as plain lists, times, codes.

python-hl7 (`hl7`) is lenient and ~45× faster than hl7apy (stack.md §2.3, measured again
in docs/hl7v2.md); its containers nest irregularly (a field with one value is a list of
strings, a repeated field a list of repetitions), so every field is normalised here to
repetitions → components → subcomponents of unescaped text, and the rest of the package
reads plain lists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from decimal import Decimal, InvalidOperation

import hl7
import hl7.util
from hl7.containers import Repetition

from hub.hl7v2.wire import Hl7Error

Rep = list[list[str]]  # components → subcomponents

# python-hl7 logs a field it cannot unescape *with the field's value* (a name, an FNR, an
# address) and a traceback, then keeps the text as sent. Logs never carry personal data,
# so its logger is silenced; the text is read as sent either way.
hl7.util.logger.disabled = True


@dataclass(frozen=True, slots=True)
class Segment:
    """One segment: `fields[n]` is field n (MSH counted so that MSH-3 is fields[3])."""

    name: str
    index: int  # position in the message, from 0
    fields: list[list[Rep]]

    def reps(self, n: int) -> list[Rep]:
        """The non-empty repetitions of field n."""
        if n >= len(self.fields):
            return []
        return [r for r in self.fields[n] if any(any(s for s in c) for c in r)]

    def rep(self, n: int) -> Rep:
        found = self.reps(n)
        return found[0] if found else []

    def comp(self, n: int, c: int = 1, s: int = 1) -> str:
        """Component c, subcomponent s of the first repetition of field n ('' if absent)."""
        return component(self.rep(n), c, s)

    def where(self, n: int) -> str:
        return f"{self.name}-{n}"


def component(rep: Rep, c: int = 1, s: int = 1) -> str:
    if c > len(rep) or s > len(rep[c - 1]):
        return ""
    return rep[c - 1][s - 1].strip()


def parse(text: str) -> list[Segment]:
    """The segments of a decoded message (CR-separated text, as `wire.decode` gives it)."""
    try:
        message = hl7.parse(text)
    except Exception as exc:  # python-hl7 raises plain exceptions on broken structure
        raise Hl7Error(f"the message cannot be parsed ({type(exc).__name__})", code="100") \
            from None
    segments = []
    for i, seg in enumerate(message):
        name = str(seg[0][0]) if len(seg) and len(seg[0]) else ""
        fields: list[list[Rep]] = []
        for n in range(len(seg)):
            fields.append(_field(message, seg[n]))
        if name == "MSH":
            # python-hl7 counts MSH-1 (the separator) as field 1 and MSH-2 as field 2:
            # already aligned with the standard's numbering.
            pass
        segments.append(Segment(name, i, fields))
    return segments


def _field(message: hl7.Message, field: object) -> list[Rep]:
    if isinstance(field, str):
        return [[[message.unescape(field)]]]
    items = list(field)  # type: ignore[call-overload]
    if items and all(isinstance(x, Repetition) for x in items):
        return [_rep(message, r) for r in items]
    return [_rep(message, items)]


def _rep(message: hl7.Message, rep: object) -> Rep:
    out: Rep = []
    for comp in rep:  # type: ignore[attr-defined]
        if isinstance(comp, str):
            out.append([message.unescape(comp)])
        else:
            out.append([message.unescape(str(s)) for s in comp])
    return out


# --- times ------------------------------------------------------------------------------

_DTM = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,4})?([+-]\d{4})?$",
                  re.ASCII)


def parse_time(value: str, where: str, zone: tzinfo) -> datetime | None:
    """An HL7 DTM/TS as an aware datetime; a time without an offset is in `zone` (the
    source's configured time zone). Missing parts are the start of the period (a date
    is its midnight). Empty → None; malformed → Hl7Error naming the field."""
    value = value.strip()
    if not value:
        return None
    m = _DTM.match(value)
    if not m:
        raise Hl7Error(f"{where}: not an HL7 date/time (YYYY[MM[DD[HH[MM[SS]]]]][+/-ZZZZ])",
                       code="102", location=where, reject=False)
    year, month, day, hour, minute, second, frac, offset = m.groups()
    tz: tzinfo = zone
    if offset:
        sign = 1 if offset[0] == "+" else -1
        hours, minutes = int(offset[1:3]), int(offset[3:5])
        if hours > 14 or minutes > 59:  # UTC-12:00 … UTC+14:00 are the offsets in use
            raise Hl7Error(f"{where}: time zone offset is not ±HHMM within ±1400",
                           code="102", location=where, reject=False)
        tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
    try:
        return datetime(int(year), int(month or 1), int(day or 1), int(hour or 0),
                        int(minute or 0), int(second or 0),
                        round(float(frac) * 1_000_000) if frac else 0, tzinfo=tz)
    except ValueError:
        raise Hl7Error(f"{where}: not a valid calendar date/time", code="102", location=where,
                       reject=False) from None


def fhir_date(value: str, where: str) -> str | None:
    """The date part of an HL7 DT/DTM as a FHIR date at the precision sent."""
    value = value.strip()
    if not value:
        return None
    m = _DTM.match(value)
    if not m:
        raise Hl7Error(f"{where}: not an HL7 date", code="102", location=where, reject=False)
    year, month, day = m.group(1), m.group(2), m.group(3)
    try:
        datetime(int(year), int(month or 1), int(day or 1))
    except ValueError:
        raise Hl7Error(f"{where}: not a valid calendar date", code="102", location=where,
                       reject=False) from None
    return "-".join(p for p in (year, month, day) if p)


def parse_decimal(value: str, where: str) -> Decimal:
    try:
        number = Decimal(value.strip())
    except InvalidOperation:
        raise Hl7Error(f"{where}: not a number", code="102", location=where,
                       reject=False) from None
    if not number.is_finite():
        raise Hl7Error(f"{where}: not a finite number", code="102", location=where,
                       reject=False)
    return number
