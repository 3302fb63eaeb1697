"""One target per parser: `check(data)` feeds untrusted bytes to the parser and returns
normally when the parser either produced a result or refused the input with its documented
error. Anything else (another exception, a refusal without its code or location) escapes
as an exception: that is a bug the fuzzer reports.

The oracles:

- MLLP `FrameReader`: returns frames or raises `FramingError`; never loses bytes (every
  frame it returns is in the input in order) and the stream offset only grows.
- HL7 `wire.decode`: returns a header or raises `Hl7Error` with an HL7 table 0357 code and
  a location; the ACK for either outcome can be built.
- `hl7v2` adapter: `intake_key` returns a key or raises `Hl7Refusal` (table 0357 code and
  a location); `parse` of what intake accepted returns events or raises `Hl7Refusal`.
- Vendor adapters (JSON, SOS Access XML, SIA DC-09): `intake_key` returns a key or None or
  raises `InputError`; `parse` of what intake accepted returns events or raises
  `InputError`, or `MappingError` for a vendor code not yet in its mapping table.
- GP messaging XML (`read_message`): a result or `XmlRejected` with an AppRec code.
- SOS Access `DocumentReader`, fed in chunks: a document or `ProtocolError`.
- SIA DC-09 `parse_frame` + `parse_records`: records or `FrameError`.
- Registry CSV import (`parse_csv`): always a report, never an exception.

Seeds are the recorded replay inputs of `fixtures/*/cases`, so mutations start from
messages every parser accepts.
"""

from __future__ import annotations

import random
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from hub.contracts import AdapterSetup, IntakeRequest
from hub.domain.model import Event, StoredMessage
from hub.errors import InputError, MappingError
from hub.mappings import MappingStore

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "fixtures"
REGRESSIONS = REPO / "tests" / "corpus" / "regressions"
NOW = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)
MAX_FRAME = 64 * 1024


class OracleFailure(AssertionError):
    """The parser answered, but not as documented (e.g. a refusal without its code)."""


@dataclass(frozen=True)
class Target:
    name: str
    check: Callable[[bytes], None]
    seeds: Callable[[], list[bytes]]


# --- seeds ----------------------------------------------------------------------------


def _fixture_inputs(fixture: str) -> list[bytes]:
    cases = FIXTURES / fixture / "cases"
    return [p.read_bytes() for p in sorted(cases.glob("*/*"))
            if p.is_file() and p.name != "expected.json" and p.suffix != ".toml"]


def _regressions(name: str) -> list[bytes]:
    folder = REGRESSIONS / name
    return [p.read_bytes() for p in sorted(folder.glob("*")) if p.is_file()] \
        if folder.is_dir() else []


# --- MLLP framing ---------------------------------------------------------------------


def check_mllp(data: bytes) -> None:
    from hub.hl7v2.framing import FrameReader, FramingError

    # The first byte chooses how the stream is split, as a socket may split it.
    step = (data[0] % 17) + 1 if data else 1
    stream = data[1:]
    reader = FrameReader(max_frame_bytes=256)
    frames: list[bytes] = []
    last = 0
    try:
        for i in range(0, len(stream), step):
            frames += reader.feed(stream[i:i + step])
            if reader.offset < last:
                raise OracleFailure("FrameReader.offset went backwards")
            last = reader.offset
    except FramingError as exc:
        if not str(exc):
            raise OracleFailure("FramingError without a reason") from exc
        return
    error = reader.eof_error()
    if error is not None and not isinstance(error, FramingError):
        raise OracleFailure("eof_error is not a FramingError")
    at = 0
    for payload in frames:
        if len(payload) > 256:
            raise OracleFailure("a frame above max_frame_bytes was returned")
        found = stream.find(b"\x0b" + payload + b"\x1c\r", at)
        if found < 0:
            raise OracleFailure("a returned frame is not in the input stream in order")
        at = found + len(payload) + 3


def _mllp_seeds() -> list[bytes]:
    from hub.hl7v2.framing import frame

    messages = _fixture_inputs("hl7v2")[:3]
    small = [m[:200] for m in messages]
    return [b"\x05" + frame(small[0]), b"\x01" + b"".join(frame(m) for m in small),
            b"\x03" + frame(small[1]) + b"\r\n" + frame(small[2])]


# --- HL7 v2 ---------------------------------------------------------------------------


