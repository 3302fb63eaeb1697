"""SOS Access v4 documents: hardened parsing, field rules, answers and dedup keys.

One ISO-8859-1 XML document per TCP connection: `alarmrequest`, `pingrequest` or
`requestnewauthentication`; the receiver answers on the same socket with
`alarmresponse`, `pingresponse` or `requestnewauthenticationresponse`, each with a
`status` code. The field rules and status codes follow the protocol as the PyPI client
`sos-access` 0.0.8 implements it (its schemas and its status handling).

Parsing uses the standard library's expat directly: a document type declaration is
refused outright (so no entity can be declared, expanded or fetched), the size is
limited, and nesting deeper than `position/pos` is refused.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote
from xml.parsers import expat
from xml.sax.saxutils import escape

ENCODING = "iso-8859-1"
CONTENT_TYPE = "application/xml"
_LATIN1_NAMES = {"iso-8859-1", "iso8859-1", "iso_8859-1", "latin-1", "latin1", "l1"}


class Status(enum.IntEnum):
    """The `status` of an answer (the codes the protocol and the client know)."""

    OK = 0
    INVALID_LENGTH = 1  # the message is too long
    INVALID_XML = 2  # not well-formed XML, or not an SOS Access document
    WRONG_CONTENT = 3  # a field's content is wrong (too long, not a time, …)
    NOT_AUTHORIZED = 4  # wrong combination of transmitter, receiver and authentication
    NOT_TREATED = 5  # neither treated nor distributed: the transmitter fails over / resends
    MANDATORY_MISSING = 7  # a mandatory element is missing
    SERVICE_UNAVAILABLE = 9
    DUPLICATE = 10
    SYSTEM_ERROR = 98  # general receiver error
    OTHER_ERROR = 99
    XML_HEADER = 100  # invalid or missing XML header
    PING_TOO_OFTEN = 101


ALARM = "alarmrequest"
PING = "pingrequest"
NEW_AUTH = "requestnewauthentication"
RESPONSES: Mapping[str, str] = {
    ALARM: "alarmresponse",
    PING: "pingresponse",
    NEW_AUTH: "requestnewauthenticationresponse",
}
ALARM_TYPES = ("AL", "RE")  # alarm, restore


@dataclass(frozen=True, slots=True)
class Rule:
    min_len: int
    max_len: int
    required: bool = False


_IDENTITY = {
    "authentication": Rule(1, 64, True),  # 15 characters by the protocol; checked at login
    "reference": Rule(1, 50),
    "transmittercode": Rule(1, 15, True),
    "transmittertype": Rule(5, 5, True),
}
FIELDS: Mapping[str, Mapping[str, Rule]] = {
    ALARM: {
        **_IDENTITY,
        "receiver": Rule(1, 20, True),
        "transmittertime": Rule(1, 40),
        "alarmtype": Rule(2, 2),
        "transmitterarea": Rule(1, 5),
        "eventcode": Rule(1, 25, True),
        "section": Rule(1, 5),
        "sectiontext": Rule(1, 40),
        "detector": Rule(1, 5),
        "detectortext": Rule(1, 40),
        "additionalinfo": Rule(1, 2000),
        "pos": Rule(14, 16),  # inside <position>
    },
    PING: _IDENTITY,
    NEW_AUTH: _IDENTITY,
}


class ProtocolError(Exception):
    """A document that cannot be taken: the status and info to answer with."""

    def __init__(self, status: Status, info: str, kind: str | None = None,
                 reference: str | None = None) -> None:
        super().__init__(info)
        self.status = status
        self.info = info
        self.kind = kind
        self.reference = reference


@dataclass(frozen=True, slots=True)
class Document:
    """A parsed, checked request. `fields` holds non-empty element texts by name."""

    kind: str
    fields: Mapping[str, str] = field(default_factory=dict)

    def get(self, name: str) -> str | None:
        return self.fields.get(name)

    @property
    def reference(self) -> str | None:
        return self.fields.get("reference")

    @property
    def transmitter_code(self) -> str:
        return self.fields["transmittercode"]

    @property
    def transmitter_type(self) -> str:
        return self.fields["transmittertype"]

    @property
    def alarm_type(self) -> str:
        return self.fields.get("alarmtype", "AL")


class DocumentReader:
    """Reads one document from chunks as they arrive; `feed` says when it is complete."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self.complete = False
        self.kind: str | None = None
        self._encoding: str | None = None
        self._declared = False
        self._path: list[str] = []
        self._text: list[str] = []
        self._fields: dict[str, str] = {}
        self._parser = expat.ParserCreate()
        p = self._parser
        p.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        p.XmlDeclHandler = self._xml_decl
        p.StartDoctypeDeclHandler = self._refuse_dtd
        p.EntityDeclHandler = self._refuse_dtd
        p.ExternalEntityRefHandler = self._refuse_external
        p.StartElementHandler = self._start
        p.EndElementHandler = self._end
        p.CharacterDataHandler = self._chars

    def error(self, status: Status, info: str) -> ProtocolError:
        return ProtocolError(status, info, self.kind, self._fields.get("reference"))

    def feed(self, data: bytes, final: bool = False) -> bool:
        """Parse more bytes; True once the root element has ended."""
        self.size += len(data)
        if self.size > self.max_bytes:
            raise self.error(Status.INVALID_LENGTH,
                             f"the document exceeds {self.max_bytes} bytes")
        try:
            self._parser.Parse(data, final)
        except expat.ExpatError as exc:
            reason = expat.errors.messages.get(exc.code, str(exc)) if exc.code else str(exc)
            raise self.error(Status.INVALID_XML,
                             f"not well-formed XML at line {exc.lineno} column {exc.offset}: "
                             f"{reason}") from None
        except LookupError:  # expat asked Python for a codec it does not know
            raise self.error(Status.INVALID_XML,
                             "the XML declaration names an unknown encoding") from None
        if final and not self.complete:
            raise self.error(Status.INVALID_XML, "the document ended before its root element")
        return self.complete

    def document(self) -> Document:
        """The complete document, checked against the field rules of its kind."""
        if not self.complete or self.kind is None:
            raise self.error(Status.INVALID_XML, "the document is incomplete")
        return check(self.kind, self._fields)

    # expat handlers ------------------------------------------------------------------

    def _xml_decl(self, version: str | None, encoding: str | None, standalone: int) -> None:
        self._declared = True
        self._encoding = encoding

    def _refuse_dtd(self, *args: Any) -> None:
        raise self.error(Status.INVALID_XML,
                         "document type declarations and entities are not accepted")

    def _refuse_external(self, *args: Any) -> int:
        raise self.error(Status.INVALID_XML, "external entities are not accepted")

    def _start(self, name: str, attrs: Mapping[str, str]) -> None:
        depth = len(self._path)
        if depth == 0:
            if name in RESPONSES:
                self.kind = name
            if not self._declared:
                raise self.error(Status.XML_HEADER,
                                 "missing XML header: expected <?xml version=\"1.0\" "
                                 "encoding=\"iso-8859-1\"?>")
            if (self._encoding or "").lower() not in _LATIN1_NAMES:
                raise self.error(Status.XML_HEADER,
                                 f"the XML header declares encoding {self._encoding!r}; "
                                 "SOS Access documents are ISO-8859-1")
            if name not in RESPONSES:
                raise self.error(Status.INVALID_XML,
                                 f"<{name[:40]}> is not an SOS Access request (expected "
                                 f"{', '.join(f'<{k}>' for k in RESPONSES)})")
        elif depth == 2 and self._path[1] != "position":
            raise self.error(Status.WRONG_CONTENT,
                             f"<{self._path[1]}> must hold text, not elements")
        elif depth >= 3:
            raise self.error(Status.WRONG_CONTENT, "elements nest too deep")
        self._path.append(name)
        self._text = []

    def _chars(self, data: str) -> None:
        if len(self._path) >= 2:
            self._text.append(data)

    def _end(self, name: str) -> None:
        depth = len(self._path)
        self._path.pop()
        if depth == 1:
            self.complete = True
            return
        if depth == 2 and name == "position":
            return
        if depth == 3 and name != "pos":
            return  # an unknown element inside <position>: ignored
        text = "".join(self._text).strip()
        self._text = []
        if not text:
            return  # an empty element is an absent one (the client writes them so)
        if name in self._fields:
            raise self.error(Status.WRONG_CONTENT, f"<{name}> appears more than once")
        self._fields[name] = text


