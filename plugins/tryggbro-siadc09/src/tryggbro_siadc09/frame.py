"""SIA DC-09 frames: CRC, parsing and the receiver's answers.

A frame on the wire (ANSI/SIA DC-09, as pysiaalarm reads it)::

    \\n CRC 0LLL "id" seq Rrcvr Lpref #acct [data] [x-data]... _HH:MM:SS,MM-DD-YYYY \\r

CRC (4 hex) and length (4 hex, the first always 0) both cover the bytes from the first
`"` up to and including the timestamp. The CRC is CRC-16/ARC (reflected polynomial
0xA001, initial value 0), the variant real panels and pysiaalarm use. Timestamps are UTC.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import UTC, datetime

LF = 0x0A
CR = 0x0D
ID_TOKENS = frozenset({"SIA-DCS", "ADM-CID", "NULL"})
TIMESTAMP_FORMAT = "%H:%M:%S,%m-%d-%Y"


def crc16_arc(data: bytes) -> int:
    """CRC-16/ARC: poly 0x8005 reflected (0xA001), init 0, no final xor. Check 0xBB3D."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


class Answer(enum.StrEnum):
    ACK = "ACK"  # stored durably (or a link test): the sender may forget the message
    NAK = "NAK"  # not taken, send again: transmission error or clock out of the window
    DUH = "DUH"  # not taken, not understood: a resend will not help


class FrameError(ValueError):
    """A frame the receiver does not take: `answer` says what the sender gets back."""

    def __init__(self, answer: Answer, reason: str, detail: str,
                 header: Header | None = None) -> None:
        super().__init__(detail)
        self.answer = answer
        self.reason = reason  # short slug for logs and counters
        self.detail = detail
        self.header = header  # what could be read of the frame, to echo in a DUH


@dataclass(frozen=True, slots=True)
class Header:
    """The routing part of a frame: enough to address an answer."""

    message_type: str
    sequence: str
    receiver: str  # without the R; "" when absent
    line: str  # without the L
    account: str  # without the #; "" when absent


@dataclass(frozen=True, slots=True)
class Frame:
    header: Header
    data: str  # between the first [ and its ]
    extended: tuple[str, ...]  # each [x-data] block, without brackets
    timestamp: datetime | None  # UTC
    encrypted: bool = False

    @property
    def message_type(self) -> str:
        return self.header.message_type

    @property
    def account(self) -> str:
        return self.header.account


_OUTER = re.compile(rb"^\n([0-9A-Fa-f]{4})([0-9A-Fa-f]{4})(.*)\r$", re.S)
_TOKEN = re.compile(r'^"(\*)?([^"]{1,16})"')
_HEADER = re.compile(
    r"^(?P<seq>\d{4})(?:R(?P<rcvr>[0-9A-Fa-f]{1,6}))?L(?P<line>[0-9A-Fa-f]{1,6})"
    r"(?:#(?P<acct>[0-9A-Fa-f]{3,16}))?\[")
_LOOSE = re.compile(r"^(?P<seq>\d{4})(?:R(?P<rcvr>[0-9A-Fa-f]{1,6}))?"
                    r"(?:L(?P<line>[0-9A-Fa-f]{1,6}))?(?:#(?P<acct>[0-9A-Fa-f]{3,16}))?")
_TAIL = re.compile(r"^((?:\[[^\[\]]*\])*)(?:_(\d\d:\d\d:\d\d,\d\d-\d\d-\d{4}))?$")


