"""Dispatch against a real HTTP receiver: order per key, retries with Retry-After, dead
letters and operator retry, alarms that never give up, paused destinations."""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from datetime import UTC, datetime

import pytest

from hub.domain.model import RawMessage
from tests.integration.helpers import PATIENTS, alarm_event, body, build_hub, enrol
from tests.integration.running import running, wait_until
from tests.peers.receiver import RecordingReceiver

OO_400 = json.dumps({"resourceType": "OperationOutcome", "issue": [
    {"severity": "error", "code": "invalid", "diagnostics": "Unknown code system"}]}).encode()


@pytest.fixture
def receiver():
    with RecordingReceiver() as r:
        yield r


def fhir_destination(receiver, **extra):
    return {"ehr": {"type": "fhir-rest", "base_url": f"{receiver.url}/fhir/R4",
                    "timeout_seconds": 2, "concurrency": 4, **extra}}


def ingest(hub, *events):
    return [hub.intake.submit_sync(RawMessage("alarmplatform", e["eventId"], "application/json",
                                              body(e), datetime.now(UTC))).id for e in events]


def deliveries(hub, message_id):
    return hub.repo.message_trace(message_id)["deliveries"]


def state_of(hub, message_id):
    found = deliveries(hub, message_id)
    return found[0]["state"] if found else None


def attempts_of(hub, message_id):
    found = deliveries(hub, message_id)
    return found[0]["attempts"] if found else 0


ALARM_SYSTEM = "urn:tryggbro:alarm:alarmplatform"


def alarms_in(request):
    """(patient, vendor alarm id) of each DetectedIssue a request carries, in order."""
    bundle = json.loads(request.body)
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "DetectedIssue":
            alarm = next(i["value"] for i in resource["identifier"]
                         if i["system"] == ALARM_SYSTEM)
            yield resource["patient"]["identifier"]["value"], alarm


@pytest.mark.parametrize("events_per_request", [1, 25])
async def test_delivers_everything_in_order_per_patient(tmp_path, db_url, receiver,
                                                        events_per_request):
    hub = build_hub(tmp_path, db_url,
                    fhir_destination(receiver, events_per_request=events_per_request))
    devices = [f"TA-{i}" for i in range(3)]
    for device, patient in zip(devices, PATIENTS, strict=False):
        enrol(hub, device, patient)
    events = [alarm_event(f"e{n}", f"A{n}", devices[n % 3]) for n in range(30)]
    ingest(hub, *events)
    try:
        async with running(hub):
            await wait_until(lambda: hub.repo.status().deliveries.get("ehr") ==
                             {"delivered": 30}, what="30 deliveries")
    finally:
        hub.close()
    seen = defaultdict(list)
    for request in receiver.requests():
        assert request.method == "POST"
        assert request.path == "/fhir/R4/"
        assert request.headers["content-type"] == "application/fhir+json; fhirVersion=4.0"
        patients = [patient for patient, _ in alarms_in(request)]
        assert len(patients) == len(set(patients))  # never two of one patient at once
        for patient, alarm in alarms_in(request):
            seen[patient].append(alarm)
    sent = defaultdict(list)
    for event in events:
        patient = PATIENTS[devices.index(event["alarm"]["device"]["id"])]
        sent[patient].append(event["alarm"]["id"])
    assert seen == sent  # every alarm once, in the order accepted, per patient
    if events_per_request == 1:
        assert receiver.count() == 30
    else:
        assert receiver.count() < 30  # several patients' events shared requests