def _check_hl7_error(error: Any) -> None:
    from hub.hl7v2.wire import ERROR_NAMES

    if error.code not in ERROR_NAMES:
        raise OracleFailure(f"Hl7Error code {error.code!r} is not from HL7 table 0357")
    if not error.location:
        raise OracleFailure(f"Hl7Error {error.text!r} names no location")
    if not error.text:
        raise OracleFailure("Hl7Error without a text")


def check_hl7_wire(data: bytes) -> None:
    from hub.hl7v2.wire import Hl7Error, build_ack, decode, without_msh7

    without_msh7(data)
    try:
        decoded = decode(data)
    except Hl7Error as exc:
        _check_hl7_error(exc)
        build_ack(None, "AR", at=NOW, text=exc.text, error=exc)
        return
    build_ack(decoded.header, "AA", at=NOW)
    build_ack(decoded.header, "AE", at=NOW, text="x",
              error=Hl7Error("x", code="207", location="MSH"))


@cache
def _mappings() -> MappingStore:
    return MappingStore.load(REPO / "mappings")


@cache
def _hl7_adapter() -> Any:
    from hub.hl7v2.adapter import Hl7v2Adapter

    options = {"municipality": "0301", "organisation": "974778882",
               "legal_basis": "agreement", "legal_basis_ref": "SA-2024-017",
               "hospital_organisation": "993467049"}
    return Hl7v2Adapter(AdapterSetup("sykehus", options, _mappings()))


def check_hl7_adapter(data: bytes) -> None:
    from hub.hl7v2.adapter import Hl7Refusal

    adapter = _hl7_adapter()
    try:
        key = adapter.intake_key(IntakeRequest("sykehus", "application/hl7-v2", data, {}))
    except Hl7Refusal as exc:
        _check_hl7_error(exc.error)
        return
    if not key:
        raise OracleFailure("the hl7v2 adapter accepted a message without a dedup key")
    try:
        events = adapter.parse(StoredMessage(1, "sykehus", key, "application/hl7-v2", data,
                                             NOW, {}, 1))
    except Hl7Refusal as exc:
        _check_hl7_error(exc.error)
        return
    _check_events(events)


# --- vendor adapters ------------------------------------------------------------------


@dataclass(frozen=True)
class AdapterFixture:
    fixture: str
    source: str
    adapter: str
    content_type: str
    options: dict[str, Any]


VENDOR_FIXTURES = ("alarmplatform", "dho", "dispenser", "doorlock", "location", "nursecall",
                   "phd", "sia-dc09", "sos-access", "supervision")


@cache
def _adapter_fixture(fixture: str) -> AdapterFixture:
    data = tomllib.loads((FIXTURES / fixture / "fixture.toml").read_text(encoding="utf-8"))
    return AdapterFixture(fixture, data["source"], data["adapter"], data["content_type"],
                          dict(data.get("options", {})))


@cache
def _adapter(fixture: str) -> Any:
    from hub.plugins import PluginHost
    from hub.runtime import collect_registries

    host = PluginHost()
    host.load_entry_points()
    registries = collect_registries(host)
    f = _adapter_fixture(fixture)
    return registries.adapters[f.adapter](AdapterSetup(f.source, f.options, _mappings()))


def _check_events(events: Any) -> None:
    if not isinstance(events, list) or not all(isinstance(e, Event) for e in events):
        raise OracleFailure("parse did not return a list of Event")


def _check_input_error(exc: InputError) -> None:
    if not exc.slug or not exc.detail or not 400 <= exc.status < 500:
        raise OracleFailure(f"InputError without slug, detail or 4xx status: {exc!r}")


def check_adapter(fixture: str, data: bytes) -> None:
    f = _adapter_fixture(fixture)
    adapter = _adapter(fixture)
    try:
        key = adapter.intake_key(IntakeRequest(f.source, f.content_type, data, {}))
    except InputError as exc:
        _check_input_error(exc)
        return
    try:
        events = adapter.parse(StoredMessage(1, f.source, key or "k", f.content_type, data,
                                             NOW, {}, 1))
    except InputError as exc:
        _check_input_error(exc)
        return
    except MappingError as exc:
        # A vendor code missing from mappings/<vendor>.toml: the message is kept and
        # reprocessed once the table has it (docs/plugins.md "Raise, don't swallow").
        if "add " not in str(exc):
            raise OracleFailure(f"MappingError that does not say what to add: {exc}") from exc
        return
    _check_events(events)


