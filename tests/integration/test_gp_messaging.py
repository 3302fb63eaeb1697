"""GP messaging end to end: an alert goes to the GP over EDI 2.0 (the local peer in
tests/peers/edi2.py), the GP's AppRec settles the delivery, the GP's answer reaches the EHR
as a Communication, and a missing AppRec past its deadline raises an alert.

Real sockets on 127.0.0.1, real SQLite; the hub runs its real stages, sources and monitor.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from hub.domain.model import RawMessage
from hub.runtime import Hub
from tests.integration.helpers import PATIENTS, alarm_event, body, config_dict, enrol, make_config
from tests.integration.running import running, wait_until
from tests.peers.edi2 import Edi2Peer
from tests.peers.receiver import RecordingReceiver

MUNICIPALITY_HER, GP_OFFICE_HER, GP_HER = "1001", "2001", "2002"


@pytest.fixture
def edi():
    with Edi2Peer(known_her_ids={MUNICIPALITY_HER, GP_OFFICE_HER, GP_HER}) as peer:
        yield peer


@pytest.fixture
def ehr():
    with RecordingReceiver(status=200, body={"resourceType": "Bundle",
                                             "type": "transaction-response"}) as receiver:
        yield receiver


def build(tmp_path, edi, ehr, *, deadline_hours=72.0, encoding="UTF-8", message="dialogmelding",
          **gp_settings):
    data = config_dict(f"sqlite:///{tmp_path}/hub.db", {
        "gp": {"type": "edi2", "base_url": edi.url, "message": message, "encoding": encoding,
               "source_system": "tryggbro-test",
               "sender": {"name": "Øvre Åsen kommune", "her_id": MUNICIPALITY_HER,
                          "unit_name": "Hjemmetjenesten", "unit_her_id": MUNICIPALITY_HER},
               "receiver": {"name": "Legekontoret Åsen", "her_id": GP_OFFICE_HER,
                            "person_name": "Kari Lege", "person_her_id": GP_HER},
               "receipt_deadline_hours": deadline_hours, **gp_settings},
        "ehr": {"type": "fhir-rest", "base_url": f"{ehr.url}/fhir/R4"},
    }, routes=[
        {"name": "device-health", "match": {"categories": ["device_health"]},
         "action": "filter"},
        {"name": "gp-answers", "match": {"kinds": ["gp_answer", "receipt_overdue"]},
         "destinations": ["ehr"]},
        {"name": "alarms-to-gp", "match": {"categories": ["safety_alarm"]},
         "destinations": ["gp"]},
    ], http={"host": "127.0.0.1", "port": 0}, monitor={"interval_seconds": 0.2})
    data["sources"]["gpinbox"] = {
        "type": "edi2-inbox", "adapter": "msghead", "options": {"destination": "gp"},
        "base_url": edi.url, "receiver_her_ids": [MUNICIPALITY_HER], "poll_seconds": 0.1,
        "source_system": "tryggbro-test"}
    hub = Hub.build(make_config(tmp_path, data))
    enrol(hub, "TA-1", PATIENTS[0])
    return hub


async def send_alarm(hub, event_id, alarm_id):
    result = await hub.intake.submit(RawMessage(
        "alarmplatform", event_id, "application/json",
        body(alarm_event(event_id, alarm_id, "TA-1")), datetime.now(UTC)))
    return result.id


def gp_delivery(hub, message_id):
    trace = hub.repo.message_trace(message_id)
    found = [d for d in trace["deliveries"] if d["destination"] == "gp"]
    assert len(found) <= 1
    return found[0] if found else {"state": "not planned yet"}


def ehr_resources(ehr):
    found: list[dict[str, Any]] = []
    for request in ehr.requests():
        found.extend(e["resource"] for e in json.loads(request.body).get("entry", []))
    return found


async def test_alert_goes_to_the_gp_and_apprecs_settle_it(tmp_path, edi, ehr):
    hub = build(tmp_path, edi, ehr, encoding="ISO-8859-1")
    try:
        async with running(hub, serve_http=True):
            first = await send_alarm(hub, "ev-1", "A-1")
            (sent,) = await wait_until(lambda: edi.messages(to=GP_HER), what="message at peer")
            assert sent.source_system == "tryggbro-test"
            assert sent.msg_type == "DIALOG_HELSEFAGLIG"
            assert sent.dialog_part == "Foresporsel"  # a question, which the GP answers
            assert sent.document.startswith(b"<?xml version='1.0' encoding='ISO-8859-1'?>")
            assert "Øvre Åsen kommune".encode("iso-8859-1") in sent.document
            awaiting = await wait_until(
                lambda: (d := gp_delivery(hub, first))["state"] == "awaiting_receipt" and d,
                what="awaiting_receipt")
            assert awaiting["correlation_id"] == sent.msg_id
            assert awaiting["receipt_deadline"] > datetime.now(UTC)

            # AppRec 1 (OK) completes it; an AppRec gets no AppRec back, but is read.
            apprec_id = edi.gp_apprec(sent, "1")
            await wait_until(lambda: gp_delivery(hub, first)["state"] == "delivered",
                             what="delivered after AppRec OK")
            await wait_until(lambda: edi.is_read(apprec_id), what="AppRec marked read")
            assert edi._messages[apprec_id].apprecs == []
            assert hub.repo.status().deliveries["gp"] == {"delivered": 1}

            # AppRec 2 (Avvist) dead-letters the next one with the 8221 codes shown.
            second = await send_alarm(hub, "ev-2", "A-2")
            msgs = await wait_until(lambda: len(m := edi.messages(to=GP_HER)) == 2 and m,
                                    what="second message")
            edi.gp_apprec(msgs[1], "2", [("E35", "Pasient finnes ikke i mottakersystemet")],
                          version="1.0")
            dead = await wait_until(lambda: (d := gp_delivery(hub, second))["state"] == "dead"
                                    and d, what="dead letter after AppRec 2")
            assert "E35" in dead["last_error"]
            assert "rejected by the receiver" in dead["last_error"]
            assert dead["escalated"] is True
            assert dead["attempt_log"][-1]["outcome"] == "receipt:rejected"

            # AppRec 3: delivered, errors kept visible.
            third = await send_alarm(hub, "ev-3", "A-3")
            msgs = await wait_until(lambda: len(m := edi.messages(to=GP_HER)) == 3 and m,
                                    what="third message")
            edi.gp_apprec(msgs[2], "3", [("E36", "Pasientopplysninger mangelfulle")])
            partial = await wait_until(
                lambda: (d := gp_delivery(hub, third))["state"] == "delivered" and d,
                what="delivered after AppRec 3")
            assert "E36" in partial["last_error"]
    finally:
        hub.close()


async def test_gp_answer_reaches_the_ehr_as_a_communication(tmp_path, edi, ehr):
    hub = build(tmp_path, edi, ehr)
    try:
        async with running(hub, serve_http=True):
            first = await send_alarm(hub, "ev-10", "A-10")
            (sent,) = await wait_until(lambda: edi.messages(to=GP_HER), what="message at peer")
            await wait_until(lambda: gp_delivery(hub, first)["state"] == "awaiting_receipt",
                             what="awaiting")
            reply_id = edi.gp_reply(sent, "Pasienten får time på fredag. Hilsen Åse Ødegård",
                                    subject="Svar på henvendelse")
            # The hub receipts the answer (AppRec OK) and marks it read.
            apprec = await asyncio.to_thread(edi.wait_for_apprec, reply_id)
            assert apprec == {"appRecStatus": "Ok", "appRecErrorList": []}
            await wait_until(lambda: edi.is_read(reply_id), what="answer marked read")
            comms = await wait_until(
                lambda: [r for r in ehr_resources(ehr) if r["resourceType"] == "Communication"],
                what="Communication at the EHR")
            (comm,) = comms
            assert comm["payload"] == [
                {"contentString": "Pasienten får time på fredag. Hilsen Åse Ødegård"}]
            assert comm["topic"] == {"text": "Svar på henvendelse"}
            assert comm["subject"]["identifier"]["value"] == PATIENTS[0]
            assert comm["sender"]["identifier"]["value"] == GP_HER
            assert comm["about"][0]["reference"].startswith("DetectedIssue/")
            # An answer also shows the GP got the message.
            await wait_until(lambda: gp_delivery(hub, first)["state"] == "delivered",
                             what="answered delivery settled")
    finally:
        hub.close()


async def test_missing_apprec_past_its_deadline_raises_an_alert(tmp_path, edi, ehr):
    hub = build(tmp_path, edi, ehr, deadline_hours=1 / 3600, message="plo")
    try:
        async with running(hub, serve_http=True):
            first = await send_alarm(hub, "ev-20", "A-20")
            (sent,) = await wait_until(lambda: edi.messages(to=GP_HER), what="message at peer")
            assert sent.msg_type == "HELSEOPPLYSNINGER_LEGE"
            issues = await wait_until(
                lambda: [r for r in ehr_resources(ehr) if r["resourceType"] == "DetectedIssue"],
                timeout=20, what="overdue alert at the EHR")
            (issue,) = issues
            assert "Ingen kvittering" in issue["detail"]
            assert sent.msg_id in issue["detail"]
            assert issue["code"]["coding"][0]["code"] == "3"
            assert hub.repo.status().receipts_overdue == {"gp": 1}
            assert gp_delivery(hub, first)["state"] == "awaiting_receipt"
            # Alerted once, not every monitor round.
            messages = hub.repo.search_messages(source="tryggbro-monitor")
            assert len(messages) == 1
    finally:
        hub.close()


async def test_transport_failures_retry_and_4xx_rejects(tmp_path, edi, ehr):
    hub = build(tmp_path, edi, ehr)
    try:
        edi.fail_next(503)
        edi.fail_next(429, retry_after="0")
        async with running(hub, serve_http=True):
            first = await send_alarm(hub, "ev-30", "A-30")
            await wait_until(lambda: gp_delivery(hub, first)["state"] == "awaiting_receipt",
                             what="awaiting after two transport failures")
            outcomes = [a["outcome"] for a in gp_delivery(hub, first)["attempt_log"]]
            assert outcomes == ["retry", "retry", "awaiting"]
            assert len(edi.messages()) == 1
            edi.known.discard(GP_HER)  # the GP left Adresseregisteret
            second = await send_alarm(hub, "ev-31", "A-31")
            dead = await wait_until(lambda: (d := gp_delivery(hub, second))["state"] == "dead"
                                    and d, what="rejected")
            assert "Receiver not found" in dead["last_error"]
            assert GP_HER in dead["last_error"]
    finally:
        hub.close()


async def test_a_hostile_inbound_document_is_journaled_rejected_and_loses_nothing(
        tmp_path, edi, ehr):
    hub = build(tmp_path, edi, ehr)
    bomb = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
            b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;">]><MsgHead>&lol2;</MsgHead>')
    try:
        async with running(hub, serve_http=True):
            bad = edi.deliver(GP_OFFICE_HER, MUNICIPALITY_HER, bomb)
            apprec = await asyncio.to_thread(edi.wait_for_apprec, bad)
            assert apprec["appRecStatus"] == "Rejected"
            assert apprec["appRecErrorList"][0]["errorCode"] == "T01"
            held = await wait_until(
                lambda: [m for m in hub.repo.search_messages(source="gpinbox")
                         if m["state"] == "failed"], what="held message")
            assert "DOCTYPE" in held[0]["reason"]
            await wait_until(lambda: edi.is_read(bad), what="marked read after the AppRec")
    finally:
        hub.close()


async def test_the_transport_state_is_polled_until_acknowledged_and_shown(tmp_path, edi, ehr):
    hub = build(tmp_path, edi, ehr, transport_check_seconds=0.1, dialog="notat")
    edi.next_transport_state = "Unconfirmed"
    try:
        async with running(hub, serve_http=True):
            first = await send_alarm(hub, "ev-40", "A-40")
            (sent,) = await wait_until(lambda: edi.messages(to=GP_HER), what="message at peer")
            assert sent.dialog_part == "Notat"
            awaiting = await wait_until(
                lambda: (d := gp_delivery(hub, first))["state"] == "awaiting_receipt" and d,
                what="awaiting")
            assert awaiting["transport_ref"] == sent.id  # the id EDI 2.0 assigned
            await wait_until(lambda: sent.status_asked >= 2, what="status polled")
            assert gp_delivery(hub, first)["transport_state"] == "unconfirmed"

            edi.set_transport_state(sent, "Acknowledged")
            acked = await wait_until(
                lambda: (d := gp_delivery(hub, first))["transport_state"] == "acknowledged"
                and d, what="transport acknowledged")
            assert acked["state"] == "awaiting_receipt"  # the AppRec still settles it
            assert [a["outcome"] for a in acked["attempt_log"]] == ["awaiting", "transport:ok"]
            asked = sent.status_asked
            await asyncio.sleep(0.5)
            assert sent.status_asked == asked  # confirmed: no longer asked
            shown = await asyncio.to_thread(_show, hub, first)
            assert "transport acknowledged (transport id " + sent.id in shown
            edi.gp_apprec(sent, "1")
            await wait_until(lambda: gp_delivery(hub, first)["state"] == "delivered",
                             what="delivered after AppRec OK")
    finally:
        hub.close()


async def test_a_rejected_transport_dead_letters_and_an_abandoned_one_is_sent_again(
        tmp_path, edi, ehr):
    hub = build(tmp_path, edi, ehr, transport_check_seconds=0.1)
    edi.next_transport_state = "Unconfirmed"
    try:
        async with running(hub, serve_http=True):
            first = await send_alarm(hub, "ev-50", "A-50")
            (sent,) = await wait_until(lambda: edi.messages(to=GP_HER), what="message at peer")
            await wait_until(lambda: gp_delivery(hub, first)["state"] == "awaiting_receipt",
                             what="awaiting")
            edi.set_transport_state(sent, "Rejected")
            dead = await wait_until(lambda: (d := gp_delivery(hub, first))["state"] == "dead"
                                    and d, what="dead after a transport rejection")
            assert dead["escalated"] is True
            assert dead["transport_state"] == "rejected"
            assert "ebXML MessageError" in dead["last_error"]
            assert GP_HER in dead["last_error"]
            assert dead["attempt_log"][-1]["outcome"] == "transport:dead"

            second = await send_alarm(hub, "ev-51", "A-51")
            msgs = await wait_until(lambda: len(m := edi.messages(to=GP_HER)) == 2 and m,
                                    what="second message")
            edi.set_transport_state(msgs[1], "Abandoned")
            edi.next_transport_state = "Acknowledged"
            resent = await wait_until(lambda: len(m := edi.messages(to=GP_HER)) == 3 and m,
                                      what="the abandoned message sent again")
            assert resent[2].msg_id == msgs[1].msg_id  # the same MsgId: a GP sees a copy
            again = await wait_until(
                lambda: (d := gp_delivery(hub, second))["transport_state"] == "acknowledged"
                and d, what="the resend acknowledged")
            assert again["state"] == "awaiting_receipt"
            assert again["transport_ref"] == resent[2].id
            assert [a["outcome"] for a in again["attempt_log"]] == [
                "awaiting", "transport:resend", "awaiting", "transport:ok"]
    finally:
        hub.close()


def _show(hub, message_id):
    """`tryggbro show <id>` on the running hub's configuration and database."""
    from click.testing import CliRunner

    from hub.cli import State, cli
    state = State(None, hub.plugins)
    state._config = hub.config
    result = CliRunner().invoke(cli, ["show", str(message_id)], obj=state)
    assert result.exit_code == 0, result.output
    assert PATIENTS[0] not in result.output
    return result.output


