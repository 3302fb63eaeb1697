"""HL7 v2 at the wire: decode a message by its MSH-18, read its MSH, build its ACK.

This is the hot path of an MLLP source: it runs before the message is stored, for every
message, so it reads only the MSH segment, by hand (python-hl7 and hl7apy parse the whole
message and cost 0.3–14 ms; this costs microseconds). Full parsing happens after the
commit, in the adapter.

Character sets (HL7 table 0211) are never guessed as ASCII: MSH-18 names the set; when it
is empty the source's configured default applies (UTF-8 unless configured otherwise), and
bytes that do not decode are refused with the offset, not replaced.
"""

from __future__ import annotations

import codecs
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

# HL7 table 0211 → Python codec, for the sets whose MSH segment is ASCII-compatible
# (so the MSH can be read before the set is known). UTF-16/32 and the multi-byte East
# Asian sets are refused with a clear reason.
CHARSETS: dict[str, str] = {
    "ASCII": "ascii",
    "8859/1": "iso-8859-1",
    "8859/2": "iso-8859-2",
    "8859/3": "iso-8859-3",
    "8859/4": "iso-8859-4",
    "8859/5": "iso-8859-5",
    "8859/6": "iso-8859-6",
    "8859/7": "iso-8859-7",
    "8859/8": "iso-8859-8",
    "8859/9": "iso-8859-9",
    "8859/15": "iso-8859-15",
    "UNICODE UTF-8": "utf-8",
}

# HL7 versions whose ACK structure we build (MSH-12).
VERSIONS = ("2.1", "2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1",
            "2.8", "2.8.1", "2.8.2")

MAX_DEDUP_KEY = 255  # journal.dedup_key


class Hl7Error(Exception):
    """A message the hub will not take, with what the ACK must say.

    `reject` is True for AR/CR (unsupported or unreadable: do not resend as is) and
    False for AE/CE (an error in the content). `code` is from HL7 table 0357 and
    `location` names the field (e.g. ``MSH-9``). The text never echoes message content.
    """

    def __init__(self, text: str, *, code: str, location: str | None = None,
                 reject: bool = True) -> None:
        super().__init__(text)
        self.text = text
        self.code = code
        self.location = location
        self.reject = reject


ERROR_NAMES = {
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "104": "Value too long",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "207": "Application internal error",
}


@dataclass(frozen=True, slots=True)
class Header:
    """The MSH of a message: what routing, dedup and the ACK need."""

    field_sep: str
    encoding: str  # MSH-2: component, repetition, escape, subcomponent (+ truncation)
    sending_application: str  # MSH-3 as sent (HD components joined by the component sep)
    sending_facility: str  # MSH-4
    receiving_application: str  # MSH-5
    receiving_facility: str  # MSH-6
    timestamp: str  # MSH-7
    message_code: str  # MSH-9.1, e.g. ADT
    trigger_event: str  # MSH-9.2, e.g. A01
    structure: str  # MSH-9.3, e.g. ADT_A01 (may be empty)
    control_id: str  # MSH-10
    processing_id: str  # MSH-11.1: P, T or D
    version: str  # MSH-12.1
    accept_ack_type: str  # MSH-15: AL, NE, ER, SU or empty
    application_ack_type: str  # MSH-16
    charset: str  # MSH-18 first repetition, as sent (empty: not stated)

    @property
    def component_sep(self) -> str:
        return self.encoding[0]

    @property
    def message_type(self) -> str:
        """``ADT^A01`` style, with the component separator the message uses."""
        return f"{self.message_code}^{self.trigger_event}"

    @property
    def enhanced_mode(self) -> bool:
        """Enhanced acknowledgement mode: MSH-15 or MSH-16 is valued (reliability.md §2.1)."""
        return bool(self.accept_ack_type or self.application_ack_type)

    @property
    def dedup_key(self) -> str:
        """MSH-3 | MSH-4 | MSH-10: the same sender's same message is the same message.

        Hashed when longer than the journal column, so a long HD never truncates into a
        collision.
        """
        key = f"{self.sending_application}|{self.sending_facility}|{self.control_id}"
        if len(key) > MAX_DEDUP_KEY:
            key = "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()
        return key


@dataclass(frozen=True, slots=True)
class Decoded:
    """A message as text (segments separated by CR) with its header and codec."""

    text: str
    header: Header
    codec: str


