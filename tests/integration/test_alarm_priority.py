"""Alarms first: processing takes alarm sources' messages ahead of a backlog of other
traffic and dispatch sends them ahead of it, while per-patient order still holds: an
older measurement of the alarm's own patient is delivered before the alarm."""

from __future__ import annotations

from datetime import UTC, datetime

from hub.domain.model import MessageState, Priority, RawMessage
from tests.integration.helpers import (
    PATIENTS,
    SOURCE_KEY_ENV,
    alarm_event,
    body,
    build_hub,
    enrol,
)
from tests.integration.running import running, wait_until
from tests.peers.receiver import RecordingReceiver

DHO_BODY = ('{{"messageId":"m-{tag}","sentAt":"2026-01-10T08:20:00+01:00","station":'
            '{{"id":"{device}","model":"CareTab 3"}},"readings":[{{"readingId":"{tag}",'
            '"kind":"oxygenSaturation","takenAt":"2026-01-10T08:17:30+01:00","value":96,'
            '"unit":"%","instrument":"Nonin 3230"}}]}}')

SOURCES = {
    "alarmplatform": {"adapter": "alarmplatform", "auth": "api-key",
                      "api_key_env": SOURCE_KEY_ENV},
    "dho": {"adapter": "dho-json", "auth": "api-key", "api_key_env": SOURCE_KEY_ENV},
}
ROUTES = [
    {"name": "alarms", "match": {"categories": ["safety_alarm"]}, "destinations": ["ehr"]},
    {"name": "measurements", "match": {"categories": ["home_follow_up"]},
     "destinations": ["ehr"]},
]


def build(tmp_path, db_url, receiver, batch_size):
    hub = build_hub(
        tmp_path, db_url,
        {"ehr": {"type": "fhir-rest", "base_url": f"{receiver.url}/fhir/R4",
                 "timeout_seconds": 2, "concurrency": 4, "events_per_request": 1}},
        routes=ROUTES, sources=SOURCES,
        processing={"poll_seconds": 0.05, "lease_seconds": 30, "batch_size": batch_size})
    # Patient 0 has a safety alarm and a DHO station; patient 1 only a DHO station.
    enrol(hub, "TA-0", PATIENTS[0])
    enrol(hub, "DHO-0", PATIENTS[0], source="dho", device_type="dho_device")
    enrol(hub, "DHO-1", PATIENTS[1], source="dho", device_type="dho_device")
    return hub


def ingest_dho(hub, tag, device):
    return hub.intake.submit_sync(RawMessage(
        "dho", f"m-{tag}", "application/json",
        DHO_BODY.format(tag=tag, device=device).encode(), datetime.now(UTC))).id


def ingest_alarm(hub, event_id, alarm_id, device):
    return hub.intake.submit_sync(RawMessage(
        "alarmplatform", event_id, "application/json",
        body(alarm_event(event_id, alarm_id, device)), datetime.now(UTC))).id


def arrival_order(hub, receiver, messages):
    """The messages (journal ids) in the order their transaction Bundles arrived."""
    by_bundle = {hub.repo.message_trace(m)["events"][0]["bundle_id"]: m for m in messages}
    order = []
    for request in receiver.requests():
        order += [m for bundle, m in by_bundle.items()
                  if f'"id":"{bundle}"'.encode() in request.body]
    return order


def state(hub, message_id):
    return hub.repo.message_trace(message_id)["state"]


async def test_alarm_is_processed_and_delivered_ahead_of_a_backlog_in_patient_order(
        tmp_path, db_url):
    with RecordingReceiver() as receiver:
        hub = build(tmp_path, db_url, receiver, batch_size=10)
        try:
            # Accepted in this order: patient 0's own measurement, a backlog of patient
            # 1's, then patient 0's alarm.
            own = ingest_dho(hub, "RDG-OWN-0000", "DHO-0")
            backlog = [ingest_dho(hub, f"RDG-BKL-{n:04d}", "DHO-1") for n in range(30)]
            alarm = ingest_alarm(hub, "evt-alarm-0", "ALM-0000", "TA-0")
            assert hub.repo.message_trace(alarm)["priority"] == Priority.ALARM
            assert hub.repo.message_trace(own)["priority"] == Priority.NORMAL

            # Processing takes the alarm first, in a batch of its own.
            processor = hub.processor()
            assert processor.run_batch() == (1, 1)
            assert state(hub, alarm) == MessageState.PROCESSED.value
            assert state(hub, own) == MessageState.RECEIVED.value
            assert all(state(hub, m) == MessageState.RECEIVED.value for m in backlog)

            # Its delivery waits: an older message (patient 0's measurement among them)
            # is not processed yet, and could be of the same patient.
            assert hub.repo.claim_deliveries("ehr", "probe", 10, 30.0) == []

            # The next batches are the rest, oldest first.
            assert processor.run_batch() == (10, 10)
            assert state(hub, own) == MessageState.PROCESSED.value
            while processor.run_batch()[0]:
                pass

            # Dispatch rounds are sequential (claim, send, record), one delivery per
            # patient in each: which round a delivery goes in does not depend on timing.
            async with running(hub):
                await wait_until(lambda: hub.repo.status().deliveries.get("ehr") ==
                                 {"delivered": 32}, what="32 deliveries")
            order = arrival_order(hub, receiver, [own, alarm, *backlog])
        finally:
            hub.close()
    assert sorted(order) == sorted([own, alarm, *backlog])  # each exactly once
    # Per patient, in the order accepted: patient 0's measurement before its alarm,
    # patient 1's backlog in its own order.
    assert order.index(own) < order.index(alarm)
    assert [m for m in order if m in backlog] == backlog
    # And the alarm did not wait for patient 1's backlog: one delivery per patient is in
    # flight at a time and alarms are claimed first, so it went in the second round.
    assert order.index(alarm) < order.index(backlog[-1])


async def test_claim_messages_alarms_first_in_a_batch_of_their_own(tmp_path, db_url):
    with RecordingReceiver() as receiver:
        hub = build(tmp_path, db_url, receiver, batch_size=5)
        try:
            normal = [ingest_dho(hub, f"RDG-N-{n:04d}", "DHO-1") for n in range(4)]
            alarms = [ingest_alarm(hub, f"evt-{n}", f"ALM-{n:04d}", "TA-0") for n in range(2)]
            more = [ingest_dho(hub, f"RDG-M-{n:04d}", "DHO-1") for n in range(4)]
            claim = hub.repo.claim_messages
            # Alarms, oldest first, and nothing else with them.
            assert [m.id for m in claim("w1", 5, 30.0, 5)] == alarms
            # Then the other traffic, oldest first, filling the batch.
            assert [m.id for m in claim("w1", 5, 30.0, 5)] == [*normal, more[0]]
            # A new alarm goes ahead of the older messages still waiting.
            late = ingest_alarm(hub, "evt-late", "ALM-LATE", "TA-0")
            assert [m.id for m in claim("w2", 5, 30.0, 5)] == [late]
            assert [m.id for m in claim("w2", 5, 30.0, 5)] == more[1:]
            assert claim("w2", 5, 30.0, 5) == []
        finally:
            hub.close()
