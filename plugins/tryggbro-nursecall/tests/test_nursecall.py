"""The adapter on its own, and its fixtures through the real pipeline (hub.testing)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tryggbro_nursecall.adapter import NurseCallAdapter

from hub.builtin.vkp_mapping import alarm_case
from hub.contracts import AdapterSetup, IntakeRequest, MapContext
from hub.domain.model import AlarmStatus, Category, Enrolment, PersonId, StoredMessage
from hub.errors import InputError
from hub.mappings import MappingStore

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO / "fixtures" / "nursecall"
FNR = "urn:oid:2.16.578.1.12.4.1.4.1"


@pytest.fixture(scope="module")
def mappings():
    return MappingStore.load(REPO / "mappings")


@pytest.fixture(scope="module")
def adapter(mappings):
    return NurseCallAdapter(AdapterSetup("nursecall", {}, mappings))


def message(data):
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return StoredMessage(1, "nursecall", "k", "application/json", raw,
                         datetime.now(UTC), {}, 1)


def case_input(name, n="01.json"):
    return json.loads((FIXTURES / "cases" / name / n).read_text(encoding="utf-8"))


def mapped(event, mappings):
    enrolment = Enrolment("nursecall", event.device.id, PersonId(FNR, "01819012012"), "0301")
    ctx = MapContext(1, "k", 0, enrolment, mappings)
    return {r["resourceType"]: r for r in alarm_case(event, event.alarm, ctx)}


def test_fixtures_replay_without_differences(tryggbro_replay):
    report = tryggbro_replay(FIXTURES)
    assert len(report.cases) == 10


def test_lifecycle_is_one_case_from_preliminary_to_final(adapter, mappings):
    events = [adapter.parse(message(case_input("02-call-presence-cancel-lifecycle",
                                               f"0{i}.json")))[0] for i in (1, 2, 3)]
    assert {e.business_key for e in events} == {"CALL-0202"}
    assert all(e.snapshot for e in events)
    assert all(e.category is Category.NURSE_CALL for e in events)
    assert [e.alarm.status for e in events] == \
        [AlarmStatus.RAISED, AlarmStatus.IN_PROGRESS, AlarmStatus.CLOSED]
    assert [[t.code for t in e.alarm.timeline] for e in events] == \
        [[], ["0", "1"], ["0", "1", "3"]]
    raised, present, cancelled = (mapped(e, mappings) for e in events)
    assert set(raised) == {"DetectedIssue", "Encounter"}
    assert raised["DetectedIssue"]["status"] == "preliminary"
    assert present["Encounter"]["status"] == "in-progress"
    assert present["Encounter"]["class"]["code"] == "HH"  # staff came to the room
    assert cancelled["DetectedIssue"]["status"] == "final"
    assert cancelled["Encounter"]["period"] == {"start": "2026-11-21T22:01:10+01:00",
                                                "end": "2026-11-21T22:09:30+01:00"}
    assert cancelled["Composition"]["title"] == "Sykesignalanlegg – hendelsesforløp"
    # The same call updates the same resources.
    assert {r["id"] for r in raised.values()} <= {r["id"] for r in cancelled.values()}


def test_incontinence_is_7_1(adapter):
    (event,) = adapter.parse(message(case_input("03-incontinence-sensor")))
    assert event.code == "7.1"
    assert event.severity == "low"


def test_unknown_call_type_is_still_a_nurse_call(adapter):
    (event,) = adapter.parse(message(case_input("10-unknown-call-type-is-nurse-call")))
    assert event.code == "7"
    assert event.alarm.trigger_text == "Sykesignal"


def test_cancel_without_cancelled_at_closes_at_the_event_time(adapter):
    data = case_input("04-cancel-before-call")
    del data["call"]["cancelledAt"]
    (event,) = adapter.parse(message(data))
    assert event.alarm.closed_at == event.occurred_at


def test_heartbeat_is_device_health(adapter):
    (event,) = adapter.parse(message(case_input("09-heartbeat-filtered")))
    assert event.category is Category.DEVICE_HEALTH
    assert event.kind == "heartbeat"
    assert event.device.id == "NC-R12-BED"


def test_intake_key_and_its_errors(adapter):
    request = IntakeRequest("nursecall", "application/json",
                            json.dumps({"eventId": "nc-9"}).encode(), {})
    assert adapter.intake_key(request) == "nc-9"
    for content, text in [(b"[]", "a JSON object"), (b'{"eventId": 5}', "eventId: required"),
                          (b"{", "invalid JSON")]:
        with pytest.raises(InputError, match=text):
            adapter.intake_key(IntakeRequest("nursecall", "application/json", content, {}))


def test_parse_errors_name_the_field(adapter):
    with pytest.raises(InputError, match=r"call\.raisedAt: Field required"):
        adapter.parse(message(case_input("08-missing-fields-fail")))
    data = case_input("01-call-raised")
    data["type"] = "call.presence"
    with pytest.raises(InputError, match=r"needs at least one call\.presence entry"):
        adapter.parse(message(data))
    del data["call"]
    with pytest.raises(InputError, match="needs a 'call' object"):
        adapter.parse(message(data))