def check_vendor(data: bytes) -> None:
    """Any vendor adapter: the first byte chooses which (atheris has one input)."""
    fixture = VENDOR_FIXTURES[data[0] % len(VENDOR_FIXTURES)] if data else VENDOR_FIXTURES[0]
    check_adapter(fixture, data[1:])


def _vendor_seeds(kinds: tuple[str, ...] = VENDOR_FIXTURES) -> list[bytes]:
    return [bytes([VENDOR_FIXTURES.index(f)]) + body
            for f in kinds for body in _fixture_inputs(f)]


# --- XML: GP messaging and SOS Access -------------------------------------------------


def check_gp_xml(data: bytes) -> None:
    from hub.messaging.xml import XmlRejected, read_message

    try:
        read_message(data)
    except XmlRejected as exc:
        if not exc.code or not exc.reason:
            raise OracleFailure("XmlRejected without an AppRec code or reason") from exc


def _gp_seeds() -> list[bytes]:
    from hub.messaging.model import (
        AppRecError,
        AppRecStatus,
        ConversationRef,
        Encoding,
        MessageKind,
        OutgoingMessage,
        Party,
        Patient,
    )
    from hub.messaging.xml import build_apprec, build_message

    msg_id = "6f2d6a1e-0000-4000-8000-000000000001"
    seeds = []
    variants: tuple[tuple[MessageKind, Encoding], ...] = (
        ("dialogmelding", "UTF-8"), ("plo", "ISO-8859-1"))
    for kind, encoding in variants:
        seeds.append(build_message(OutgoingMessage(
            kind=kind, msg_id=msg_id, conversation=ConversationRef(msg_id, msg_id),
            generated_at=NOW, sender=Party("Øvre Åsen kommune", "1001", "Hjemmetjenesten",
                                           "1003"),
            receiver=Party("Legekontoret Åsen", "2001", person_name="Kari Lege",
                           person_her_id="2002"),
            patient=Patient("01819012012"), subject="Varsel: høyt blodtrykk",
            text="Blodtrykk høyt.", contact_name="Sykepleier Ås",
            contact_phone="+4799999999", encoding=encoding)))
    for status in AppRecStatus:
        errors = [] if status is AppRecStatus.OK else [
            AppRecError("E35", "Pasient finnes ikke i mottakersystemet", "Ukjent")]
        seeds.append(build_apprec(apprec_id="a-1", generated_at=NOW, status=status,
                                  sender=Party("Legekontoret Åsen", "2001"),
                                  receiver=Party("Kommunen", "1001"), original_msg_id="m-1",
                                  original_msg_type="DIALOG_HELSEFAGLIG", errors=errors))
    return seeds


def check_sos_xml(data: bytes) -> None:
    from tryggbro_sosaccess.protocol import DocumentReader, ProtocolError

    step = (data[0] % 61) + 1 if data else 1
    body = data[1:]
    reader = DocumentReader(max_bytes=64 * 1024)
    try:
        for i in range(0, len(body), step):
            if reader.feed(body[i:i + step]):
                break
        else:
            reader.feed(b"", final=True)
        reader.document()
    except ProtocolError as exc:
        if not exc.info:
            raise OracleFailure("ProtocolError without info") from exc


def _sos_seeds() -> list[bytes]:
    return [bytes([n]) + body for n, body in enumerate(_fixture_inputs("sos-access"))]


# --- SIA DC-09 ------------------------------------------------------------------------


def check_sia(data: bytes) -> None:
    from tryggbro_siadc09.content import parse_records
    from tryggbro_siadc09.frame import FrameError, dedup_key, parse_frame

    try:
        frame = parse_frame(data)
        parse_records(frame)
        dedup_key(frame)
    except FrameError as exc:
        if not exc.reason or not exc.detail:
            raise OracleFailure("FrameError without reason or detail") from exc


# --- registry CSV import --------------------------------------------------------------