def check(kind: str, values: Mapping[str, str]) -> Document:
    """Apply the field rules of `kind`; unknown elements are kept but not interpreted."""
    reference = values.get("reference")
    rules = FIELDS[kind]
    missing = [n for n, r in rules.items() if r.required and n not in values]
    if missing:
        raise ProtocolError(Status.MANDATORY_MISSING,
                            f"mandatory element(s) missing: "
                            f"{', '.join(f'<{n}>' for n in missing)}", kind, reference)
    for name, rule in rules.items():
        value = values.get(name)
        if value is None:
            continue
        if not rule.min_len <= len(value) <= rule.max_len:
            size = (f"exactly {rule.min_len}" if rule.min_len == rule.max_len
                    else f"{rule.min_len}-{rule.max_len}")
            raise ProtocolError(Status.WRONG_CONTENT,
                                f"<{name}> must be {size} characters (got {len(value)})",
                                kind, reference)
    if kind == ALARM:
        if values.get("alarmtype", "AL") not in ALARM_TYPES:
            raise ProtocolError(Status.WRONG_CONTENT, "<alarmtype> must be AL or RE", kind,
                                reference)
        stamp = values.get("transmittertime")
        if stamp is not None and parse_time(stamp) is None:
            raise ProtocolError(Status.WRONG_CONTENT,
                                "<transmittertime> is not an ISO 8601 date and time", kind,
                                reference)
    return Document(kind, dict(values))


