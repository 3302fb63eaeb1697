"""The data block of a DC-09 frame: SIA-DCS and ADM-CID (Contact ID) event records.

SIA-DCS: `#acct|N` then `/`-separated blocks: modifiers (`ri<area>`, `ti<hh:mm>`,
`id<user>`, any lower-case two-letter prefix) and events (two upper-case letters, the
zone, optional `^text^`). A `ri` applies to the events after it. Example:
`#1234|Nri1/MA01` is a medical alarm from zone 01 in area 1.

ADM-CID: `#acct|Q EEE GG ZZZ`, e.g. `#1234|1100 01 015`: qualifier 1 new event,
3 restore, 6 still present; event code EEE; group/partition GG; zone ZZZ.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tryggbro_siadc09.frame import Answer, Frame, FrameError


@dataclass(frozen=True, slots=True)
class Record:
    """One event inside a frame, before mapping."""

    protocol: str  # "sia" | "cid" | "null"
    code: str  # SIA two-letter code, CID three-digit code, "" for NULL
    zone: str
    area: str  # SIA ri / CID group; "" when absent
    restore: bool = False  # CID qualifier 3 (SIA restores are codes of their own)
    qualifier: str = ""  # CID only


_ACCT = re.compile(r"^#([0-9A-Fa-f]{3,16})\|")
_SIA_EVENT = re.compile(r"^([A-Z]{2})([0-9A-Za-z]{0,6})(\^[^\^]*\^)?$")
# A modifier may run straight into an event without a slash: `ri1MA01`.
_SIA_MODIFIER = re.compile(
    r"^([a-z]{2})([0-9:.\-]*)(?:([A-Z]{2})([0-9A-Za-z]{0,6})(\^[^\^]*\^)?)?$")
_CID = re.compile(r"^([136])(\d{3}) ([0-9A-Fa-f]{2}) ([0-9A-Fa-f]{3})$")


def _strip_account(frame: Frame) -> str:
    data = frame.data
    m = _ACCT.match(data)
    if m is None:
        return data
    if frame.account and m.group(1).upper() != frame.account.upper():
        raise FrameError(Answer.DUH, "account-mismatch",
                         "the account in the data block differs from the frame's #account",
                         frame.header)
    return data[m.end():]


def parse_records(frame: Frame) -> list[Record]:
    """The events a frame carries. Raises FrameError (DUH) for data it cannot read."""
    if frame.message_type == "NULL":
        return [Record("null", "", "", "")]
    body = _strip_account(frame)
    if frame.message_type == "ADM-CID":
        m = _CID.match(body)
        if m is None:
            raise FrameError(Answer.DUH, "bad-cid-data",
                             "ADM-CID data must be 'Q EEE GG ZZZ' (e.g. 1100 01 015): "
                             "qualifier 1/3/6, event code, group, zone", frame.header)
        qualifier, code, group, zone = m.groups()
        return [Record("cid", code, zone, group, restore=qualifier == "3", qualifier=qualifier)]
    return _parse_sia(body, frame)


def _parse_sia(body: str, frame: Frame) -> list[Record]:
    if body[:1] in ("N", "O"):
        body = body[1:]
    records: list[Record] = []
    area = ""
    for number, block in enumerate(body.split("/") if body else [], 1):
        event = _SIA_EVENT.match(block)
        if event is not None:
            records.append(Record("sia", event.group(1), event.group(2), area))
            continue
        modifier = _SIA_MODIFIER.match(block)
        if modifier is None:
            raise FrameError(Answer.DUH, "bad-sia-data",
                             f"SIA-DCS block {number} is neither an event (two capital "
                             "letters and a zone) nor a modifier (ri, ti, id …)", frame.header)
        if modifier.group(1) == "ri":
            area = modifier.group(2)
        if modifier.group(3):
            records.append(Record("sia", modifier.group(3), modifier.group(4), area))
    if not records:
        raise FrameError(Answer.DUH, "no-sia-event",
                         "the SIA-DCS data block has no event code", frame.header)
    return records
