"""The protocol parser and the adapter on their own, and the fixtures through the real
pipeline (hub.testing)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sos_access.schemas import AlarmRequest, AlarmRequestSchema, PingRequest, PingRequestSchema
from tryggbro_sosaccess.adapter import SosAccessAdapter
from tryggbro_sosaccess.protocol import (
    ProtocolError,
    Status,
    answer,
    dedup_key,
    parse_document,
    redact,
)
from tryggbro_sosaccess.source import SosAccessSettings, parse_credentials

from hub.contracts import AdapterSetup, IntakeRequest
from hub.domain.model import AlarmStatus, Category, StoredMessage
from hub.errors import InputError
from hub.mappings import MappingStore

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO / "fixtures" / "sos-access"
AUTH = "hxp4x9nnwxjatv8"
RECEIVED = datetime(2026, 11, 20, 20, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def adapter():
    return SosAccessAdapter(AdapterSetup("sos", {}, MappingStore.load(REPO / "mappings")))


def client_alarm(**fields) -> bytes:
    """An alarmrequest exactly as the real client (sos-access 0.0.8) writes it."""
    request = AlarmRequest(**{"event_code": "MA", "transmitter_type": "SV300",
                              "transmitter_code": "1234567", "authentication": AUTH,
                              "receiver": "42", "alarm_type": "AL", **fields})
    return AlarmRequestSchema().dump(request).encode("latin-1")


def message(body: bytes, key: str = "k") -> StoredMessage:
    return StoredMessage(1, "sos", key, "application/xml", body, RECEIVED, {}, 1)


def test_fixtures_replay_without_differences(tryggbro_replay):
    report = tryggbro_replay(FIXTURES)
    assert len(report.cases) == 13


def test_the_real_clients_alarm_parses_with_latin1_text(adapter):
    body = client_alarm(reference="r-1", detector_text="Knapp på håndleddet",
                        section_text="Soverom", transmitter_time=datetime(2026, 11, 20, 21, 5))
    assert "på".encode("latin-1") in body  # ISO-8859-1 on the wire, not UTF-8
    doc = parse_document(body)
    assert doc.get("detectortext") == "Knapp på håndleddet"
    assert dedup_key(doc, body) == "alarm:1234567:AL:r-1"
    (event,) = adapter.parse(message(body, "alarm:1234567:AL:r-1"))
    assert event.category is Category.SAFETY_ALARM
    assert (event.code, event.severity, event.kind) == ("3", "high", "alarm.MA")
    assert event.device.id == "1234567"
    assert event.device.location == "Soverom / Knapp på håndleddet"
    assert event.alarm.status is AlarmStatus.RAISED
    # A transmitter time without offset is local time (Europe/Oslo by default).
    assert event.alarm.raised_at.isoformat() == "2026-11-20T21:05:00+01:00"
    assert event.alarm.trigger_text == "Trygghetsalarm: medisinsk alarm"


def test_without_transmitter_time_the_alarm_is_raised_when_received(adapter):
    (event,) = adapter.parse(message(client_alarm(reference="r-2")))
    assert event.occurred_at == RECEIVED == event.alarm.raised_at


def test_unknown_event_code_is_a_safety_alarm_that_names_the_code(adapter):
    (event,) = adapter.parse(message(client_alarm(event_code="XY1", reference="r")))
    assert (event.category, event.code) == (Category.SAFETY_ALARM, "3")
    assert event.detail == "Trygghetsalarm (ukjent hendelseskode XY1)"


def test_ping_is_a_heartbeat(adapter):
    body = PingRequestSchema().dump(PingRequest(AUTH, "1234567", "SV300", "hb")) \
        .encode("latin-1")
    assert adapter.intake_key(IntakeRequest("sos", "application/xml", body, {})) == \
        "ping:1234567:hb"
    (event,) = adapter.parse(message(body, "ping:1234567:hb"))
    assert (event.category, event.kind, event.device.id) == \
        (Category.DEVICE_HEALTH, "heartbeat", "1234567")


def test_dedup_keys_without_a_reference():
    timed = client_alarm(transmitter_time=datetime(2026, 11, 20, 21, 5))
    key = dedup_key(parse_document(timed), timed)
    assert key is not None
    assert key.startswith("alarm:1234567:sha256:")
    assert key == dedup_key(parse_document(timed), redact(timed))  # stable once stored
    untimed = client_alarm()
    assert dedup_key(parse_document(untimed), untimed) is None  # the receiver makes one
    odd = client_alarm(reference="a b/ø")
    assert dedup_key(parse_document(odd), odd) == "alarm:1234567:AL:a%20b%2F%C3%B8"


@pytest.mark.parametrize(("body", "status", "text"), [
    (b"<alarmrequest/>", Status.XML_HEADER, "missing XML header"),
    (b'<?xml version="1.0" encoding="utf-8"?><alarmrequest/>', Status.XML_HEADER,
     "declares encoding 'utf-8'"),
    (b'<?xml version="1.0" encoding="iso-8859-1"?><alarm/>', Status.INVALID_XML,
     "not an SOS Access request"),
    (b'<?xml version="1.0" encoding="iso-8859-1"?><pingrequest>', Status.INVALID_XML,
     "not well-formed"),
    (b'<?xml version="1.0" encoding="iso-8859-1"?><!DOCTYPE p SYSTEM "file:///etc/passwd">'
     b"<pingrequest/>", Status.INVALID_XML, "document type declarations"),
    (b'<?xml version="1.0" encoding="iso-8859-1"?><pingrequest><reference>&ext;</reference>'
     b"</pingrequest>", Status.INVALID_XML, "undefined entity"),
    (b'<?xml version="1.0" encoding="iso-8859-1"?><pingrequest><transmittercode>1'
     b"</transmittercode></pingrequest>", Status.MANDATORY_MISSING,
     "<authentication>, <transmittertype>"),
    (b'<?xml version="1.0" encoding="iso-8859-1"?><pingrequest><authentication>a'
     b"</authentication><transmittercode>1</transmittercode><transmittertype>SV3"
     b"</transmittertype></pingrequest>", Status.WRONG_CONTENT,
     "<transmittertype> must be exactly 5 characters (got 3)"),
    (b'<?xml version="1.0" encoding="iso-8859-1"?><pingrequest><reference><b>x</b>'
     b"</reference></pingrequest>", Status.WRONG_CONTENT, "must hold text"),
])
def test_refused_documents_get_the_protocols_status(body, status, text):
    with pytest.raises(ProtocolError) as caught:
        parse_document(body)
    assert caught.value.status == status
    assert text in caught.value.info


def test_redaction_masks_the_password_and_keeps_the_rest():
    body = client_alarm(reference="r", detector_text="Knapp på badet")
    masked = redact(body)
    assert AUTH.encode() not in masked
    assert masked == body.replace(AUTH.encode(), b"*" * 15)
    cdata = b'<?xml version="1.0" encoding="iso-8859-1"?><pingrequest><authentication >' \
            b"<![CDATA[a<b&c]]></authentication><transmittercode>1</transmittercode>" \
            b"<transmittertype>SV300</transmittertype></pingrequest>"
    assert b"a<b&c" not in redact(cdata)
    assert parse_document(redact(cdata)).get("authentication") == "*" * len(b"<![CDATA[a<b&c]]>")


def test_size_limit():
    body = client_alarm(reference="r", additional_info="x" * 1500)
    with pytest.raises(ProtocolError) as caught:
        parse_document(body, max_bytes=1024)
    assert caught.value.status == Status.INVALID_LENGTH


def test_malformed_input_is_an_input_error_for_the_adapter(adapter):
    with pytest.raises(InputError, match="SOS Access status 2: not well-formed"):
        adapter.intake_key(IntakeRequest("sos", "application/xml",
                                         b'<?xml version="1.0" encoding="iso-8859-1"?><a', {}))


def test_answer_is_what_the_real_client_reads():
    from sos_access.schemas import AlarmResponseSchema

    data = answer("alarmrequest", Status.NOT_AUTHORIZED, "nei – æøå <&>", "r-1", RECEIVED)
    loaded = AlarmResponseSchema().load(data.decode("latin-1"))
    assert (loaded.status, loaded.info, loaded.reference) == (4, "nei – æøå <&>", "r-1")
    assert loaded.arrival_time == RECEIVED


def test_credentials_and_settings():
    assert parse_credentials(f"1234567:{AUTH}, 77:abc") == {"1234567": AUTH.encode(),
                                                            "77": b"abc"}
    with pytest.raises(ValueError, match="transmittercode:authentication"):
        parse_credentials("1234567")
    with pytest.raises(ValueError, match="go together"):
        SosAccessSettings(credentials_env="X", tls_cert_file=Path("c.pem"))