def decode(frame: bytes, *, default_charset: str = "utf-8") -> Decoded:
    """Decode one message by its MSH-18 and read its MSH. Raises `Hl7Error`.

    Segment separators CR, LF and CR LF are all accepted and normalised to CR (files and
    some senders use LF). A UTF-8 byte-order mark is dropped and means UTF-8.
    """
    data = frame
    bom = data.startswith(codecs.BOM_UTF8)
    if bom:
        data = data[len(codecs.BOM_UTF8):]
    data = data.lstrip(b"\r\n")
    if not data.startswith(b"MSH") or len(data) < 8:
        raise Hl7Error("the message does not start with an MSH segment", code="100",
                       location="MSH")
    end = _segment_end(data)
    if end < 8:
        raise Hl7Error("the MSH segment ends before MSH-2 declares the delimiters "
                       "(e.g. MSH|^~\\&|)", code="102", location="MSH-2")
    # MSH bytes of every supported set are ASCII-compatible: latin-1 reads them safely
    # enough to find MSH-18 before the message's own set is known.
    msh = data[:end].decode("iso-8859-1")
    stated = _field(msh, 18).split(msh[4:5] or "^")[0].split(msh[5:6] or "~")[0].strip()
    if stated:
        codec = CHARSETS.get(stated.upper())
        if codec is None:
            supported = ", ".join(CHARSETS)
            raise Hl7Error(f"MSH-18 character set {stated[:20]!r} is not supported "
                           f"(supported: {supported})", code="103", location="MSH-18")
        if bom and codec != "utf-8":
            raise Hl7Error(f"a UTF-8 byte-order mark contradicts MSH-18 {stated!r}",
                           code="103", location="MSH-18")
    else:
        codec = "utf-8" if bom else default_charset
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as exc:
        how = f"MSH-18 {stated!r}" if stated else (
            f"the source's default {codec} (MSH-18 is empty; send MSH-18, e.g. 8859/1 "
            "or UNICODE UTF-8)")
        raise Hl7Error(f"byte {exc.start} is not valid under {how}", code="103",
                       location="MSH-18") from None
    text = text.replace("\r\n", "\r").replace("\n", "\r").rstrip("\r")
    return Decoded(text, parse_header(text), codec)


def parse_header(text: str) -> Header:
    """Read the MSH of a decoded message. Raises `Hl7Error` naming the field."""
    end = text.find("\r")
    msh = text if end < 0 else text[:end]
    if not msh.startswith("MSH") or len(msh) < 8:
        raise Hl7Error("the message does not start with an MSH segment", code="100",
                       location="MSH")
    sep = msh[3]
    encoding = msh[4:].split(sep, 1)[0]
    if sep.isalnum() or len(encoding) < 4 or len(set(sep + encoding[:4])) != 5:
        raise Hl7Error("MSH-1/MSH-2 do not declare five distinct delimiters "
                       "(e.g. |^~\\&)", code="102", location="MSH-2")
    fields = msh.split(sep)  # fields[n - 1] is MSH-n for n >= 2
    comp, rep = encoding[0], encoding[1]

    def get(n: int) -> str:
        return fields[n - 1] if len(fields) >= n else ""

    def first(n: int) -> str:
        return get(n).split(rep)[0]

    msg_type = first(9).split(comp)
    code = msg_type[0].strip()
    trigger = msg_type[1].strip() if len(msg_type) > 1 else ""
    structure = msg_type[2].strip() if len(msg_type) > 2 else ""
    if not code:
        raise Hl7Error("MSH-9 message type is empty", code="101", location="MSH-9")
    if not trigger and code != "ACK":
        raise Hl7Error(f"MSH-9 names no trigger event for {code[:10]}", code="101",
                       location="MSH-9")
    control_id = get(10).strip()
    if not control_id:
        raise Hl7Error("MSH-10 message control id is empty: a resend could not be "
                       "recognised", code="101", location="MSH-10")
    processing = first(11).split(comp)[0].strip()
    version = first(12).split(comp)[0].strip()
    if not version:
        raise Hl7Error("MSH-12 version id is empty", code="101", location="MSH-12")
    if version not in VERSIONS:
        raise Hl7Error(f"MSH-12 version {version[:10]!r} is not an HL7 v2 version "
                       f"(2.1 … 2.8.2)", code="203", location="MSH-12")
    return Header(
        field_sep=sep, encoding=encoding,
        sending_application=get(3), sending_facility=get(4),
        receiving_application=get(5), receiving_facility=get(6),
        timestamp=first(7).split(comp)[0], message_code=code, trigger_event=trigger,
        structure=structure, control_id=control_id, processing_id=processing,
        version=version, accept_ack_type=get(15).strip().upper(),
        application_ack_type=get(16).strip().upper(),
        charset=first(18).strip(),
    )


def without_msh7(body: bytes) -> bytes:
    """The message bytes with MSH-7 (its creation time) blanked: a sender that rebuilds a
    message to resend it may stamp a new time, and that copy is still the same message."""
    data = body[len(codecs.BOM_UTF8):] if body.startswith(codecs.BOM_UTF8) else body
    if not data.startswith(b"MSH") or len(data) < 4:
        return body
    end = _segment_end(data)
    fields = data[:end].split(data[3:4])
    if len(fields) > 6:
        fields[6] = b""
    return data[3:4].join(fields) + data[end:]


def _segment_end(data: bytes) -> int:
    cuts = [i for i in (data.find(b"\r"), data.find(b"\n")) if i >= 0]
    return min(cuts) if cuts else len(data)