CSV_SEED = (
    "source;device_id;device_type;patient;municipality;legal_basis;legal_basis_ref;"
    "valid_from;valid_to;plans\n"
    "alarmplatform;TA-1;safety_alarm;01819012012;0301;consent;;2024-01-01T00:00:00Z;;\n"
    "dho;DHO-1;dho;12894513738;0301;vedtak;2026/1234;;2027-01-01T00:00:00Z;"
    "spo2:92..100@24h weight@7d\n"
    "alarmplatform;TA-1;safety_alarm;03875210059;4601;consent;;2023-01-01T00:00:00Z;"
    "2024-06-01T00:00:00Z;\n"
)


def check_csv(data: bytes) -> None:
    from hub.monitor import DeviceTypes
    from hub.registry import parse_csv

    try:
        text = data.decode("utf-8-sig")  # as the admin API and CLI read the file
    except UnicodeDecodeError:
        return
    report = parse_csv(text, device_types=DeviceTypes(_mappings()).names, now=NOW)
    if not all(isinstance(e, str) and e for e in report.errors):
        raise OracleFailure("a CSV import error without a text")


# --- the registry of targets ----------------------------------------------------------

TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("mllp", check_mllp, _mllp_seeds),
    Target("hl7_wire", check_hl7_wire, lambda: _fixture_inputs("hl7v2")),
    Target("hl7_adapter", check_hl7_adapter, lambda: _fixture_inputs("hl7v2")),
    Target("vendor_json", check_vendor, lambda: _vendor_seeds(
        ("alarmplatform", "dho", "dispenser", "doorlock", "location", "nursecall", "phd",
         "supervision"))),
    Target("vendor_xml", check_vendor, lambda: _vendor_seeds(("sos-access",))),
    Target("vendor_dc09", check_vendor, lambda: _vendor_seeds(("sia-dc09",))),
    Target("gp_xml", check_gp_xml, _gp_seeds),
    Target("sos_xml", check_sos_xml, _sos_seeds),
    Target("sia_frame", check_sia, lambda: _fixture_inputs("sia-dc09")),
    Target("registry_csv", check_csv, lambda: [CSV_SEED.encode()]),
)}


def seeds(name: str) -> list[bytes]:
    """Seeds of a target plus its saved regression inputs."""
    return TARGETS[name].seeds() + _regressions(name)


# --- a seeded mutator (plain-Python runs, and the Hypothesis strategies) --------------

TOKENS = (b"|", b"^", b"~", b"\\", b"&", b"\r", b"\n", b"\r\n", b"\x0b", b"\x1c\r", b"\x1c",
          b"MSH|^~\\&|", b"\rOBX|", b"\rPID|", b"\\X0A\\", b"\xef\xbb\xbf", b"\xff", b"\xc3",
          b"{", b"}", b"[", b"]", b'"', b":", b",", b"null", b"1e1000000", b"NaN", b"-0",
          b"<", b">", b"</", b"<!DOCTYPE x [<!ENTITY a \"b\">]>", b"&a;", b"&amp;", b"]]>",
          b"<![CDATA[", b"\x00", b";", b"\"SIA-DCS\"", b"#", b"[", b"_", b"9" * 30, b"")


def mutate(data: bytes, ops: list[tuple[int, int, bytes]]) -> bytes:
    """Apply mutations: (kind, position, bytes). Deterministic, so a failure replays."""
    buf = bytearray(data)
    for kind, pos, chunk in ops:
        at = pos % (len(buf) + 1)
        match kind % 6:
            case 0:  # overwrite
                buf[at:at + len(chunk)] = chunk
            case 1:  # insert
                buf[at:at] = chunk
            case 2:  # delete a range
                del buf[at:at + 1 + pos % 64]
            case 3:  # duplicate a range
                buf[at:at] = buf[at:at + 1 + pos % 256]
            case 4:  # truncate
                del buf[at:]
            case _:  # flip a byte
                if buf:
                    buf[at % len(buf)] ^= 1 << (pos % 8)
    return bytes(buf)


def random_inputs(name: str, rnd: random.Random) -> Iterator[bytes]:
    """Endless inputs for a target: mutated seeds, now and then pure random bytes."""
    pool = seeds(name)
    while True:
        if rnd.random() < 0.1 or not pool:
            yield rnd.randbytes(rnd.randrange(0, 512))
            continue
        ops = [(rnd.randrange(6), rnd.randrange(1 << 16),
                rnd.choice(TOKENS) if rnd.random() < 0.6 else rnd.randbytes(rnd.randrange(9)))
               for _ in range(rnd.randrange(1, 5))]
        yield mutate(rnd.choice(pool), ops)
