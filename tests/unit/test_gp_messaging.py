"""GP messaging without I/O: builders, readers, hostile XML, XSD validation, the EDI 2.0
status policy and the alert text read from a Bundle."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hub.destinations.edi import message_id, outcome_for_post, read_alert
from hub.domain.model import OutcomeKind
from hub.errors import HubError
from hub.httpclient import HttpResponse
from hub.messaging.model import (
    DIALOG_11_NS,
    MSGHEAD_NS,
    PLO_HELSEOPPLYSNINGER_LEGE_NS,
    AppRec,
    AppRecError,
    AppRecStatus,
    ConversationRef,
    InboundMessage,
    OutgoingMessage,
    Party,
    Patient,
)
from hub.messaging.xml import SchemaSet, XmlRejected, build_apprec, build_message, read_message

XSD_DIR = Path(__file__).parent / "xsd"
NOW = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)
TEXT = "Blodtrykk høyt. Pårørende Åse Ødegård varslet. ÆØÅ æøå – ✓"


def message(**changes: object) -> OutgoingMessage:
    base = OutgoingMessage(
        kind="dialogmelding", msg_id="6f2d6a1e-0000-4000-8000-000000000001",
        conversation=ConversationRef("6f2d6a1e-0000-4000-8000-000000000001",
                                     "6f2d6a1e-0000-4000-8000-000000000001"),
        generated_at=NOW,
        sender=Party("Øvre Åsen kommune", "1001", "Hjemmetjenesten", "1003"),
        receiver=Party("Legekontoret Åsen", "2001", person_name="Kari Lege",
                       person_her_id="2002"),
        patient=Patient("01819012012"), subject="Varsel: høyt blodtrykk", text=TEXT,
        contact_name="Sykepleier Ås", contact_phone="+4799999999")
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("encoding", ["UTF-8", "ISO-8859-1"])
@pytest.mark.parametrize("kind", ["dialogmelding", "plo"])
def test_messages_round_trip_with_norwegian_letters(encoding, kind):
    data = build_message(message(encoding=encoding, kind=kind))
    assert data.startswith(f"<?xml version='1.0' encoding='{encoding}'?>".encode())
    if encoding == "ISO-8859-1":
        assert "Øvre Åsen".encode("iso-8859-1") in data  # written as bytes, not escaped
        assert b"&#10003;" in data  # ✓ is not in ISO-8859-1: a character reference
    read = read_message(data)
    assert isinstance(read, InboundMessage)
    assert read.msg_id == "6f2d6a1e-0000-4000-8000-000000000001"
    assert read.conversation == ConversationRef(read.msg_id, read.msg_id)
    assert read.sender_name == "Øvre Åsen kommune"
    assert (read.sender_her_id, read.receiver_her_id) == ("1003", "2002")
    assert (read.patient_id, read.patient_id_type) == ("01819012012", "FNR")
    assert read.texts == (TEXT,)
    assert read.subject == "Varsel: høyt blodtrykk"
    if kind == "dialogmelding":
        assert read.msg_type == "DIALOG_HELSEFAGLIG"
        assert read.content_namespace == DIALOG_11_NS
    else:
        assert read.msg_type == "HELSEOPPLYSNINGER_LEGE"
        assert read.content_namespace == PLO_HELSEOPPLYSNINGER_LEGE_NS


@pytest.mark.parametrize("version", ["1.0", "1.1"])
@pytest.mark.parametrize("status", list(AppRecStatus))
def test_apprecs_are_read_in_both_versions(status, version):
    errors = [] if status is AppRecStatus.OK else [
        AppRecError("E35", "Pasient finnes ikke i mottakersystemet", "Ukjent: Ødegård")]
    data = build_apprec(apprec_id="a-1", generated_at=NOW, status=status,
                        sender=Party("Legekontoret Åsen", "2001"),
                        receiver=Party("Kommunen", "1001"), original_msg_id="m-1",
                        original_msg_type="DIALOG_HELSEFAGLIG", errors=errors,
                        encoding="ISO-8859-1")
    if version == "1.0":
        data = data.replace(b"apprec/2012-02-15", b"apprec/2004-11-21")
    read = read_message(data)
    assert isinstance(read, AppRec)
    assert (read.version, read.status, read.original_msg_id) == (version, status, "m-1")
    assert (read.sender_her_id, read.receiver_her_id) == ("2001", "1001")
    assert read.errors == tuple(errors)
    if errors:
        assert read.error_codes() == "E35 Pasient finnes ikke i mottakersystemet"


def test_an_apprec_with_an_unknown_status_or_no_original_id_is_refused():
    data = build_apprec(apprec_id="a", generated_at=NOW, status=AppRecStatus.OK,
                        sender=Party("L", "2001"), receiver=Party("K", "1001"),
                        original_msg_id="m-1", original_msg_type="X")
    with pytest.raises(XmlRejected, match=r"Status/@V is '4'") as exc:
        read_message(data.replace(b'Status V="1"', b'Status V="4"'))
    assert exc.value.code == "T99"
    with pytest.raises(XmlRejected, match="no OriginalMsgId/Id"):
        read_message(data.replace(b"<Id>m-1</Id>", b""))


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">]><MsgHead>&lol2;</MsgHead>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE m [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><MsgHead>&xxe;</MsgHead>"""
PARAMETER_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE m [<!ENTITY % remote SYSTEM "http://127.0.0.1:9/evil.dtd"> %remote;]><MsgHead/>"""


@pytest.mark.parametrize(("data", "code", "reason"), [
    (BILLION_LAUGHS, "T01", "DTDs are refused"),
    (EXTERNAL_ENTITY, "T01", "DTDs are refused"),
    (PARAMETER_ENTITY, "T01", "DTDs are refused"),
    (b"<a>" * 70 + b"</a>" * 70, "T99", "nest deeper than 64"),
    (b"<a>" * 5000 + b"</a>" * 5000, "T99", "nest deeper than 64"),
    (b"<MsgHead><MsgInfo></MsgHead>", "T01", "not well-formed XML: Opening and ending tag"),
    (b"<MsgHead>&undefined;</MsgHead>", "T01", "Entity 'undefined' not defined"),
    (b"   ", "T01", "the document is empty"),
    (b"not xml at all", "T01", "not well-formed"),
    ('<?xml version="1.0" encoding="UTF-16"?><a/>'.encode("utf-16"), "T10", "UTF-16"),
    (b'<?xml version="1.0" encoding="KOI8-R"?><a/>', "T10", "KOI8-R is not accepted"),
    (b"<x/>" + b" " * (5 * 1024 * 1024), "T99", "the limit is 5242880"),
    (b'<Other xmlns="urn:x"/>', "T10", "unsupported document {urn:x}Other"),
    (f'<MsgHead xmlns="{MSGHEAD_NS}"><MsgInfo/></MsgHead>'.encode(), "T99", "MsgInfo/MsgId"),
])
def test_hostile_or_bad_xml_is_refused_with_a_clear_reason(data, code, reason):
    with pytest.raises(XmlRejected) as exc:
        read_message(data)
    assert exc.value.code == code
    assert reason in exc.value.reason


def test_our_messages_validate_against_schemas_from_xsd_dir():
    schemas = SchemaSet(XSD_DIR)
    assert schemas.namespaces == (DIALOG_11_NS, MSGHEAD_NS)
    report = schemas.validate(build_message(message(encoding="ISO-8859-1")))
    assert report.problems == ()
    assert report.validated == (MSGHEAD_NS, DIALOG_11_NS)
    assert report.missing == ()
    # PLO: the envelope is validated; no schema for the PLO namespace here, and it says so.
    plo = schemas.validate(build_message(message(kind="plo")))
    assert (plo.validated, plo.missing, plo.problems) == (
        (MSGHEAD_NS,), (PLO_HELSEOPPLYSNINGER_LEGE_NS,), ())
    # A message the schema does not allow is reported with the namespace and line.
    bad = schemas.validate(build_message(message(subject="x" * 300)))
    assert len(bad.problems) == 1
    assert bad.problems[0].startswith(f"{DIALOG_11_NS}: line ")
    assert "maxLength" in bad.problems[0] or "length" in bad.problems[0]


def test_a_broken_schema_directory_is_a_clear_error(tmp_path):
    (tmp_path / "broken.xsd").write_text("<xs:schema xmlns:xs='http://www.w3.org/2001/XMLSchema'")
    with pytest.raises(HubError, match=r"cannot load the XSDs: .*broken\.xsd"):
        SchemaSet(tmp_path)


BUNDLE = {"resourceType": "Bundle", "type": "transaction", "entry": [
    {"request": {"method": "PUT", "url": "Observation/o"},
     "resource": {"resourceType": "Observation", "id": "o"}},
    {"request": {"method": "PUT", "url": "DetectedIssue/d"},
     "resource": {"resourceType": "DetectedIssue", "id": "d", "severity": "moderate",
                  "code": {"coding": [{"code": "5.1", "display": "Oppsummerende varsel"}]},
                  "detail": "SpO2 89 % under nedre grense 92 %",
                  "identifiedDateTime": "2026-01-11T08:05:00+01:00",
                  "patient": {"identifier": {"system": "urn:oid:2.16.578.1.12.4.1.4.1",
                                             "value": "01819012012"}}}}]}


def test_the_alert_text_comes_from_the_bundles_detected_issue():
    alert = read_alert(json.dumps(BUNDLE).encode())
    assert alert.patient == Patient("01819012012", "FNR")
    assert alert.lines() == ["Varsel: 5.1 Oppsummerende varsel",
                             "Detaljer: SpO2 89 % under nedre grense 92 %",
                             "Alvorlighetsgrad: moderate",
                             "Tidspunkt: 2026-01-11T08:05:00+01:00"]
    with pytest.raises(HubError, match="no DetectedIssue: only alerts can go to a GP"):
        read_alert(json.dumps({**BUNDLE, "entry": BUNDLE["entry"][:1]}).encode())
    no_patient = json.loads(json.dumps(BUNDLE))
    del no_patient["entry"][1]["resource"]["patient"]
    with pytest.raises(HubError, match="names no patient by FNR, DNR or HNR"):
        read_alert(json.dumps(no_patient).encode())


def test_msg_id_is_new_per_event_and_stable_per_resend():
    assert message_id("gp", "bundle-1") == message_id("gp", "bundle-1")
    assert message_id("gp", "bundle-1") != message_id("gp", "bundle-2")
    assert message_id("gp", "bundle-1") != message_id("gp-other", "bundle-1")


@pytest.mark.parametrize(("status", "body", "kind", "detail"), [
    (201, b'"5d3c2f8e-1111-4222-8333-444455556666"', OutcomeKind.AWAITING,
     "AssignedId 5d3c2f8e-1111-4222-8333-444455556666"),
    (200, b'{"id": "abc"}', OutcomeKind.AWAITING, "AssignedId abc"),
    (503, b"", OutcomeKind.RETRY, "HTTP 503"),
    (429, b"", OutcomeKind.RETRY, "HTTP 429"),
    (401, b"", OutcomeKind.PAUSE, "credentials refused"),
    (400, b'{"title": "Receiver not found", "detail": "HER-id 9 unknown"}',
     OutcomeKind.REJECTED, "HTTP 400: Receiver not found; HER-id 9 unknown"),
])
def test_edi2_answers_map_to_outcomes(status, body, kind, detail):
    deadline = datetime(2026, 11, 25, tzinfo=UTC)
    outcome = outcome_for_post(HttpResponse(status, {"retry-after": "7"}, body), "m-1",
                               deadline, NOW)
    assert outcome.kind is kind
    assert detail in outcome.detail
    if kind is OutcomeKind.AWAITING:
        assert (outcome.correlation_id, outcome.deadline) == ("m-1", deadline)
    if status == 429:
        assert outcome.retry_after == 7


async def test_the_destination_refuses_a_message_its_xsds_do_not_allow():
    from hub.destinations.edi import Edi2Destination, Edi2Settings
    from hub.domain.model import OutboundDelivery

    def destination(subject: str) -> Edi2Destination:
        return Edi2Destination("gp", Edi2Settings(
            base_url="http://127.0.0.1:9", connect_timeout_seconds=0.5, subject=subject,
            sender={"name": "Kommunen", "her_id": "1001"},
            receiver={"name": "Legekontoret", "her_id": "2001"}, xsd_dir=XSD_DIR))

    delivery = OutboundDelivery(id=1, message_id=1, destination="gp", bundle_id="b-1",
                                payload=json.dumps(BUNDLE).encode(), priority=50, attempt=1)
    too_long = destination("x" * 300)
    valid = destination("Varsel")
    try:
        refused = await too_long.send(delivery)
        assert refused.kind is OutcomeKind.REJECTED
        assert "does not validate against the XSDs in xsd_dir" in refused.detail
        # A valid message gets as far as the wire (nothing listens on port 9: retry).
        sent = await valid.send(delivery)
        assert sent.kind is OutcomeKind.RETRY
        assert "no answer from EDI 2.0" in sent.detail
    finally:
        await too_long.aclose()
        await valid.aclose()


def _dialog_part(data: bytes) -> tuple[str, dict[str, object]]:
    """The Dialogmelding part (Foresporsel or Notat) as tag → text/attributes, read with
    lxml directly (not with the hub's reader)."""
    from lxml import etree

    root = etree.fromstring(data)
    (dialog,) = root.iter(f"{{{DIALOG_11_NS}}}Dialogmelding")
    (part,) = list(dialog)
    fields: dict[str, object] = {}
    for child in part:
        name = etree.QName(child).localname
        fields[name] = dict(child.attrib) if child.attrib else (child.text or "")
    return etree.QName(part).localname, fields


def test_the_dialogmelding_is_a_foresporsel_by_default_and_a_notat_on_request():
    data = build_message(message(question="Kan du vurdere pasienten?", question_type="7"))
    part, fields = _dialog_part(data)
    assert part == "Foresporsel"
    assert list(fields) == ["TypeForesp", "EmneSporsmal", "Sporsmal", "DokIdForesp",
                            "RollerRelatertNotat"]
    assert fields["TypeForesp"] == {"V": "7", "DN": "Time til undersøkelse/behandling",
                                    "S": "2.16.578.1.12.4.1.1.9152"}
    assert fields["EmneSporsmal"] == "Varsel: høyt blodtrykk"
    assert fields["Sporsmal"] == f"{TEXT}\n\nKan du vurdere pasienten?"
    assert fields["DokIdForesp"] == "6f2d6a1e-0000-4000-8000-000000000001"
    read = read_message(data)
    assert isinstance(read, InboundMessage)
    assert read.subject == "Varsel: høyt blodtrykk"
    assert read.texts == (f"{TEXT}\n\nKan du vurdere pasienten?",)

    part, fields = _dialog_part(build_message(message(dialog_part="notat")))
    assert part == "Notat"
    assert list(fields) == ["TemaKodet", "Tema", "TekstNotatInnhold", "DokIdNotat",
                            "RollerRelatertNotat"]
    assert fields["TemaKodet"] == {"V": "6", "DN": "Henvendelse om pasient",
                                   "S": "2.16.578.1.12.4.1.1.7322"}


@pytest.mark.parametrize("dialog_part", ["foresporsel", "notat"])
def test_both_dialog_parts_validate_against_our_xsd(dialog_part):
    report = SchemaSet(XSD_DIR).validate(build_message(message(
        dialog_part=dialog_part, question="Spørsmål?", encoding="ISO-8859-1")))
    assert report.problems == ()
    assert report.validated == (MSGHEAD_NS, DIALOG_11_NS)
    # An unknown 9152 code is refused by the schema.
    if dialog_part == "foresporsel":
        bad = SchemaSet(XSD_DIR).validate(build_message(message(question_type="42")))
        assert len(bad.problems) == 1
        assert "TypeForesp" in bad.problems[0]


def _bundle_with_patient(*names: dict[str, object], value: str = "01819012012") -> bytes:
    bundle = json.loads(json.dumps(BUNDLE))
    bundle["entry"].append({"request": {"method": "PUT", "url": "Patient/p"}, "resource": {
        "resourceType": "Patient", "id": "p",
        "identifier": [{"system": "urn:oid:2.16.578.1.12.4.1.4.1", "value": value}],
        "name": list(names)}})
    return json.dumps(bundle).encode()


def test_the_patients_name_comes_from_the_bundles_patient_when_there_is_one():
    alert = read_alert(_bundle_with_patient(
        {"use": "old", "family": "Gammel", "given": ["Navn"]},
        {"use": "official", "family": "Ødegård", "given": ["Åse", "Marie"]}))
    assert alert.patient == Patient("01819012012", "FNR", "Ødegård", "Åse Marie")
    # No Patient, a Patient without a name, or another person's Patient: no name.
    assert read_alert(json.dumps(BUNDLE).encode()).patient == Patient("01819012012", "FNR")
    assert read_alert(_bundle_with_patient()).patient.family_name is None
    other = read_alert(_bundle_with_patient({"family": "Annen"}, value="12894513738"))
    assert other.patient.family_name is None
    # The name is written in MsgHead Patient and validates.
    data = build_message(message(patient=alert.patient))
    from lxml import etree

    root = etree.fromstring(data)
    ns = {"m": MSGHEAD_NS}
    assert root.findtext("m:MsgInfo/m:Patient/m:FamilyName", namespaces=ns) == "Ødegård"
    assert root.findtext("m:MsgInfo/m:Patient/m:GivenName", namespaces=ns) == "Åse Marie"
    assert SchemaSet(XSD_DIR).validate(data).problems == ()


@pytest.mark.parametrize(("status", "body", "state", "action"), [
    (200, [{"receiverHerId": 2002, "transportDeliveryState": "Unconfirmed", "sent": True}],
     "Unconfirmed", "wait"),
    (200, [{"receiverHerId": 2002, "transportDeliveryState": "Acknowledged"}],
     "Acknowledged", "confirmed"),
    (200, {"statusList": [{"receiverHerId": 2002, "transportDeliveryState": "Rejected",
                           "apprecInfo": None}]}, "Rejected", "dead"),
    (200, [{"receiverHerId": 2002, "transportDeliveryState": "Abandoned"}],
     "Abandoned", "resend"),
    (200, [{"receiverHerId": 2002, "transportDeliveryState": "Unknown"}], "Unknown", "wait"),
    (200, [], "Unconfirmed", "wait"),
    # Another receiver's state does not decide ours.
    (200, [{"receiverHerId": 9, "transportDeliveryState": "Rejected"},
           {"receiverHerId": 2002, "transportDeliveryState": "Acknowledged"}],
     "Acknowledged", "confirmed"),
])
def test_edi2_transport_states_map_to_actions(status, body, state, action):
    from hub.destinations.edi import transport_check

    check = transport_check(HttpResponse(status, {}, json.dumps(body).encode()), "2002")
    assert check is not None
    assert (check.state, check.action.value) == (state, action)
    if action == "dead":
        assert "ebXML MessageError" in check.detail
        assert "2002" in check.detail


def test_an_unusable_status_answer_means_ask_again_later():
    from hub.destinations.edi import transport_check

    assert transport_check(HttpResponse(503, {}, b""), "2002") is None
    assert transport_check(HttpResponse(200, {}, b"not json"), "2002") is None
    assert transport_check(HttpResponse(200, {}, b'{"x": 1}'), "2002") is None