async def test_the_patients_name_from_the_bundle_reaches_the_gp_in_msghead(edi):
    """An event whose Bundle carries a named Patient (HL7 v2-sourced events do): the
    destination writes Patient/FamilyName and GivenName, over real HTTP to the peer."""
    from lxml import etree

    from hub.destinations.edi import Edi2Destination, Edi2Settings
    from hub.domain.model import OutboundDelivery, OutcomeKind

    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p", "identifier": [
            {"system": "urn:oid:2.16.578.1.12.4.1.4.1", "value": PATIENTS[0]}],
            "name": [{"use": "official", "family": "Ødegård", "given": ["Åse"]}]}},
        {"resource": {"resourceType": "DetectedIssue", "id": "d", "severity": "high",
                      "code": {"coding": [{"code": "5.1", "display": "Oppsummerende varsel"}]},
                      "patient": {"identifier": {"system": "urn:oid:2.16.578.1.12.4.1.4.1",
                                                 "value": PATIENTS[0]}}}}]}
    destination = Edi2Destination("gp", Edi2Settings(
        base_url=edi.url, source_system="tryggbro-test", encoding="ISO-8859-1",
        sender={"name": "Kommunen", "her_id": MUNICIPALITY_HER},
        receiver={"name": "Legekontoret", "her_id": GP_OFFICE_HER}))
    try:
        outcome = await destination.send(OutboundDelivery(
            id=1, message_id=1, destination="gp", bundle_id="b-name",
            payload=json.dumps(bundle).encode(), priority=50, attempt=1))
    finally:
        await destination.aclose()
    assert outcome.kind is OutcomeKind.AWAITING
    (sent,) = edi.messages(to=GP_OFFICE_HER)
    patient = etree.fromstring(sent.document).find(
        "{*}MsgInfo/{*}Patient")
    assert [etree.QName(c).localname for c in patient] == ["FamilyName", "GivenName", "Ident"]
    assert patient.findtext("{*}FamilyName") == "Ødegård"
    assert patient.findtext("{*}GivenName") == "Åse"
    assert outcome.transport_ref == sent.id