def parse_frame(raw: bytes) -> Frame:
    """Check and read one frame (LF … CR). Raises FrameError with the answer to send."""
    outer = _OUTER.match(raw)
    if outer is None:
        raise FrameError(Answer.NAK, "not-a-frame",
                         "not a DC-09 frame: expected LF, 4 hex CRC, 4 hex length, body, CR")
    crc_text, length_text, body = outer.groups()
    if int(length_text, 16) != len(body) or not length_text.startswith(b"0"):
        raise FrameError(Answer.NAK, "bad-length",
                         f"length field says {length_text.decode()} (hex) but the body is "
                         f"{len(body):04X} bytes")
    if int(crc_text, 16) != crc16_arc(body):
        raise FrameError(Answer.NAK, "bad-crc",
                         f"CRC {crc_text.decode().upper()} does not match the body "
                         f"(computed {crc16_arc(body):04X})")
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise FrameError(Answer.DUH, "not-ascii", "the body has non-ASCII bytes") from None
    token_m = _TOKEN.match(text)
    if token_m is None:
        raise FrameError(Answer.DUH, "no-id-token", 'the body does not start with a "id" token')
    encrypted, token = bool(token_m.group(1)), token_m.group(2)
    rest = text[token_m.end():]
    loose = _LOOSE.match(rest)
    partial = None
    if loose is not None:
        partial = Header(token, loose["seq"], loose["rcvr"] or "", loose["line"] or "0",
                         loose["acct"] or "")
    if token not in ID_TOKENS:
        raise FrameError(Answer.DUH, "unsupported-token",
                         f"id token {token!r} is not supported (SIA-DCS, ADM-CID, NULL)", partial)
    if encrypted:
        raise FrameError(Answer.DUH, "encrypted",
                         "encrypted (*) frames are not supported by this receiver", partial)
    head = _HEADER.match(rest)
    if head is None:
        raise FrameError(Answer.DUH, "bad-header",
                         "expected seq(4 digits), optional R<receiver>, L<line>, optional "
                         "#<account> (3-16 hex) and [ after the id token", partial)
    header = Header(token, head["seq"], head["rcvr"] or "", head["line"], head["acct"] or "")
    after = rest[head.end():]
    close = after.find("]")
    if close < 0:
        raise FrameError(Answer.DUH, "bad-data", "the data block has no closing ]", header)
    data, tail = after[:close], after[close + 1:]
    tail_m = _TAIL.match(tail)
    if tail_m is None:
        raise FrameError(Answer.DUH, "bad-tail",
                         "after the data block only [x-data] blocks and _HH:MM:SS,MM-DD-YYYY "
                         "may follow", header)
    extended = tuple(re.findall(r"\[([^\[\]]*)\]", tail_m.group(1)))
    timestamp = None
    if tail_m.group(2):
        try:
            timestamp = datetime.strptime(tail_m.group(2), TIMESTAMP_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            raise FrameError(Answer.DUH, "bad-timestamp",
                             f"timestamp {tail_m.group(2)} is not a valid date and time",
                             header) from None
    return Frame(header, data, extended, timestamp)


def format_timestamp(at: datetime) -> str:
    return "_" + at.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


def wrap(body: str) -> bytes:
    """Put LF, CRC, length and CR around a body."""
    raw = body.encode("ascii")
    return b"\n" + f"{crc16_arc(raw):04X}{len(raw):04X}".encode() + raw + b"\r"


def answer_frame(answer: Answer, header: Header | None, now: datetime) -> bytes:
    """The receiver's answer as a DC-09 frame of its own, with a correct CRC.

    ACK and DUH echo the sequence, receiver, line and account of the frame they answer.
    NAK is the fixed form `"NAK"0000R0L0A0[]` with the receiver's time, so that a panel
    whose clock drifted can correct it (DC-09 §5.5.1).
    """
    if answer is Answer.NAK or header is None:
        if answer is Answer.NAK:
            return wrap(f'"NAK"0000R0L0A0[]{format_timestamp(now)}')
        return wrap(f'"{answer}"0000R0L0A0[]')
    rcvr = f"R{header.receiver}" if header.receiver else "R0"
    acct = f"#{header.account}" if header.account else "A0"
    return wrap(f'"{answer}"{header.sequence}{rcvr}L{header.line}{acct}[]')


def dedup_key(frame: Frame, received_at: datetime | None = None) -> str:
    """account/sequence/timestamp: a retransmission repeats all three.

    Without a sender timestamp the receipt time stands in (so a resend is stored again
    rather than a later message with a recycled sequence number being swallowed).
    """
    at = frame.timestamp or received_at
    if at is None:
        raise FrameError(Answer.DUH, "no-timestamp",
                         "the frame has no timestamp; the dedup key needs one")
    stamp = at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{frame.account or '-'}/{frame.header.sequence}/{stamp}"