def parse_document(body: bytes, max_bytes: int = 1_048_576) -> Document:
    """Parse a whole stored or received document (raises ProtocolError)."""
    reader = DocumentReader(max_bytes)
    reader.feed(body, final=True)
    return reader.document()


def parse_time(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


_AUTH = re.compile(rb"(<authentication\s*>)(.*?)(</authentication\s*>)", re.DOTALL)


def redact(body: bytes) -> bytes:
    """The document with the authentication (a password) masked, all else byte-exact."""
    return _AUTH.sub(lambda m: m.group(1) + b"*" * len(m.group(2)) + m.group(3), body)


def key_part(value: str) -> str:
    return quote(value, safe="-_.~")


def dedup_key(doc: Document, body: bytes) -> str | None:
    """The sender's id for this document, or None when it carries none.

    An alarm or ping with a `<reference>` is keyed by transmitter and reference (an alarm
    also by its type, AL or RE); an alarm without one but with a `<transmittertime>` by
    the digest of its (redacted) bytes, so an identical resend is recognised. Otherwise
    the document has no key and the receiver gives it a unique one: a second press of the
    button must never be mistaken for a resend.
    """
    code = key_part(doc.transmitter_code)
    if doc.kind == ALARM:
        if doc.reference:
            return f"alarm:{code}:{doc.alarm_type}:{key_part(doc.reference)}"
        if doc.get("transmittertime"):
            return f"alarm:{code}:sha256:{hashlib.sha256(redact(body)).hexdigest()}"
        return None
    if doc.kind == PING and doc.reference:
        return f"ping:{code}:{key_part(doc.reference)}"
    return None


def answer(kind: str | None, status: Status, info: str, reference: str | None,
           arrival: datetime) -> bytes:
    """The response document for a request of `kind` (alarmresponse when unknown)."""
    envelope = RESPONSES.get(kind or ALARM, RESPONSES[ALARM])
    ref = f"<reference>{escape(reference)}</reference>" if reference else ""
    text = (f'<?xml version="1.0" encoding="{ENCODING}"?>\n<{envelope}>{ref}'
            f"<status>{int(status)}</status><info>{escape(info[:255])}</info>"
            f"<arrivaltime>{arrival.isoformat(timespec='seconds')}</arrivaltime></{envelope}>")
    return text.encode(ENCODING, errors="xmlcharrefreplace")