async def test_a_rejected_group_falls_back_to_one_event_per_request(tmp_path, db_url,
                                                                    receiver):
    """One bad event in a combined transaction must not hold the others back."""
    hub = build_hub(tmp_path, db_url, fhir_destination(receiver))
    for i, patient in enumerate(PATIENTS[:3]):
        enrol(hub, f"TA-{i}", patient)
    bad, good1, good2 = ingest(hub, *(alarm_event(f"e{i}", f"A{i}", f"TA-{i}")
                                      for i in range(3)))
    receiver.set_status(400, body=OO_400)
    try:
        async with running(hub):
            await wait_until(lambda: all(state_of(hub, m) == "dead"
                                         for m in (bad, good1, good2)),
                             what="group and singles rejected")
            receiver.set_status(200)
            # the singles were rejected too (the receiver said 400): retry two of them
            for message_id in (good1, good2):
                (d,) = deliveries(hub, message_id)
                assert d["state"] == "dead"
                assert hub.repo.retry_delivery(d["id"]) == "retrying"
            await wait_until(lambda: state_of(hub, good1) == state_of(hub, good2) ==
                             "delivered")
    finally:
        hub.close()
    first = receiver.requests()[0]
    assert len(list(alarms_in(first))) == 3  # the combined attempt
    assert all(len(list(alarms_in(r))) == 1 for r in receiver.requests()[1:4])  # fallback
    assert state_of(hub, bad) == "dead"


async def test_retry_after_is_honoured_then_delivered(tmp_path, db_url, receiver):
    receiver.set_status(503, {"Retry-After": "1"})
    hub = build_hub(tmp_path, db_url, fhir_destination(receiver))
    enrol(hub, "TA-1")
    (message_id,) = ingest(hub, alarm_event("e1", "A1", "TA-1"))
    try:
        async with running(hub):
            await wait_until(lambda: receiver.count() >= 2, what="a retry")
            receiver.set_status(200)
            await wait_until(lambda: state_of(hub, message_id) == "delivered")
    finally:
        hub.close()
    times = [r.time for r in receiver.requests()]
    assert all(b - a >= 0.95 for a, b in itertools.pairwise(times))
    log = deliveries(hub, message_id)[0]["attempt_log"]
    assert log[0]["outcome"] == "retry"
    assert log[0]["status_code"] == 503
    assert log[0]["retry_after"] == 1.0
    assert log[-1]["outcome"] == "delivered"


async def test_rejected_is_dead_lettered_until_an_operator_retries(tmp_path, db_url, receiver):
    receiver.set_status(400, body=OO_400)
    hub = build_hub(tmp_path, db_url, fhir_destination(receiver))
    enrol(hub, "TA-1")
    (message_id,) = ingest(hub, alarm_event("e1", "A1", "TA-1"))
    try:
        async with running(hub):
            await wait_until(lambda: state_of(hub, message_id) == "dead")
            (d,) = deliveries(hub, message_id)
            assert d["last_error"] == "HTTP 400: Unknown code system"
            assert d["escalated"]  # an alarm in the dead letters pages a human
            assert receiver.count() == 1  # no retry storm on a permanent error
            receiver.set_status(200)
            assert hub.repo.retry_all_dead() == 1
            await wait_until(lambda: state_of(hub, message_id) == "delivered")
    finally:
        hub.close()


async def test_alarms_keep_retrying_ordinary_deliveries_give_up(tmp_path, db_url, receiver):
    receiver.set_status(503)
    routes = [{"name": "ordinary-for-4601", "match": {"municipalities": ["4601"]},
               "destinations": ["ehr"], "priority": 50},
              {"name": "alarms", "match": {"categories": ["safety_alarm"]},
               "destinations": ["ehr"]}]
    hub = build_hub(tmp_path, db_url, fhir_destination(receiver), routes=routes)
    enrol(hub, "TA-ALARM", PATIENTS[0])
    enrol(hub, "TA-ORDINARY", PATIENTS[1], municipality="4601")
    alarm, ordinary = ingest(hub, alarm_event("e1", "A1", "TA-ALARM"),
                             alarm_event("e2", "A2", "TA-ORDINARY"))
    try:
        async with running(hub):
            await wait_until(lambda: state_of(hub, ordinary) == "dead")
            await wait_until(lambda: attempts_of(hub, alarm) >= 7,
                             what="alarm attempts beyond the ordinary limit")
            (a,) = deliveries(hub, alarm)
            assert a["state"] in ("pending", "leased")
            assert a["escalated"]
    finally:
        hub.close()
    (o,) = deliveries(hub, ordinary)
    assert o["attempts"] == 4
    assert o["last_error"].startswith("gave up after 4 attempts: HTTP 503")