def _field(msh: str, n: int) -> str:
    fields = msh.split(msh[3])
    return fields[n - 1] if len(fields) >= n else ""


# ---------------------------------------------------------------------------------------
# Acknowledgements
# ---------------------------------------------------------------------------------------

ACCEPT = "accept"  # committed to durable storage
ERROR = "error"  # content error: AE / CE
REJECT = "reject"  # unsupported or unreadable: AR / CR

_CODES = {(False, ACCEPT): "AA", (False, ERROR): "AE", (False, REJECT): "AR",
          (True, ACCEPT): "CA", (True, ERROR): "CE", (True, REJECT): "CR"}


def ack_code(header: Header | None, outcome: str) -> str:
    """MSA-1 for `outcome`: original mode AA/AE/AR, enhanced mode CA/CE/CR."""
    return _CODES[(header is not None and header.enhanced_mode, outcome)]


def ack_wanted(header: Header, outcome: str) -> bool:
    """Whether the sender asked for this accept acknowledgement (MSH-15, table 0155).

    Original mode always answers. In enhanced mode AL (or empty) always, NE never, ER
    only on error or reject, SU only on success.
    """
    if not header.enhanced_mode:
        return True
    wanted = header.accept_ack_type or "AL"
    if wanted == "NE":
        return False
    if wanted == "ER":
        return outcome != ACCEPT
    if wanted == "SU":
        return outcome == ACCEPT
    return True


def escape(text: str, header: Header | None) -> str:
    """Escape delimiters (HL7 §2.7) so free text cannot break the ACK's structure."""
    sep = header.field_sep if header else "|"
    enc = header.encoding if header else "^~\\&"
    comp, rep, esc, sub = enc[0], enc[1], enc[2], enc[3]
    table = {esc: f"{esc}E{esc}", sep: f"{esc}F{esc}", comp: f"{esc}S{esc}",
             rep: f"{esc}R{esc}", sub: f"{esc}T{esc}"}
    cleaned = " ".join(text.split())  # no CR/LF inside a field
    return "".join(table.get(ch, ch) for ch in cleaned)


def build_ack(header: Header | None, code: str, *, at: datetime, text: str = "",
              error: Hl7Error | None = None) -> str:
    """The ACK message for `header` (CR-separated, not framed).

    Deterministic in its inputs: built from the message and its receive time, so the ACK
    stored with a message is the one any resend of it gets. With no readable header
    (the MSH itself is broken) a minimal v2.5 ACK is built with what is known.
    """
    sep = header.field_sep if header else "|"
    enc = header.encoding[:4] if header else "^~\\&"
    comp = enc[0]
    version = header.version if header else "2.5"
    trigger = header.trigger_event if header else ""
    if version in ("2.1", "2.2"):
        msg_type = "ACK"
    elif version == "2.3":
        msg_type = f"ACK{comp}{trigger}"
    else:
        msg_type = f"ACK{comp}{trigger}{comp}ACK"
    control = header.control_id if header else ""
    ack_id = "A" + hashlib.sha256(
        f"{header.dedup_key if header else ''}|{code}".encode()).hexdigest()[:19]
    stamp = at.astimezone(UTC).strftime("%Y%m%d%H%M%S") + "+0000"
    msh = [
        "MSH", enc,
        header.receiving_application if header else "TRYGGBRO",
        header.receiving_facility if header else "",
        header.sending_application if header else "",
        header.sending_facility if header else "",
        stamp, "", msg_type, ack_id,
        header.processing_id if header and header.processing_id else "P",
        version,
    ]
    if header and header.charset:
        msh += ["", "", "", "", "", header.charset]
    msa = ["MSA", code, escape(control, header)]
    if text and version not in ("2.7", "2.7.1", "2.8", "2.8.1", "2.8.2"):
        msa.append(escape(text[:80], header))  # MSA-3 (ST 80), withdrawn in v2.7: ERR-8
    segments = [sep.join(msh), sep.join(msa)]
    if error is not None:
        segments.append(_err_segment(header, version, error))
    return "\r".join(segments)


def _err_segment(header: Header | None, version: str, error: Hl7Error) -> str:
    sep = header.field_sep if header else "|"
    enc = header.encoding if header else "^~\\&"
    comp, sub = enc[0], enc[3]
    name = ERROR_NAMES.get(error.code, "")
    text = escape(error.text, header)
    seg, _, field = (error.location or "").partition("-")
    location = [seg, "1" if seg else "", field]
    if version in ("2.1", "2.2", "2.3", "2.3.1", "2.4"):
        # ERR-1 (CM_ELD): segment^sequence^field^code&text&table
        coded = sub.join([error.code, name, "HL70357"])
        return sep.join(["ERR", comp.join([*location, coded])])
    # ERR-2 location (ERL), ERR-3 code (CWE, table 0357), ERR-4 severity, ERR-8 user text
    return sep.join(["ERR", "", comp.join(location).rstrip(comp),
                     comp.join([error.code, name, "HL70357"]), "E", "", "", "", text])