async def test_refused_credentials_pause_the_destination(tmp_path, db_url, receiver):
    receiver.set_status(401)
    hub = build_hub(tmp_path, db_url, fhir_destination(receiver))
    enrol(hub, "TA-1")
    first, second = ingest(hub, alarm_event("e1", "A1", "TA-1"),
                           alarm_event("e2", "A2", "TA-1"))
    try:
        async with running(hub):
            await wait_until(lambda: "ehr" in hub.repo.status().paused, what="a pause")
            count = receiver.count()
            assert count == 1  # one refusal pauses everything for this destination
            assert "credentials refused" in hub.repo.status().paused["ehr"]["reason"]
            receiver.set_status(200)
            await wait_until(lambda: all(state_of(hub, m) == "delivered"
                                         for m in (first, second)))
            assert hub.repo.status().paused == {}
    finally:
        hub.close()


async def test_order_per_patient_holds_with_two_processing_workers(tmp_path, db_url, receiver):
    """Two processors take batches concurrently, so deliveries of one patient can be
    created out of acceptance order; the ordering barrier still sends them in order."""
    import threading

    hub = build_hub(tmp_path, db_url, fhir_destination(receiver, events_per_request=1),
                    processing={"poll_seconds": 0.01, "lease_seconds": 5, "batch_size": 3})
    enrol(hub, "TA-0", PATIENTS[0])
    enrol(hub, "TA-1", PATIENTS[1])
    events = [alarm_event(f"e{n}", f"A{n}", f"TA-{n % 2}") for n in range(60)]
    ingest(hub, *events)
    workers = [hub.processor() for _ in range(2)]
    for i, worker in enumerate(workers):
        worker.worker = f"{hub.worker}-p{i}"

    def drain(worker):
        while worker.run_batch()[0]:
            pass

    threads = [threading.Thread(target=drain, args=(w,)) for w in workers]
    try:
        async with running(hub):  # dispatch (and a third processor) run meanwhile
            for t in threads:
                t.start()
            await wait_until(lambda: hub.repo.status().deliveries.get("ehr") ==
                             {"delivered": 60}, what="60 deliveries")
    finally:
        for t in threads:
            t.join()
        hub.close()
    seen = defaultdict(list)
    for request in receiver.requests():
        for patient, alarm in alarms_in(request):
            seen[patient].append(alarm)
    for n, patient in enumerate(PATIENTS[:2]):
        assert seen[patient] == [f"A{i}" for i in range(60) if i % 2 == n]


def test_an_old_message_still_in_processing_holds_back_newer_deliveries(tmp_path, db_url):
    """Per-key order does not expire with age. After an outage of processing the backlog
    is older than any time window, and two processors draining it finish batches out of
    order: a delivery of a newer message may only be claimed once every older message
    has been processed, however long ago it arrived."""
    from sqlalchemy import update

    from hub.store.repository import J

    hub = build_hub(tmp_path, db_url,
                    {"ehr": {"type": "fhir-rest", "base_url": "http://127.0.0.1:9/fhir"}},
                    processing={"batch_size": 1})
    try:
        enrol(hub, "TA-0", PATIENTS[0])
        first, second = ingest(hub, alarm_event("e1", "A1", "TA-0"),
                               alarm_event("e2", "A2", "TA-0"))
        with hub.repo.db.engine.begin() as conn:  # a backlog from an hour ago
            conn.execute(update(J).values(
                received_at=datetime(2026, 11, 22, 6, 0, tzinfo=UTC)))
        # processor A takes the older message and is still busy with it
        (held,) = hub.repo.claim_messages("processor-a", 1, 300.0, 5)
        assert held.id == first
        # processor B takes the newer one and finishes first
        processor_b = hub.processor()
        processor_b.worker = "processor-b"
        assert processor_b.run_batch()[0] == 1
        assert state_of(hub, second) == "pending"
        assert hub.repo.claim_deliveries("ehr", "dispatcher", 10, 60.0) == []
        # A's message is back (say A died) and processed: both go, the older first
        hub.repo.release_leases("processor-a")
        assert processor_b.run_batch()[0] == 1
        claimed = hub.repo.claim_deliveries("ehr", "dispatcher", 10, 60.0)
        assert [c.message_id for c in claimed] == [first]
    finally:
        hub.close()
